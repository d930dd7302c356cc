package pgqueue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/queueadmin"
)

// Queue administration.
//
// The operator's commands ([queueadmin.Admin]) follow the rules of the
// deliveries, so that they are safe while nodes deliver: each runs in one
// transaction that locks the message's row and its rows of odmr_pending.
// Delete and Bounce refuse, with queueadmin.ErrBusy, a message whose
// recipients a session has leased and whose lease has not lapsed; they
// draw a new fence for a lapsed lease, so its holder's Complete changes
// nothing. A held message keeps its rows of odmr_pending, marked held:
// HasMail, Next, Expire, the quotas and QueueStats pass over them. A
// session delivering a message when it is held finishes, and the
// recipients it does not deliver stay queued, and held. A held message
// does not expire: once released, it expires at the next lease or Expire
// if it is older than MaxAge.

var _ queueadmin.Admin = (*Queue)(nil)

// errNoMessage says that id names no queued message.
func errNoMessage(id string) error {
	return fmt.Errorf("odmr: no message %q: %w", id, fs.ErrNotExist)
}

// parseID returns the number of message id, or an error matching
// fs.ErrNotExist.
func parseID(id string) (int64, error) {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil || n <= 0 || strconv.FormatInt(n, 10) != id {
		return 0, errNoMessage(id)
	}
	return n, nil
}

// Messages lists the messages with recipients queued, held ones included,
// oldest first. It reads them all in one query: an operator's tool. A
// message some of whose recipients a session has leased, the lease not
// lapsed, has Delivering set.
func (q *Queue) Messages(ctx context.Context) ([]queueadmin.Message, error) {
	if err := q.checkOpen(); err != nil {
		return nil, err
	}
	return q.queuedMessages(ctx, 0)
}

// Message describes message id.
func (q *Queue) Message(ctx context.Context, id string) (queueadmin.Message, error) {
	if err := q.checkOpen(); err != nil {
		return queueadmin.Message{}, err
	}
	n, err := parseID(id)
	if err != nil {
		return queueadmin.Message{}, err
	}
	msgs, err := q.queuedMessages(ctx, n)
	if err != nil {
		return queueadmin.Message{}, err
	}
	if len(msgs) == 0 {
		return queueadmin.Message{}, errNoMessage(id)
	}
	return msgs[0], nil
}

// queuedMessages reads message id, or every message if id is 0, with its
// recipients still queued.
func (q *Queue) queuedMessages(ctx context.Context, id int64) ([]queueadmin.Message, error) {
	rows, err := q.pool.Query(ctx, `SELECT m.id, m.sender, m.received, m.size, m.body_type, m.utf8, m.dsn_ret, m.dsn_envid,
			EXISTS (SELECT 1 FROM odmr_pending p WHERE p.message_id = m.id AND p.held),
			EXISTS (SELECT 1 FROM odmr_pending p WHERE p.message_id = m.id AND p.lease_until > now()),
			r.addr, r.attempts, r.last_attempt, r.last_code, r.last_enhanced, r.last_message, r.last_error,
			r.notify, r.orcpt_type, r.orcpt
		FROM odmr_messages m JOIN odmr_recipients r ON r.message_id = m.id AND r.state = 'queued'
		WHERE $1 = 0 OR m.id = $1
		ORDER BY m.received, m.id, r.n`, id)
	if err != nil {
		return nil, fmt.Errorf("odmr: listing the queue: %w", err)
	}
	defer rows.Close()
	var out []queueadmin.Message
	var last int64
	for rows.Next() {
		var (
			mid                                          int64
			env                                          odmr.Envelope
			bodyType, ret, envID                         string
			held, delivering                             bool
			addr, lastEnh, lastMsg, lastErr, oType, orcp string
			attempts, lastCode                           int
			lastAttempt                                  *time.Time
			notify                                       []string
		)
		if err := rows.Scan(&mid, &env.From, &env.Received, &env.Size, &bodyType, &env.UTF8, &ret, &envID, &held, &delivering,
			&addr, &attempts, &lastAttempt, &lastCode, &lastEnh, &lastMsg, &lastErr, &notify, &oType, &orcp); err != nil {
			return nil, fmt.Errorf("odmr: listing the queue: %w", err)
		}
		if mid != last || len(out) == 0 {
			last = mid
			env.ID = strconv.FormatInt(mid, 10)
			env.Body = odmr.BodyType(bodyType)
			if ret != "" || envID != "" {
				env.DSN = &odmr.DSN{Return: odmr.DSNReturn(ret), EnvID: envID}
			}
			out = append(out, queueadmin.Message{Envelope: env, Held: held, Delivering: delivering})
		}
		qm := &out[len(out)-1]
		qm.Envelope.To = append(qm.Envelope.To, addr)
		addRecipientDSN(&qm.Envelope, addr, notify, oType, orcp)
		qr := queueadmin.Recipient{Addr: addr, Attempts: attempts}
		if lastAttempt != nil {
			qr.LastAttempt = *lastAttempt
		}
		switch {
		case lastCode != 0:
			qr.LastError = &odmr.Error{Code: lastCode, EnhancedCode: parseEnhanced(lastEnh), Message: lastMsg}
		case lastErr != "":
			qr.LastError = errors.New(lastErr)
		}
		qm.Recipients = append(qm.Recipients, qr)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("odmr: listing the queue: %w", err)
	}
	return out, nil
}

