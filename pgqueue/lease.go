package pgqueue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-odmr/odmr"
)

// Leases.
//
// A row of odmr_pending is the lease on the recipients of one message in
// one domain: lease_until, from the database's clock, says until when,
// and fence, a number from the odmr_fence sequence drawn at each lease,
// says by whom. Next takes the rows of a message in the batch's domains
// that are free (never leased, released, or lapsed) in one transaction,
// skipping rows another transaction is taking (FOR UPDATE SKIP LOCKED), so
// two nodes never lease the same recipients. Reading the body renews the
// lease; Complete settles the recipients only if the rows still carry the
// lease's fence, so a node whose lease lapsed and was taken by another
// changes nothing; Close and Complete end the lease. Complete draws a new
// fence for the rows it leaves queued, so that its retry after a COMMIT
// whose reply was lost changes nothing either when the COMMIT took.
//
// Taking, renewing and releasing a lease commit without waiting for the
// disk (synchronous_commit off): a database crash that loses one frees
// the recipients again, and the fence then keeps the holder's Complete
// from counting, so the worst it does is deliver a message twice, which
// at-least-once delivery allows. Enqueue and Complete wait for the disk.

// batch is the odmr.Batch of a Queue.
type batch struct {
	q       *Queue
	domains []string

	mu     sync.Mutex
	cursor int64 // messages up to this ID have been looked at
	open   []*message
	closed bool
}

// Next leases the next message with recipients in the batch's domains,
// oldest first, or returns io.EOF. Messages whose recipients in these
// domains are leased elsewhere are passed over. Messages older than MaxAge
// are expired on the way instead of being returned.
func (b *batch) Next(ctx context.Context) (odmr.Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if b.closed {
			return nil, errors.New("odmr: batch closed")
		}
		if err := b.q.checkOpen(); err != nil {
			return nil, err
		}
		m, id, err := b.q.lease(ctx, b)
		if err != nil {
			return nil, err
		}
		if id == 0 {
			return nil, io.EOF
		}
		b.cursor = id
		if m != nil {
			b.open = append(b.open, m)
			return m, nil
		}
	}
}

// Close releases the messages returned by Next and not completed; they
// stay queued as they were.
func (b *batch) Close() error {
	b.mu.Lock()
	open := b.open
	b.open = nil
	b.closed = true
	b.mu.Unlock()
	var errs []error
	for _, m := range open {
		errs = append(errs, m.release())
	}
	return errors.Join(errs...)
}

func (b *batch) forget(m *message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.open = slices.DeleteFunc(b.open, func(x *message) bool { return x == m })
}

