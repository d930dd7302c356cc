package pgqueue

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Inventory is what a queue holds, as Inspect reads it.
type Inventory struct {
	// Domains holds one entry per domain with mail queued, by domain.
	Domains []DomainStats
	// Messages and Bytes count the messages with recipients queued, and
	// Held the messages held (QueueAdmin.Hold), which Domains, Messages
	// and Bytes leave out.
	Messages int
	Bytes    int64
	Held     int
	// PendingBounces counts the DSNs waiting to be sent, DeadBounces
	// those set aside after a permanent refusal.
	PendingBounces, DeadBounces int
}

// Inspect reads what the queue in the database named by dsn holds,
// without changing anything: unlike Open it applies no migration, and a
// database without the queue's tables is an error.
func Inspect(ctx context.Context, dsn string) (*Inventory, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("odmr: %w", err)
	}
	defer pool.Close()
	var version int
	if err := pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM odmr_schema").Scan(&version); err != nil || version < 1 {
		return nil, errors.New("odmr: the database holds no queue (no odmr_schema table); Open creates one")
	}
	if version < SchemaVersion {
		return nil, fmt.Errorf("odmr: the database has schema version %d, older than this program's %d; Open upgrades it", version, SchemaVersion)
	}
	inv := &Inventory{}
	if inv.Domains, err = listDomains(ctx, pool); err != nil {
		return nil, err
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT held), coalesce(sum(size) FILTER (WHERE NOT held), 0)::bigint,
			count(*) FILTER (WHERE held)
		FROM (SELECT m.size, bool_and(p.held) AS held FROM odmr_messages m JOIN odmr_pending p ON p.message_id = m.id
			GROUP BY m.id) t`).Scan(&inv.Messages, &inv.Bytes, &inv.Held); err != nil {
		return nil, fmt.Errorf("odmr: inspect: %w", err)
	}
	if err := pool.QueryRow(ctx, "SELECT count(*) FILTER (WHERE NOT dead), count(*) FILTER (WHERE dead) FROM odmr_reports").Scan(
		&inv.PendingBounces, &inv.DeadBounces); err != nil {
		return nil, fmt.Errorf("odmr: inspect: %w", err)
	}
	return inv, nil
}