// addRecipientDSN adds to env the DSN parameters of recipient addr, if
// it gave any.
func addRecipientDSN(env *odmr.Envelope, addr string, notify []string, orcptType, orcpt string) {
	if notify == nil && orcpt == "" {
		return
	}
	if env.DSN == nil {
		env.DSN = &odmr.DSN{}
	}
	if env.DSN.Recipients == nil {
		env.DSN.Recipients = make(map[string]odmr.RecipientDSN)
	}
	rd := odmr.RecipientDSN{ORcptType: orcptType, ORcpt: orcpt}
	if notify != nil {
		rd.Notify = make([]odmr.DSNNotify, len(notify))
		for i, n := range notify {
			rd.Notify[i] = odmr.DSNNotify(n)
		}
	}
	env.DSN.Recipients[addr] = rd
}

// OpenMessage returns the body of message id, as it is delivered, read
// one chunk at a time.
func (q *Queue) OpenMessage(ctx context.Context, id string) (io.ReadCloser, error) {
	if _, err := q.Message(ctx, id); err != nil {
		return nil, err
	}
	n, _ := parseID(id)
	return &chunks{fetch: func(i int) (data []byte, last bool, err error) {
		ctx, cancel := context.WithTimeout(q.ctx, q.opts.QueryTimeout)
		defer cancel()
		err = q.pool.QueryRow(ctx, selectChunk, n, i).Scan(&data, &last)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			err = fmt.Errorf("odmr: reading the body of message %d: %w", n, err)
		}
		return data, last, err
	}}, nil
}

