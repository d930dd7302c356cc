package pgqueue

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/dsnreport"
	"github.com/go-odmr/odmr/internal/wire"
)

// rcptRow is a queued recipient as settle reads it.
type rcptRow struct {
	n           int
	addr        string
	domain      string
	lastAttempt *time.Time
	lastCode    int
	lastEnh     string
	lastMessage string
	notify      []string
	orcptType   string
	orcpt       string
}

// settleMode says what settle records.
type settleMode int

const (
	settleResults settleMode = iota // a delivery's results
	settleExpire                    // every recipient fails with 4.4.7
	settleCancel                    // Bounce: every recipient fails with 5.0.0
)

// settle records, in tx, what happened to the queued recipients of
// message id in domains, whose rows of odmr_pending tx holds: the results
// of a delivery, their expiry, or the operator's bounce. to, when not nil, limits it to the
// recipients handed out with the lease. It writes the DSNs the failures
// call for, releases or removes the pending rows, and removes the message
// when no recipient is left. It returns a function that logs what it
// recorded, for the caller to call once tx is committed: a transaction
// that fails leaves no record of what did not happen.
func (q *Queue) settle(ctx context.Context, tx pgx.Tx, id int64, domains, to []string, results []odmr.RecipientResult, mode settleMode) (func(), error) {
	var logs []func()
	logged := func() {
		for _, l := range logs {
			l()
		}
	}
	// The message's row serializes the settling of its domains, so the
	// last one sees that nothing is left and removes it.
	var (
		from, ret, envID, bodyType string
		received, now              time.Time
		size                       int64
		tooOld                     bool
	)
	// The message and its queued recipients in one round trip.
	qb := &pgx.Batch{}
	qb.Queue(`SELECT sender, received, size, body_type, dsn_ret, dsn_envid, now(),
		received <= now() - $2 * interval '1 millisecond'
		FROM odmr_messages WHERE id = $1 FOR UPDATE`, id, q.opts.MaxAge.Milliseconds())
	qb.Queue(`SELECT n, addr, domain, last_attempt, last_code, last_enhanced, last_message,
		notify, orcpt_type, orcpt
		FROM odmr_recipients WHERE message_id = $1 AND domain = ANY($2) AND state = 'queued' ORDER BY n`, id, domains)
	br := tx.SendBatch(ctx, qb)
	err := br.QueryRow().Scan(&from, &received, &size, &bodyType, &ret, &envID, &now, &tooOld)
	if err != nil {
		br.Close()
		return nil, fmt.Errorf("odmr: settling message %d: %w", id, err)
	}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		return nil, fmt.Errorf("odmr: settling message %d: %w", id, err)
	}
	var rcpts []rcptRow
	for rows.Next() {
		var r rcptRow
		if err := rows.Scan(&r.n, &r.addr, &r.domain, &r.lastAttempt, &r.lastCode, &r.lastEnh, &r.lastMessage,
			&r.notify, &r.orcptType, &r.orcpt); err != nil {
			rows.Close()
			br.Close()
			return nil, fmt.Errorf("odmr: settling message %d: %w", id, err)
		}
		rcpts = append(rcpts, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		br.Close()
		return nil, fmt.Errorf("odmr: settling message %d: %w", id, err)
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("odmr: settling message %d: %w", id, err)
	}

	var leased map[string]bool
	if to != nil {
		leased = make(map[string]bool, len(to))
		for _, a := range to {
			leased[a] = true
		}
	}
	outcome := make(map[string]odmr.RecipientResult, len(results))
	for _, r := range results {
		outcome[r.Recipient] = r
	}
	env := odmr.Envelope{DSN: &odmr.DSN{Return: odmr.DSNReturn(ret), EnvID: envID}}
	for _, r := range rcpts {
		addRecipientDSN(&env, r.addr, r.notify, r.orcptType, r.orcpt)
	}
	dsn := env.DSN

	b := &pgx.Batch{}
	var failed, relayed []dsnreport.Recipient
	for _, r := range rcpts {
		if leased != nil && !leased[r.addr] {
			continue
		}
		if mode == settleCancel || mode == settleExpire {
			b.Queue("UPDATE odmr_recipients SET state = 'failed' WHERE message_id = $1 AND n = $2", id, r.n)
			rc := dsnreport.Recipient{Addr: r.addr, Status: odmr.EnhancedCode{5, 0, 0}, Cancelled: true}
			if mode == settleExpire {
				rc = dsnreport.Recipient{Addr: r.addr, Status: odmr.EnhancedCode{4, 4, 7}, Expired: true, Age: now.Sub(received)}
			}
			if r.lastAttempt != nil {
				rc.LastAttempt = *r.lastAttempt
			}
			if r.lastCode != 0 {
				rc.Diag = &odmr.Error{Code: r.lastCode, EnhancedCode: parseEnhanced(r.lastEnh), Message: r.lastMessage}
			}
			failed = append(failed, rc)
			continue
		}
		res, reported := outcome[r.addr]
		err := res.Err
		if !reported {
			err = fmt.Errorf("odmr: no result reported for %s", r.addr)
		}
		switch {
		case err == nil:
			b.Queue("UPDATE odmr_recipients SET state = 'delivered' WHERE message_id = $1 AND n = $2", id, r.n)
			if res.NoDSN && dsn.Notifies(r.addr, odmr.NotifySuccess) {
				// RFC 3461 section 4.1: the receiver will not report, so
				// say that the message was relayed.
				relayed = append(relayed, dsnreport.Recipient{Addr: r.addr, Action: "relayed", Status: odmr.EnhancedCode{2, 0, 0}, LastAttempt: now})
			}
		case odmr.Permanent(err):
			reply := odmr.AsError(err)
			queueError(b, id, r.n, "failed", err)
			failed = append(failed, dsnreport.Recipient{Addr: r.addr, Status: dsnreport.StatusFor(reply), Diag: reply, LastAttempt: now})
		default:
			state := "queued"
			if tooOld {
				state = "failed"
				failed = append(failed, dsnreport.Recipient{Addr: r.addr, Status: odmr.EnhancedCode{4, 4, 7}, Diag: odmr.AsError(err),
					LastAttempt: now, Expired: true, Age: now.Sub(received)})
			}
			queueError(b, id, r.n, state, err)
		}
	}
	// RFC 3461 section 4.1: report only what NOTIFY asked for; say what
	// ORCPT and ENVID said.
	var wanted []dsnreport.Recipient
	var quiet []string
	for _, f := range failed {
		if !dsn.Notifies(f.Addr, odmr.NotifyFailure) {
			quiet = append(quiet, f.Addr)
			continue
		}
		wanted = append(wanted, withORcpt(f, dsn))
	}
	for i := range relayed {
		relayed[i] = withORcpt(relayed[i], dsn)
	}

	// Release the rows of the domains with recipients left, drop the
	// others, and the message when nothing is left; with nothing to
	// record, this still runs: rows of odmr_pending with no recipient
	// behind them must not stay. A new fence ends the lease for good:
	// when the reply to this transaction's COMMIT is lost, Complete
	// tries again, and its second try must find the lease gone
	// (errLeaseLost) rather than count the temporary failures twice.
	// It goes in the batch of the results unless a DSN is to be written
	// first, which reads the body of the message it may remove.
	release := &pgx.Batch{}
	release.Queue(`DELETE FROM odmr_pending p WHERE p.message_id = $1 AND p.domain = ANY($2)
		AND NOT EXISTS (SELECT 1 FROM odmr_recipients r
			WHERE r.message_id = p.message_id AND r.domain = p.domain AND r.state = 'queued')`, id, domains)
	release.Queue("UPDATE odmr_pending SET lease_until = NULL, fence = nextval('odmr_fence') WHERE message_id = $1 AND domain = ANY($2)", id, domains)
	release.Queue(`DELETE FROM odmr_messages m WHERE id = $1
		AND NOT EXISTS (SELECT 1 FROM odmr_recipients r WHERE r.message_id = m.id AND r.state = 'queued')`, id)
	dsnFirst := from != "" && (len(wanted) > 0 || len(relayed) > 0)
	if !dsnFirst {
		b.QueuedQueries = append(b.QueuedQueries, release.QueuedQueries...)
		release = nil
	}
	if b.Len() > 0 {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return nil, fmt.Errorf("odmr: settling message %d: %w", id, err)
		}
	}
	for _, f := range failed {
		if f.Expired {
			logs = append(logs, func() {
				q.log.Warn("pgqueue: expired", "id", id, "to", f.Addr, "age", f.Age.Round(time.Second))
			})
		}
	}
	if len(quiet) > 0 {
		logs = append(logs, func() {
			q.log.Info("pgqueue: recipients failed; their NOTIFY asks for no DSN", "id", id, "recipients", quiet)
		})
	}
	msg := reportedMessage{id: id, from: from, envID: envID, ret: odmr.DSNReturn(ret), received: received,
		size: size, bodyType: odmr.BodyType(bodyType)}
	if len(wanted) > 0 {
		if from == "" {
			addrs := make([]string, len(wanted))
			for i, f := range wanted {
				addrs[i] = f.Addr
			}
			logs = append(logs, func() {
				q.log.Info("pgqueue: recipients failed; the sender is null, so no DSN is sent", "id", id, "recipients", addrs)
			})
		} else if err := q.queueDSN(ctx, tx, msg, wanted, now); err != nil {
			return nil, err
		} else {
			n := len(wanted)
			logs = append(logs, func() {
				q.log.Info("pgqueue: bounce queued", "id", id, "to", from, "recipients", n)
			})
		}
	}
	if len(relayed) > 0 && from != "" {
		if err := q.queueDSN(ctx, tx, msg, relayed, now); err != nil {
			return nil, err
		}
	}
	if release != nil {
		if err := tx.SendBatch(ctx, release).Close(); err != nil {
			return nil, fmt.Errorf("odmr: settling message %d: %w", id, err)
		}
	}
	return logged, nil
}

