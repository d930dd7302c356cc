package pgqueue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/ascii"
	"github.com/go-odmr/odmr/internal/crlf"
	"github.com/go-odmr/odmr/internal/ctxio"
	"github.com/go-odmr/odmr/internal/nospace"
)

// Enqueue adds a message for env.From and env.To with the body read from
// body, and returns its ID. The envelope, the DSN requests and the body
// are written in one transaction: once Enqueue returns nil the message is
// committed, and on an error nothing of it is queued.
//
// The body is read whole before the transaction starts, so that a client
// that sends slowly, or stops, holds no database connection while it
// does: a few such clients of an SMTP intake would otherwise take every
// connection of the pool, and stall enqueuing and delivery on every node
// of the queue with them. Up to ChunkSize bytes stay in memory, a larger
// body goes to a temporary file in Options.TempDir, removed at once
// where the system allows it; it is then stored in chunks of ChunkSize
// bytes, never held whole in memory, bare LF line endings becoming CRLF
// on the way. Reading stops as soon as the body is over
// Options.MaxMessageBytes (a 552 *odmr.Error, 5.3.4) or over the bytes
// the quota of a recipient's domain leaves (452, 4.2.2): the room left is
// looked up before reading, with one short query whose connection goes
// back to the pool at once, and checked again in the transaction, which
// decides. Past that room the body is read on, but not stored, to tell a
// message that fits once the queue drains from one that never can: one
// over the domain's whole byte quota, or over MaxMessageBytes, gets the
// permanent 552 5.3.4, lest its sender retry it until it expires. A full disk while the body is spilled gives a 452 *odmr.Error
// (4.3.1). On any error nothing of the body is left on disk.
// Size and Body (8BITMIME when the body has 8-bit bytes, 7BIT otherwise,
// whatever was declared, but for BINARYMIME) come from the content; UTF8
// is set when an address is not ASCII, and Received, from the database's
// clock, when it is zero. env.ID is ignored. Duplicate recipients are
// queued once.
//
// Once the body is read, the database work is bounded by
// Options.QueryTimeout, or by ctx if that is sooner.
//
// When a domain of the recipients is over its quota, Enqueue returns an
// *odmr.Error with code 452 and enhanced code 4.2.2. An invalid address
// gives a 501 *odmr.Error.
func (q *Queue) Enqueue(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
	if err := q.checkOpen(); err != nil {
		return "", err
	}
	if len(env.To) == 0 {
		return "", errors.New("odmr: message has no recipients")
	}
	if badAddr(env.From) {
		return "", &odmr.Error{Code: 501, EnhancedCode: odmr.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	}
	var rcpts []string
	var domains []string
	for _, r := range env.To {
		if r == "" || badAddr(r) {
			return "", &odmr.Error{Code: 501, EnhancedCode: odmr.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
		}
		if !slices.Contains(rcpts, r) {
			rcpts = append(rcpts, r)
			if d := odmr.RecipientDomain(r); !slices.Contains(domains, d) {
				domains = append(domains, d)
			}
		}
	}
	slices.Sort(domains)

	// The quota's room before reading, so that a body over it is cut
	// short rather than spilled whole first; a domain with no room for
	// one more message refuses it before a byte is read.
	left, limited, err := q.quotaBefore(ctx, domains)
	if err != nil {
		return "", err
	}
	limit, tooBig := q.bodyLimit(left, limited)
	in := body
	body, done, err := q.readBody(ctx, in, limit)
	switch {
	case errors.Is(err, errOverLimit):
		// Cut short by a quota's room, a body may also be too big to
		// be queued ever: that is permanent, not worth a retry.
		if tooBig != errTooBig && q.overBound(ctx, in, limit+1, domains) {
			return "", errTooBig
		}
		return "", tooBig
	case nospace.Is(err):
		q.log.Error("pgqueue: no space to spill a message body; answering 452", "dir", q.tempDir(), "err", err)
		return "", errNoSpace
	case err != nil:
		return "", fmt.Errorf("odmr: enqueue: reading message: %w", err)
	}
	defer done()

	// The database work has a bound of its own, whatever ctx allows: an
	// intake that passes a context without a deadline must not wait for
	// ever on a server that stopped answering (its client gets a 451).
	ctx, cancel := context.WithTimeout(ctx, q.opts.QueryTimeout)
	defer cancel()
	tx, err := q.pool.Begin(ctx)
	if err != nil {
		return "", fmt.Errorf("odmr: enqueue: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	left, limited, err = q.checkQuota(ctx, tx, domains)
	if err != nil {
		return "", err
	}
	limit, tooBig = q.bodyLimit(left, limited)

	var received any // NULL: the database's now()
	if !env.Received.IsZero() {
		received = env.Received
	}
	var ret, envID string
	if env.DSN != nil {
		ret, envID = string(env.DSN.Return), env.DSN.EnvID
	}
	var id int64
	if err := tx.QueryRow(ctx, `INSERT INTO odmr_messages (sender, received, dsn_ret, dsn_envid)
		VALUES ($1, coalesce($2, now()), $3, $4) RETURNING id`,
		env.From, received, ret, envID).Scan(&id); err != nil {
		return "", fmt.Errorf("odmr: enqueue: %w", err)
	}

	cw := &chunkWriter{ctx: ctx, tx: tx, id: id, buf: make([]byte, 0, q.opts.ChunkSize)}
	w := &crlf.Writer{W: cw, Limit: limit}
	if _, err := io.Copy(w, ctxio.Reader(ctx, body)); err != nil {
		if errors.Is(err, crlf.ErrTooBig) {
			return "", tooBig
		}
		return "", fmt.Errorf("odmr: enqueue: reading message: %w", err)
	}
	if err := cw.flush(); err != nil {
		return "", fmt.Errorf("odmr: enqueue: %w", err)
	}

	bodyType := env.Body
	// The content decides, not the declaration: intakes (common SMTP
	// clients among them) declare BODY=8BITMIME for 7-bit mail too, and a
	// 7-bit message may go to a customer without 8BITMIME.
	if bodyType != odmr.BodyBinaryMIME {
		bodyType = ""
		if w.EightBit {
			bodyType = odmr.Body8BitMIME
		}
	}
	utf8Env := env.UTF8 || !ascii.Is(env.From)
	for _, r := range rcpts {
		utf8Env = utf8Env || !ascii.Is(r)
	}
	if _, err := tx.Exec(ctx, "UPDATE odmr_messages SET size = $2, body_type = $3, utf8 = $4 WHERE id = $1",
		id, w.N, string(bodyType), utf8Env); err != nil {
		return "", fmt.Errorf("odmr: enqueue: %w", err)
	}

	b := &pgx.Batch{}
	for i, r := range rcpts {
		var notify []string
		var orcptType, orcpt string
		if env.DSN != nil {
			if d, ok := env.DSN.Recipients[r]; ok {
				for _, n := range d.Notify {
					notify = append(notify, string(n))
				}
				if notify == nil && d.Notify != nil {
					notify = []string{}
				}
				orcptType, orcpt = d.ORcptType, d.ORcpt
			}
		}
		b.Queue(`INSERT INTO odmr_recipients (message_id, n, addr, domain, notify, orcpt_type, orcpt)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, id, i, r, odmr.RecipientDomain(r), notify, orcptType, orcpt)
	}
	for _, d := range domains {
		b.Queue("INSERT INTO odmr_pending (domain, message_id) VALUES ($1, $2)", d, id)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return "", fmt.Errorf("odmr: enqueue: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return "", fmt.Errorf("odmr: enqueue: %w", err)
	}
	return strconv.FormatInt(id, 10), nil
}

// checkQuota checks the message count of every domain of a new message
// against its quota, and returns how many bytes the message may have (-1
// for no limit) and the domain that sets that limit. Messages queued by
// other transactions in the meantime are not counted: a quota is a bound
// that concurrent intakes can overshoot by what they queue at once, never
// a reason to drop mail that was accepted.
func (q *Queue) checkQuota(ctx context.Context, db querier, domains []string) (int64, string, error) {
	left, limited := int64(-1), ""
	if q.opts.Quota == nil {
		return left, limited, nil
	}
	type quota struct {
		maxBytes    int64
		maxMessages int
	}
	quotas := make(map[string]quota)
	var counted []string
	for _, d := range domains {
		maxBytes, maxMessages := q.opts.Quota(d)
		if maxBytes > 0 || maxMessages > 0 {
			quotas[d] = quota{maxBytes, maxMessages}
			counted = append(counted, d)
		}
	}
	if len(counted) == 0 {
		return left, limited, nil
	}
	rows, err := db.Query(ctx, `SELECT p.domain, count(*), coalesce(sum(m.size), 0)::bigint
		FROM odmr_pending p JOIN odmr_messages m ON m.id = p.message_id
		WHERE p.domain = ANY($1) AND NOT p.held GROUP BY p.domain`, counted)
	if err != nil {
		return 0, "", fmt.Errorf("odmr: enqueue: checking the quota: %w", err)
	}
	type usage struct {
		n    int
		size int64
	}
	used := make(map[string]usage, len(counted))
	var d string
	var u usage
	if _, err := pgx.ForEachRow(rows, []any{&d, &u.n, &u.size}, func() error {
		used[d] = u
		return nil
	}); err != nil {
		return 0, "", fmt.Errorf("odmr: enqueue: checking the quota: %w", err)
	}
	for _, d := range counted { // sorted: the same domain named each time
		qu, u := quotas[d], used[d]
		if qu.maxMessages > 0 && u.n+1 > qu.maxMessages {
			return 0, "", errQuota(d)
		}
		if qu.maxBytes > 0 {
			if l := max(qu.maxBytes-u.size, 0); left < 0 || l < left {
				left, limited = l, d
			}
		}
	}
	return left, limited, nil
}

// querier is a pgx.Tx, or a pool that lends a connection for one query.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// quotaBefore is checkQuota before the body is read, with a connection
// taken for the one query and given back at once, bounded by
// QueryTimeout: what it finds is a first bound, which the transaction
// checks again.
func (q *Queue) quotaBefore(ctx context.Context, domains []string) (int64, string, error) {
	if q.opts.Quota == nil {
		return -1, "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, q.opts.QueryTimeout)
	defer cancel()
	return q.checkQuota(ctx, q.pool, domains)
}

// bodyLimit returns how many bytes a body may have, given the room left
// in the quota of domain limited (-1: no limit), and the error for a body
// over it: the quota's when that is the tighter bound, MaxMessageBytes's
// otherwise.
func (q *Queue) bodyLimit(left int64, limited string) (int64, *odmr.Error) {
	if m := q.opts.MaxMessageBytes; left >= 0 && (m < 0 || left < m) {
		return left, errQuota(limited)
	}
	return q.opts.MaxMessageBytes, errTooBig
}

// errTooBig refuses a body over MaxMessageBytes (RFC 3463: 5.3.4,
// message too big for system).
var errTooBig = &odmr.Error{Code: 552, EnhancedCode: odmr.EnhancedCode{5, 3, 4}, Message: "Message too big for system"}

// errNoSpace refuses a body when the disk it is spilled to is full
// (RFC 5321: 452, insufficient system storage; RFC 3463: 4.3.1, mail
// system full): the sender tries again later.
var errNoSpace = &odmr.Error{Code: nospace.Code, EnhancedCode: nospace.Enhanced, Message: nospace.Message}

// errQuota returns the reply for a domain that is over its quota.
func errQuota(domain string) *odmr.Error {
	return &odmr.Error{Code: 452, EnhancedCode: odmr.EnhancedCode{4, 2, 2},
		Message: "Too much mail queued for " + domain + ", try again later"}
}

// chunkWriter stores a body in chunks of cap(buf) bytes as it arrives.
type chunkWriter struct {
	ctx context.Context
	tx  pgx.Tx
	id  int64
	n   int // chunks written
	buf []byte
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		k := min(cap(c.buf)-len(c.buf), len(p))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == cap(c.buf) {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return total, nil
}

// flush writes what is buffered as the next chunk.
func (c *chunkWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	if _, err := c.tx.Exec(c.ctx, "INSERT INTO odmr_body (message_id, n, data) VALUES ($1, $2, $3)", c.id, c.n, c.buf); err != nil {
		return err
	}
	c.n++
	c.buf = c.buf[:0]
	return nil
}

// badAddr reports whether an address holds control characters, which no
// SMTP path can and which would let it break out of a command or a header.
func badAddr(a string) bool {
	return strings.ContainsFunc(a, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// errOverLimit is readBody's error for a body over its limit.
var errOverLimit = errors.New("odmr: message over its limit")

// readBody reads body to the end before Enqueue takes a connection: into
// memory up to ChunkSize bytes, into an unlinked temporary file in
// TempDir beyond. It returns a reader of what it read and a function that
// frees it, or errOverLimit as soon as it has read more than limit bytes
// (-1: no limit); on an error it leaves nothing behind.
func (q *Queue) readBody(ctx context.Context, body io.Reader, limit int64) (io.Reader, func(), error) {
	lr := &io.LimitedReader{R: ctxio.Reader(ctx, body), N: math.MaxInt64}
	if limit >= 0 && limit < math.MaxInt64 {
		lr.N = limit + 1 // one byte more tells a body over the limit
	}
	over := func() bool { return limit >= 0 && lr.N == 0 }
	var head bytes.Buffer
	n, err := io.CopyN(&head, lr, int64(q.opts.ChunkSize)+1)
	if over() {
		return nil, nil, errOverLimit
	}
	if err == io.EOF || err == nil && n <= int64(q.opts.ChunkSize) {
		return &head, func() {}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	f, err := os.CreateTemp(q.opts.TempDir, "pgqueue-body-*")
	if err != nil {
		return nil, nil, err
	}
	name := f.Name()
	os.Remove(name) // where an open file can go: nothing left by a crash
	done := func() {
		f.Close()
		os.Remove(name)
	}
	if _, err = head.WriteTo(f); err == nil {
		_, err = io.Copy(f, lr)
	}
	if err == nil && over() {
		err = errOverLimit
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		done()
		return nil, nil, err
	}
	return f, done, nil
}

// sizeBound returns the most bytes a message for domains may ever have:
// MaxMessageBytes, or the byte quota of one of the domains if that is
// smaller, however little is queued; -1 for no bound.
func (q *Queue) sizeBound(domains []string) int64 {
	b := q.opts.MaxMessageBytes
	if q.opts.Quota != nil {
		for _, d := range domains {
			if m, _ := q.opts.Quota(d); m > 0 && (b < 0 || m < b) {
				b = m
			}
		}
	}
	return b
}

// overBound reports whether a body that the room left in a quota cut
// short, after read bytes, is over sizeBound. It reads on from rest and
// throws away what it reads, at most up to the bound. (The body read
// whole is never over it: the room before reading is within the bound.)
func (q *Queue) overBound(ctx context.Context, rest io.Reader, read int64, domains []string) bool {
	b := q.sizeBound(domains)
	switch {
	case b < 0:
		return false
	case read > b:
		return true
	}
	n, _ := io.CopyN(io.Discard, ctxio.Reader(ctx, rest), b-read+1)
	return read+n > b
}

// tempDir returns the directory readBody spills to.
func (q *Queue) tempDir() string {
	if q.opts.TempDir != "" {
		return q.opts.TempDir
	}
	return os.TempDir()
}