// lockMessage begins a transaction that locks message id, which must have
// recipients queued, and its rows of odmr_pending; it returns their
// domains. With ending set, a live lease on any of them is refused with
// queueadmin.ErrBusy, and a lapsed one is fenced off. The caller ends
// the transaction.
func (q *Queue) lockMessage(ctx context.Context, id string, ending bool) (pgx.Tx, int64, []string, error) {
	if err := q.checkOpen(); err != nil {
		return nil, 0, nil, err
	}
	n, err := parseID(id)
	if err != nil {
		return nil, 0, nil, err
	}
	tx, err := q.pool.Begin(ctx)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("odmr: message %s: %w", id, err)
	}
	fail := func(err error) (pgx.Tx, int64, []string, error) {
		tx.Rollback(context.WithoutCancel(ctx))
		return nil, 0, nil, err
	}
	var queued bool
	err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM odmr_recipients WHERE message_id = m.id AND state = 'queued')
		FROM odmr_messages m WHERE id = $1 FOR UPDATE`, n).Scan(&queued)
	if errors.Is(err, pgx.ErrNoRows) || err == nil && !queued {
		return fail(errNoMessage(id))
	} else if err != nil {
		return fail(fmt.Errorf("odmr: message %s: %w", id, err))
	}
	var busy bool
	var lapses time.Time // when the last live lease lapses
	rows, err := tx.Query(ctx, `SELECT domain, CASE WHEN lease_until > now() THEN lease_until END FROM odmr_pending
		WHERE message_id = $1 FOR UPDATE`, n)
	if err != nil {
		return fail(fmt.Errorf("odmr: message %s: %w", id, err))
	}
	var domains []string
	for rows.Next() {
		var d string
		var until *time.Time
		if err := rows.Scan(&d, &until); err != nil {
			rows.Close()
			return fail(fmt.Errorf("odmr: message %s: %w", id, err))
		}
		domains = append(domains, d)
		if until != nil {
			busy = true
			if until.After(lapses) {
				lapses = *until
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fail(fmt.Errorf("odmr: message %s: %w", id, err))
	}
	if ending && busy {
		// A node that died holds its lease until it lapses: say when, or
		// the operator waits for a session that is over.
		return fail(queueadmin.Busy(id, "try again when the session is over, or after "+
			lapses.UTC().Format(time.RFC3339)+", when its lease lapses if the node died"))
	}
	if ending {
		// A lapsed lease's holder must not settle these recipients now.
		if _, err := tx.Exec(ctx, "UPDATE odmr_pending SET fence = nextval('odmr_fence'), lease_until = NULL WHERE message_id = $1", n); err != nil {
			return fail(fmt.Errorf("odmr: message %s: %w", id, err))
		}
	}
	return tx, n, domains, nil
}

// Delete removes message id without a DSN. A message whose recipients a
// session has leased is refused with an error matching
// queueadmin.ErrBusy.
func (q *Queue) Delete(ctx context.Context, id string) error {
	tx, n, _, err := q.lockMessage(ctx, id, true)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var from string
	var to []string
	if err := tx.QueryRow(ctx, `SELECT m.sender, array(SELECT addr FROM odmr_recipients r
			WHERE r.message_id = m.id AND r.state = 'queued' ORDER BY n)
		FROM odmr_messages m WHERE id = $1`, n).Scan(&from, &to); err != nil {
		return fmt.Errorf("odmr: deleting message %s: %w", id, err)
	}
	// The rows of odmr_pending first, while the trigger that counts them
	// can still read the message's size.
	if _, err := tx.Exec(ctx, "DELETE FROM odmr_pending WHERE message_id = $1", n); err != nil {
		return fmt.Errorf("odmr: deleting message %s: %w", id, err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM odmr_messages WHERE id = $1", n); err != nil {
		return fmt.Errorf("odmr: deleting message %s: %w", id, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("odmr: deleting message %s: %w", id, err)
	}
	q.log.Info("pgqueue: deleted by the operator", "id", id, "from", from, "to", to)
	return nil
}

// Bounce fails the recipients of message id still queued, held or not,
// with status 5.0.0, and writes the sender a DSN into odmr_reports, which
// the Bouncer of any node sends, as for any failure (the NOTIFY of each
// recipient and a null sender are honoured). A message whose recipients a
// session has leased is refused with an error matching
// queueadmin.ErrBusy.
func (q *Queue) Bounce(ctx context.Context, id string) error {
	tx, n, domains, err := q.lockMessage(ctx, id, true)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	logged, err := q.settle(ctx, tx, n, domains, nil, nil, settleCancel)
	if err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("odmr: bouncing message %s: %w", id, err)
	}
	logged()
	q.kickBouncer()
	q.log.Info("pgqueue: bounced by the operator", "id", id)
	return nil
}

// Hold keeps message id queued but offers it to no session until
// Release. A session delivering it meanwhile finishes; the recipients it
// does not deliver stay queued, and held.
func (q *Queue) Hold(ctx context.Context, id string) error {
	return q.setHeld(ctx, id, true)
}

// Release offers a held message id to sessions again.
func (q *Queue) Release(ctx context.Context, id string) error {
	return q.setHeld(ctx, id, false)
}

func (q *Queue) setHeld(ctx context.Context, id string, held bool) error {
	tx, n, _, err := q.lockMessage(ctx, id, false)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	tag, err := tx.Exec(ctx, "UPDATE odmr_pending SET held = $2 WHERE message_id = $1 AND held <> $2", n, held)
	if err != nil {
		return fmt.Errorf("odmr: message %s: %w", id, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("odmr: message %s: %w", id, err)
	}
	if tag.RowsAffected() > 0 {
		what := "pgqueue: released by the operator"
		if held {
			what = "pgqueue: held by the operator"
		}
		q.log.Info(what, "id", id)
	}
	return nil
}