// queueError records a failed attempt of recipient n.
func queueError(b *pgx.Batch, id int64, n int, state string, err error) {
	var code int
	var enh, msg string
	if e := odmr.AsError(err); e != nil {
		code, msg = e.Code, e.Message
		enh = e.EnhancedCode.String()
	}
	inc := 0
	if state == "queued" {
		inc = 1
	}
	b.Queue(`UPDATE odmr_recipients SET state = $3, attempts = attempts + $4, last_attempt = now(),
		last_code = $5, last_enhanced = $6, last_message = $7, last_error = $8
		WHERE message_id = $1 AND n = $2`, id, n, state, inc, code, enh, msg, clip(err.Error(), 1000))
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// parseEnhanced parses an enhanced status code written by
// EnhancedCode.String; the zero code when it cannot.
func parseEnhanced(s string) odmr.EnhancedCode {
	ec, _ := wire.ParseEnhancedCode(s)
	return ec
}

// withORcpt adds the recipient's ORCPT, if it gave one, to its report.
func withORcpt(rc dsnreport.Recipient, dsn *odmr.DSN) dsnreport.Recipient {
	if d, ok := dsn.Recipients[rc.Addr]; ok {
		rc.ORcptType, rc.ORcpt = d.ORcptType, d.ORcpt
	}
	return rc
}

// Expire gives up on the recipients that have been queued for longer than
// MaxAge: each fails with status 4.4.7 and, unless the sender is null, a
// DSN reports it. Recipients leased by a session are left to the session
// (Complete expires them if their delivery fails) until the lease lapses.
// It returns the number of messages it expired recipients of. The queue
// runs it every MaintenanceInterval, and Next expires what it comes
// across.
func (q *Queue) Expire(ctx context.Context) (int, error) {
	if err := q.checkOpen(); err != nil {
		return 0, err
	}
	n := 0
	for {
		done, err := q.expireOne(ctx)
		if err != nil {
			return n, err
		}
		if !done {
			return n, nil
		}
		n++
	}
}

// expireOne expires the free recipients of one message older than MaxAge,
// and reports whether there was one.
func (q *Queue) expireOne(ctx context.Context) (bool, error) {
	tx, err := q.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("odmr: expire: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var id int64
	err = tx.QueryRow(ctx, `SELECT p.message_id FROM odmr_pending p JOIN odmr_messages m ON m.id = p.message_id
		WHERE m.received <= now() - $1 * interval '1 millisecond' AND NOT p.held AND (p.lease_until IS NULL OR p.lease_until <= now())
		ORDER BY p.message_id LIMIT 1 FOR UPDATE OF p SKIP LOCKED`, q.opts.MaxAge.Milliseconds()).Scan(&id)
	if err == pgx.ErrNoRows {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("odmr: expire: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT domain FROM odmr_pending
		WHERE message_id = $1 AND NOT held AND (lease_until IS NULL OR lease_until <= now()) FOR UPDATE SKIP LOCKED`, id)
	if err != nil {
		return false, fmt.Errorf("odmr: expire: %w", err)
	}
	domains, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return false, fmt.Errorf("odmr: expire: %w", err)
	}
	// A lapsed lease's holder must not settle these recipients now.
	if _, err := tx.Exec(ctx, "UPDATE odmr_pending SET fence = nextval('odmr_fence') WHERE message_id = $1 AND domain = ANY($2)", id, domains); err != nil {
		return false, fmt.Errorf("odmr: expire: %w", err)
	}
	logged, err := q.settle(ctx, tx, id, domains, nil, nil, settleExpire)
	if err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("odmr: expire: %w", err)
	}
	logged()
	q.kickBouncer()
	return true, nil
}