// lease leases the first message after the batch's cursor with free
// recipients in its domains. It returns the ID it looked at, 0 when there
// was none, and a nil message when that one had nothing to deliver (it
// expired, or its rows were stale).
func (q *Queue) lease(ctx context.Context, b *batch) (*message, int64, error) {
	tx, err := q.beginAsync(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("odmr: next: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// One statement: the first free row after the cursor, the message's
	// other free rows in the batch's domains unless another transaction
	// is taking them (waiting for it could deadlock), and a fence drawn
	// once for them all.
	rows, err := tx.Query(ctx, `WITH first AS MATERIALIZED (
			SELECT message_id FROM odmr_pending
			WHERE domain = ANY($1) AND message_id > $2 AND NOT held AND (lease_until IS NULL OR lease_until <= now())
			ORDER BY message_id LIMIT 1
			FOR UPDATE SKIP LOCKED),
		free AS MATERIALIZED (
			SELECT p.message_id, p.domain FROM odmr_pending p JOIN first USING (message_id)
			WHERE p.domain = ANY($1) AND NOT p.held AND (p.lease_until IS NULL OR p.lease_until <= now())
			FOR UPDATE OF p SKIP LOCKED),
		f AS MATERIALIZED (SELECT nextval('odmr_fence') AS fence WHERE EXISTS (SELECT 1 FROM first))
		UPDATE odmr_pending p SET lease_until = now() + $3 * interval '1 millisecond', fence = f.fence
		FROM free, f WHERE p.message_id = free.message_id AND p.domain = free.domain
		RETURNING p.message_id, p.domain, p.fence`,
		b.domains, b.cursor, q.opts.LeaseTTL.Milliseconds())
	if err != nil {
		return nil, 0, fmt.Errorf("odmr: next: %w", err)
	}
	var id, fence int64
	var domains []string
	var domain string
	if _, err := pgx.ForEachRow(rows, []any{&id, &domain, &fence}, func() error {
		domains = append(domains, domain)
		return nil
	}); err != nil {
		return nil, 0, fmt.Errorf("odmr: next: %w", err)
	}
	if id == 0 {
		return nil, 0, nil
	}
	slices.Sort(domains)

	m := &message{q: q, b: b, id: id, domains: domains, fence: fence, renewed: time.Now()}
	var expired bool
	var ret, envID, bodyType string
	// The message and its recipients in one round trip; the recipients
	// go unread when the message has expired.
	qb := &pgx.Batch{}
	qb.Queue(`SELECT sender, received, size, body_type, utf8, dsn_ret, dsn_envid,
		received <= now() - $2 * interval '1 millisecond'
		FROM odmr_messages WHERE id = $1`, id, q.opts.MaxAge.Milliseconds())
	qb.Queue(`SELECT addr, notify, orcpt_type, orcpt FROM odmr_recipients
		WHERE message_id = $1 AND domain = ANY($2) AND state = 'queued' ORDER BY n`, id, domains)
	br := tx.SendBatch(ctx, qb)
	err = br.QueryRow().Scan(&m.env.From, &m.env.Received, &m.env.Size, &bodyType, &m.env.UTF8, &ret, &envID, &expired)
	if err != nil {
		br.Close()
		return nil, 0, fmt.Errorf("odmr: next: message %d: %w", id, err)
	}
	m.env.ID = strconv.FormatInt(id, 10)
	m.env.Body = odmr.BodyType(bodyType)
	if ret != "" || envID != "" {
		m.env.DSN = &odmr.DSN{Return: odmr.DSNReturn(ret), EnvID: envID}
	}
	if !expired {
		rows, err := br.Query()
		if err != nil {
			br.Close()
			return nil, 0, fmt.Errorf("odmr: next: message %d: %w", id, err)
		}
		for rows.Next() {
			var addr, orcptType, orcpt string
			var notify []string
			if err := rows.Scan(&addr, &notify, &orcptType, &orcpt); err != nil {
				rows.Close()
				br.Close()
				return nil, 0, fmt.Errorf("odmr: next: message %d: %w", id, err)
			}
			m.env.To = append(m.env.To, addr)
			addRecipientDSN(&m.env, addr, notify, orcptType, orcpt)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			br.Close()
			return nil, 0, fmt.Errorf("odmr: next: message %d: %w", id, err)
		}
	}
	if err := br.Close(); err != nil {
		return nil, 0, fmt.Errorf("odmr: next: message %d: %w", id, err)
	}
	if expired {
		logged, err := q.settle(ctx, tx, id, domains, nil, nil, settleExpire)
		if err != nil {
			return nil, 0, err
		}
		if err := tx.Commit(ctx); err != nil {
			return nil, 0, fmt.Errorf("odmr: expiring message %d: %w", id, err)
		}
		logged()
		q.kickBouncer()
		return nil, id, nil
	}
	if len(m.env.To) == 0 {
		// Rows with nothing queued behind them cannot be left by this
		// package's transactions; drop them all the same.
		if _, err := tx.Exec(ctx, "DELETE FROM odmr_pending WHERE message_id = $1 AND domain = ANY($2)", id, domains); err != nil {
			return nil, 0, fmt.Errorf("odmr: next: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return nil, 0, fmt.Errorf("odmr: next: %w", err)
		}
		return nil, id, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, 0, fmt.Errorf("odmr: next: %w", err)
	}
	return m, id, nil
}

// asyncCommit begins a transaction that commits without waiting for the
// disk, in the one round trip of its BEGIN.
var asyncCommit = pgx.TxOptions{BeginQuery: "BEGIN; SET LOCAL synchronous_commit = off"}

// beginAsync begins an asyncCommit transaction.
func (q *Queue) beginAsync(ctx context.Context) (pgx.Tx, error) {
	return q.pool.BeginTx(ctx, asyncCommit)
}

// message is a leased message, the odmr.Message of a Queue.
type message struct {
	q       *Queue
	b       *batch
	id      int64
	domains []string // the leased rows
	fence   int64
	env     odmr.Envelope // To: the leased recipients
	// renewed is when the lease was last taken or renewed, by this
	// node's clock: it only decides when to renew again.
	renewed time.Time

	mu   sync.Mutex
	done bool // completed or released
}

// Envelope returns the envelope, with To holding the leased recipients.
func (m *message) Envelope() odmr.Envelope {
	env := m.env
	env.To = slices.Clone(env.To)
	env.DSN = env.DSN.Clone()
	return env
}

// Open returns the body, read one chunk at a time, each with its own
// short query: no connection is held while the reader waits. A chunk read
// a quarter of LeaseTTL or more after the lease was taken or last renewed
// renews it.
func (m *message) Open() (io.ReadCloser, error) {
	return &chunks{fetch: m.chunk}, nil
}

// chunks reads a body stored in odmr_body one chunk at a time: fetch
// returns chunk n and whether it is the last, or an error matching
// pgx.ErrNoRows past the last one (a body with no chunk at all).
type chunks struct {
	fetch  func(n int) (data []byte, last bool, err error)
	n      int // next chunk
	buf    []byte
	eof    bool
	closed bool
}

// selectChunk is the query of one chunk of a body, and of whether it is
// the last: the reader then needs no query to learn that there is none
// after it.
const selectChunk = `SELECT data, NOT EXISTS (SELECT 1 FROM odmr_body WHERE message_id = $1 AND n > $2)
	FROM odmr_body WHERE message_id = $1 AND n = $2`

func (r *chunks) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errors.New("odmr: body closed")
	}
	for len(r.buf) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		data, last, err := r.fetch(r.n)
		if errors.Is(err, pgx.ErrNoRows) {
			r.eof = true
			continue
		}
		if err != nil {
			return 0, err
		}
		r.n++
		r.buf, r.eof = data, last
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *chunks) Close() error {
	r.closed, r.buf = true, nil
	return nil
}

// chunk reads chunk n of the body, and renews the lease when it is due.
func (m *message) chunk(n int) (data []byte, last bool, err error) {
	ctx, cancel := context.WithTimeout(m.q.ctx, m.q.opts.QueryTimeout)
	defer cancel()
	if time.Since(m.renewed) < m.q.opts.LeaseTTL/4 {
		err = m.q.pool.QueryRow(ctx, selectChunk, m.id, n).Scan(&data, &last)
	} else {
		err = pgx.BeginTxFunc(ctx, m.q.pool, asyncCommit, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, `WITH renew AS (
					UPDATE odmr_pending SET lease_until = now() + $5 * interval '1 millisecond'
					WHERE message_id = $1 AND domain = ANY($3) AND fence = $4 RETURNING 1)
				`+selectChunk,
				m.id, n, m.domains, m.fence, m.q.opts.LeaseTTL.Milliseconds()).Scan(&data, &last)
		})
		if err == nil || errors.Is(err, pgx.ErrNoRows) {
			m.renewed = time.Now()
		}
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		err = fmt.Errorf("odmr: reading the body of message %d: %w", m.id, err)
	}
	return data, last, err
}

