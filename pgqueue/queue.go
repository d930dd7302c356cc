package pgqueue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/go-odmr/odmr"
)

// Defaults for the zero values of [Options].
const (
	defaultLeaseTTL            = 15 * time.Minute
	defaultMaxAge              = 5 * 24 * time.Hour
	defaultMaintenanceInterval = time.Minute
	defaultChunkSize           = 256 << 10
	defaultQueryTimeout        = time.Minute
	// defaultMaxMessageBytes is the default of odmr-provider's
	// -max-message-size, the SMTP intake's limit.
	defaultMaxMessageBytes = 50 << 20
)

// Options configures a [Queue]. The zero value is ready to use: no quota,
// DSNs kept in the database until a Bouncer is set, expiry after five
// days.
type Options struct {
	// LeaseTTL is how long a node holds the recipients it leased without
	// renewing the lease: reading the body renews it, one chunk at a time.
	// After that another node may lease them: that is how the mail of a
	// node that died becomes deliverable again. Lease times come from the
	// database's clock. Keep it above the longest the provider waits for
	// one reply (odmr.Provider's DataTimeout). 0 means 15 minutes.
	LeaseTTL time.Duration

	// MaxAge is how long a message may stay queued. A recipient still
	// queued after that fails with status 4.4.7 and a delivery status
	// notification goes to the sender. 0 means 5 days.
	MaxAge time.Duration

	// Bouncer sends the delivery status notifications (DSNs) the queue
	// writes when recipients fail; any node may send any DSN. DSNs wait in
	// the odmr_reports table until the Bouncer accepts them and are retried
	// after failures; nil keeps them there. spool.SMTPBouncer and
	// spool.DirBouncer are Bouncers.
	Bouncer Bouncer

	// Hostname names this host in DSNs (Reporting-MTA, From, Message-ID).
	// "" means the name os.Hostname returns, or "localhost".
	Hostname string

	// Quota limits what may be queued per domain. nil means no limit.
	Quota QuotaFunc

	// ChunkSize is the size of the pieces a body is stored and read in:
	// the most of a body either side holds in memory. 0 means 256 KiB.
	ChunkSize int

	// MaxMessageBytes is the largest body Enqueue takes, counted as it is
	// stored (bare LFs made CRLF). Enqueue stops reading a larger one as
	// soon as it passes the limit and refuses it with a 552 *odmr.Error
	// (5.3.4); nothing of it is queued or left on disk. 0 means 50 MiB,
	// the default of odmr-provider's -max-message-size; a negative value
	// means no limit.
	MaxMessageBytes int64

	// TempDir is where Enqueue spills a body larger than ChunkSize while
	// it reads it, before it takes a database connection: a file removed
	// at once where the system allows it, never longer than
	// MaxMessageBytes or the room the recipients' quota leaves. A full
	// disk refuses the message with a 452 *odmr.Error (4.3.1). "" means
	// os.TempDir() (TMPDIR), often a tmpfs, in memory: name a directory
	// on disk where many large messages may arrive at once.
	TempDir string

	// QueryTimeout bounds the database work the queue does without a
	// deadline of the caller's: reading each chunk of a body, recording
	// and releasing leases, sending a DSN, and Enqueue's transaction once
	// the body is read (the intake's context has no deadline), so that
	// a database that stopped answering fails them rather than holding
	// them for ever. 0 means 1 minute.
	QueryTimeout time.Duration

	// MaintenanceInterval is how often a background goroutine expires old
	// messages (Expire) and sends the DSNs that are due (FlushBounces). A
	// new DSN is also sent as soon as it is written. 0 means 1 minute; a
	// negative value disables all background work, and the program calls
	// Expire and FlushBounces itself.
	MaintenanceInterval time.Duration

	// Logger receives the queue's log: expired recipients, DSNs that could
	// not be sent. nil means slog.Default().
	Logger *slog.Logger
}

// QuotaFunc returns the limits on what may be queued for domain: at most
// maxBytes bytes of messages and at most maxMessages messages. 0 means no
// limit. A message with recipients in several domains counts fully in
// each.
type QuotaFunc func(domain string) (maxBytes int64, maxMessages int)

// Bouncer sends a delivery status notification: env has the null sender
// and the original sender as its one recipient, and dsn is the report as
// an RFC 5322 message. It must read dsn to the end before returning nil.
// An *odmr.Error with a 5xx code is a permanent refusal: the DSN is kept
// aside (dead) and logged. Any other error is retried later.
type Bouncer interface {
	Bounce(ctx context.Context, env odmr.Envelope, dsn io.Reader) error
}

// Queue is a mail queue in PostgreSQL: an [odmr.QueueSource] that several
// provider nodes share. Create one with [Open] or [New]; it is safe for
// concurrent use.
type Queue struct {
	pool     *pgxpool.Pool
	ownsPool bool
	opts     Options
	log      *slog.Logger

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{} // a DSN was written

	mu     sync.Mutex
	closed bool
}

var errClosed = errors.New("odmr: queue closed")

// Open connects to the database named by dsn (a PostgreSQL connection
// string or URL; several hosts with target_session_attrs=read-write follow
// a failover), applies the schema migrations, and returns the queue. Close
// closes the connections.
func Open(ctx context.Context, dsn string, opts Options) (*Queue, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("odmr: %w", err)
	}
	q, err := New(ctx, pool, opts)
	if err != nil {
		pool.Close()
		return nil, err
	}
	q.ownsPool = true
	return q, nil
}

