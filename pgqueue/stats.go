package pgqueue

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/go-odmr/odmr/odmrtrace"
)

// Queue gauges.
//
// odmr_domain_counts holds a row per domain with the number and size of
// the messages offered there and the arrival of the oldest, and a row
// (+1 or -1, and the size) for each message a domain gained or lost since,
// which a trigger on odmr_pending writes: never an update of a shared
// row, so that intakes and deliveries to one domain do not wait for each
// other. compactStats adds up the rows of the domains that changed and
// finds their oldest message with one probe of the index of odmr_pending
// each; QueueStats runs it, then reads a row per domain. Its cost follows
// the number of domains and of changes, never of the messages queued.

// statsLock is the advisory lock key that keeps two nodes from adding up
// the counts at once: "odmr/cnt".
const statsLock = 0x6f646d722f636e74

var _ odmrtrace.QueueStatser = (*Queue)(nil)

// QueueStats returns what is offered, per domain, sorted by domain: the
// messages with recipients queued there, held ones left out, their bytes,
// and when the first of them still queued arrived. It reads a per-domain
// summary that the database keeps up to date, not the messages, so a
// metrics exporter may call it often. It implements [odmrtrace.QueueStatser].
func (q *Queue) QueueStats(ctx context.Context) ([]odmrtrace.QueueStats, error) {
	if err := q.checkOpen(); err != nil {
		return nil, err
	}
	if err := q.compactStats(ctx); err != nil {
		return nil, err
	}
	// The rows are added up here rather than by the database, whose sum
	// of bigints is a numeric, several times slower. A change made since
	// the compaction leaves a domain's oldest unknown at worst until the
	// next call.
	rows, err := q.pool.Query(ctx, "SELECT domain, messages, bytes, oldest FROM odmr_domain_counts")
	if err != nil {
		return nil, fmt.Errorf("odmr: queue stats: %w", err)
	}
	defer rows.Close()
	byDomain := make(map[string]*odmrtrace.QueueStats)
	var domain string
	var n, size int64
	var oldest pgtype.Timestamptz
	_, err = pgx.ForEachRow(rows, []any{&domain, &n, &size, &oldest}, func() error {
		st := byDomain[domain]
		if st == nil {
			st = &odmrtrace.QueueStats{Domain: domain}
			byDomain[domain] = st
		}
		st.Messages += int(n)
		st.Bytes += size
		if oldest.Valid && oldest.InfinityModifier == pgtype.Finite {
			st.Oldest = oldest.Time
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("odmr: queue stats: %w", err)
	}
	out := make([]odmrtrace.QueueStats, 0, len(byDomain))
	for _, st := range byDomain {
		if st.Messages > 0 {
			out = append(out, *st)
		}
	}
	slices.SortFunc(out, func(a, b odmrtrace.QueueStats) int { return strings.Compare(a.Domain, b.Domain) })
	return out, nil
}

// compactStats replaces the rows of odmr_domain_counts of each domain
// that changed by one with their sums and the arrival of its oldest
// message offered, or none when the domain has nothing left. Changes
// committed meanwhile are left for the next time. When another node is
// at it, it does nothing.
func (q *Queue) compactStats(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		var mine bool
		if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1)", int64(statsLock)).Scan(&mine); err != nil || !mine {
			return err
		}
		_, err := tx.Exec(ctx, `WITH changed AS (SELECT DISTINCT domain FROM odmr_domain_counts WHERE oldest IS NULL),
			gone AS (DELETE FROM odmr_domain_counts c USING changed WHERE c.domain = changed.domain RETURNING c.*),
			sums AS (SELECT domain, sum(messages) AS messages, sum(bytes) AS bytes FROM gone GROUP BY domain
				HAVING sum(messages) <> 0 OR sum(bytes) <> 0)
			INSERT INTO odmr_domain_counts (domain, messages, bytes, oldest)
			SELECT s.domain, s.messages, s.bytes, coalesce(o.received, '-infinity')
			FROM sums s LEFT JOIN LATERAL (SELECT m.received FROM odmr_pending p JOIN odmr_messages m ON m.id = p.message_id
				WHERE p.domain = s.domain AND NOT p.held ORDER BY p.message_id LIMIT 1) o ON true`)
		return err
	})
	if err != nil {
		return fmt.Errorf("odmr: queue stats: %w", err)
	}
	return nil
}