// errLeaseLost is returned by Complete when the lease lapsed and another
// session took the recipients.
var errLeaseLost = errors.New("odmr: the lease lapsed and another session took the message; results not recorded")

// Complete records the results and ends the lease: delivered recipients
// are done, permanent failures are done and reported to the sender in a
// DSN, and the others stay queued with their attempt counted and the
// error recorded. A recipient without a result counts as a temporary
// failure. The message is removed when no recipient is left. If the lease
// lapsed and another session leased the recipients since, nothing is
// recorded and an error says so. The results are recorded even if ctx is
// canceled: the deliveries they report happened.
func (m *message) Complete(ctx context.Context, results []odmr.RecipientResult) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return fmt.Errorf("odmr: message %d already completed", m.id)
	}
	m.done = true
	defer m.b.forget(m)
	err := m.completeOnce(context.WithoutCancel(ctx), results)
	if err != nil && !errors.Is(err, errLeaseLost) {
		// The deliveries happened: recording them later, once the
		// database answers again, spares the recipients a second copy
		// when the lease lapses.
		m.q.retryInBackground(m, "results recorded", func(ctx context.Context) error {
			err := m.completeOnce(ctx, results)
			if errors.Is(err, errLeaseLost) {
				return nil // nothing left to do
			}
			return err
		})
	}
	return err
}