// New returns a queue on pool, after applying the schema migrations. The
// caller keeps the pool and closes it after the queue.
func New(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Queue, error) {
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = defaultLeaseTTL
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = defaultMaxAge
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = defaultChunkSize
	}
	if opts.QueryTimeout <= 0 {
		opts.QueryTimeout = defaultQueryTimeout
	}
	switch {
	case opts.MaxMessageBytes == 0:
		opts.MaxMessageBytes = defaultMaxMessageBytes
	case opts.MaxMessageBytes < 0:
		opts.MaxMessageBytes = -1
	}
	if opts.MaintenanceInterval == 0 {
		opts.MaintenanceInterval = defaultMaintenanceInterval
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
		if opts.Hostname == "" {
			opts.Hostname = "localhost"
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := Migrate(ctx, pool); err != nil {
		return nil, err
	}
	q := &Queue{pool: pool, opts: opts, log: log, kick: make(chan struct{}, 1)}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	if opts.MaintenanceInterval > 0 {
		q.wg.Go(q.background)
	}
	return q, nil
}

// Close stops the background work and, for a queue made by Open, closes
// the connections. Close the batches first: the leases of a batch still
// open lapse after LeaseTTL.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	q.cancel()
	q.wg.Wait()
	if q.ownsPool {
		q.pool.Close()
	}
	return nil
}

func (q *Queue) checkOpen() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return errClosed
	}
	return nil
}

// canonical returns the form of a domain the queue keys on.
func canonical(domain string) string { return odmr.RecipientDomain("@" + domain) }

func canonicalAll(domains []string) []string {
	out := make([]string, 0, len(domains))
	for _, d := range domains {
		if c := canonical(d); c != "" {
			out = append(out, c)
		}
	}
	return out
}

// HasMail reports whether any recipient in domains is queued, leased or
// not, in a message not held. It reads the index of pending domains: one index probe per domain,
// whatever the size of the queue.
func (q *Queue) HasMail(ctx context.Context, domains []string) (bool, error) {
	if err := q.checkOpen(); err != nil {
		return false, err
	}
	var ok bool
	err := q.pool.QueryRow(ctx,
		"SELECT EXISTS (SELECT 1 FROM odmr_pending WHERE domain = ANY($1) AND NOT held)",
		canonicalAll(domains)).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("odmr: has mail: %w", err)
	}
	return ok, nil
}

// Claim returns a batch over the mail queued for domains.
func (q *Queue) Claim(ctx context.Context, domains []string) (odmr.Batch, error) {
	if err := q.checkOpen(); err != nil {
		return nil, err
	}
	return &batch{q: q, domains: canonicalAll(domains)}, nil
}

// DomainStats describes what is queued for one domain.
type DomainStats struct {
	Domain   string
	Messages int
	Bytes    int64
	// Oldest is when the oldest message queued for the domain arrived.
	Oldest time.Time
}

// List returns what is queued per domain, by domain, held messages left
// out. It reads the whole index: an operator's tool, not for every
// session; QueueStats is the cheap one.
func (q *Queue) List(ctx context.Context) ([]DomainStats, error) {
	return listDomains(ctx, q.pool)
}

func listDomains(ctx context.Context, pool *pgxpool.Pool) ([]DomainStats, error) {
	rows, err := pool.Query(ctx, `
		SELECT p.domain, count(*), coalesce(sum(m.size), 0)::bigint, min(m.received)
		FROM odmr_pending p JOIN odmr_messages m ON m.id = p.message_id
		WHERE NOT p.held
		GROUP BY p.domain ORDER BY p.domain`)
	if err != nil {
		return nil, fmt.Errorf("odmr: list: %w", err)
	}
	defer rows.Close()
	var out []DomainStats
	for rows.Next() {
		var d DomainStats
		if err := rows.Scan(&d.Domain, &d.Messages, &d.Bytes, &d.Oldest); err != nil {
			return nil, fmt.Errorf("odmr: list: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("odmr: list: %w", err)
	}
	return out, nil
}

// Len returns the number of messages with recipients still queued.
func (q *Queue) Len(ctx context.Context) (int, error) {
	var n int
	if err := q.pool.QueryRow(ctx, "SELECT count(DISTINCT message_id) FROM odmr_pending").Scan(&n); err != nil {
		return 0, fmt.Errorf("odmr: %w", err)
	}
	return n, nil
}

// background expires old mail, adds up the per-domain counts and sends
// DSNs every MaintenanceInterval, and DSNs as soon as they are written.
func (q *Queue) background() {
	t := time.NewTicker(q.opts.MaintenanceInterval)
	defer t.Stop()
	for {
		select {
		case <-q.ctx.Done():
			return
		case <-t.C:
			if _, err := q.Expire(q.ctx); err != nil && q.ctx.Err() == nil {
				q.log.Error("pgqueue: expiring old mail", "err", err)
			}
			if err := q.compactStats(q.ctx); err != nil && q.ctx.Err() == nil {
				q.log.Warn("pgqueue: adding up the queue's counts", "err", err)
			}
		case <-q.kick:
		}
		if q.opts.Bouncer != nil {
			if _, err := q.flush(q.ctx, true); err != nil && q.ctx.Err() == nil {
				q.log.Warn("pgqueue: sending DSNs", "err", err)
			}
		}
	}
}

func (q *Queue) kickBouncer() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

var _ odmr.QueueSource = (*Queue)(nil)