func (m *message) completeOnce(ctx context.Context, results []odmr.RecipientResult) error {
	ctx, cancel := context.WithTimeout(ctx, m.q.opts.QueryTimeout)
	defer cancel()
	tx, err := m.q.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("odmr: complete: %w", err)
	}
	defer tx.Rollback(ctx)
	var held int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM odmr_pending
		WHERE message_id = $1 AND domain = ANY($2) AND fence = $3 FOR UPDATE) AS t`,
		m.id, m.domains, m.fence).Scan(&held); err != nil {
		return fmt.Errorf("odmr: complete: %w", err)
	}
	if held != len(m.domains) {
		return fmt.Errorf("%w (message %d)", errLeaseLost, m.id)
	}
	logged, err := m.q.settle(ctx, tx, m.id, m.domains, m.env.To, results, settleResults)
	if err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("odmr: complete: %w", err)
	}
	logged()
	m.q.kickBouncer()
	return nil
}

// release ends the lease without recording anything.
func (m *message) release() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return nil
	}
	m.done = true
	if err := m.releaseOnce(context.Background()); err != nil {
		m.q.retryInBackground(m, "lease released", m.releaseOnce)
		return fmt.Errorf("odmr: releasing message %d (tried again in the background; its lease lapses after %v): %w", m.id, m.q.opts.LeaseTTL, err)
	}
	return nil
}

func (m *message) releaseOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.q.opts.QueryTimeout)
	defer cancel()
	return pgx.BeginTxFunc(ctx, m.q.pool, asyncCommit, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE odmr_pending SET lease_until = NULL
			WHERE message_id = $1 AND domain = ANY($2) AND fence = $3`, m.id, m.domains, m.fence)
		return err
	})
}

// retryInterval is how often retryInBackground tries again.
var retryInterval = 5 * time.Second

// retryInBackground tries op on m again in the background after it
// failed, until it succeeds, the lease would have lapsed anyway, or the
// queue closes; it logs what, done. A database that restarted in the
// middle of a session ends the pool's connections: without the retry the
// results of the deliveries would be lost and the lease would keep the
// recipients from every node, the one still running included, until it
// lapsed, to deliver them again then.
func (q *Queue) retryInBackground(m *message, done string, op func(context.Context) error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		q.log.Warn("pgqueue: queue closed; not retrying: the message waits for its lease to lapse", "id", m.id, "retry", done)
		return
	}
	lapses := time.Now().Add(q.opts.LeaseTTL)
	q.wg.Go(func() {
		t := time.NewTicker(retryInterval)
		defer t.Stop()
		for time.Now().Before(lapses) {
			select {
			case <-q.ctx.Done():
				// What was not recorded waits for the lease to lapse and
				// is delivered again: say so, with the message.
				q.log.Warn("pgqueue: queue closed before a retry worked; the message waits for its lease to lapse", "id", m.id, "retry", done)
				return
			case <-t.C:
			}
			if err := op(q.ctx); err == nil {
				q.log.Info("pgqueue: "+done+" after a failure", "id", m.id)
				return
			}
		}
		q.log.Warn("pgqueue: gave up retrying; the lease has lapsed", "id", m.id, "retry", done)
	})
}
