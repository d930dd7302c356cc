// Package memqueue is an in-memory [odmr.QueueSource]: the reference queue
// for tests, examples and programs that do not need mail to survive a
// restart. Package spool is the queue that does.
package memqueue

import (
	"bytes"
	"cmp"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/ascii"
	"github.com/go-odmr/odmr/internal/crlf"
)

// Queue is an [odmr.QueueSource] that keeps messages in memory: the
// reference queue for tests, examples and programs that do not need mail
// to survive a restart. The zero value is an empty queue ready to use. It
// is safe for concurrent use; sessions that pull the same domain at once
// share its messages without delivering any recipient twice.
//
// Messages are indexed by recipient domain: a session's cost depends on
// the mail queued for its own domains, not on other domains' mail.
type Queue struct {
	// OnFailure, if set, is called (outside the queue's lock) with the
	// recipients of a message that failed permanently, so the program can
	// send a bounce. The queue forgets those recipients.
	OnFailure func(env odmr.Envelope, failed []odmr.RecipientResult)

	mu       sync.Mutex
	nextID   int
	messages list.List               // of *memMessage, in arrival order
	domains  map[string]*domainQueue // recipients by domain
	failed   []odmr.RecipientResult  // permanent failures, oldest first
	byID     map[string]*memMessage
}

// domainQueue holds the recipients in one domain in arrival order. Done
// recipients stay until more than half are done, then the slice is
// compacted, so that removal is O(1) amortised.
type domainQueue struct {
	rcpts   []*memRcpt
	pending int // recipients not yet done
}

type memRcpt struct {
	msg      *memMessage
	addr     string
	domain   string
	leasedBy *memBatch
	done     bool
	attempts int
	lastErr  error
}

type memMessage struct {
	seq   uint64        // arrival order
	elem  *list.Element // in Queue.messages
	env   odmr.Envelope // To is unused; recipients live in rcpts
	body  []byte
	rcpts []*memRcpt // not yet done
}

// Enqueue adds a message for env.From and env.To with the body read from
// r, and returns its ID. Bare LF line endings in the body become CRLF;
// Size and Body (8BITMIME when the body has 8-bit bytes, 7BIT otherwise,
// whatever was declared, but for BINARYMIME) are set from the content, and
// UTF8 when an address is not ASCII. Duplicate recipients are queued
// once.
func (q *Queue) Enqueue(env odmr.Envelope, r io.Reader) (string, error) {
	if len(env.To) == 0 {
		return "", errors.New("odmr: message has no recipients")
	}
	body, eightBit, err := readCRLF(r)
	if err != nil {
		return "", err
	}
	env.Size = int64(len(body))
	// The content decides, not the declaration: intakes (common SMTP
	// clients among them) declare BODY=8BITMIME for 7-bit mail too, and a 7-bit
	// message may go to a customer without 8BITMIME.
	if env.Body != odmr.BodyBinaryMIME {
		env.Body = ""
		if eightBit {
			env.Body = odmr.Body8BitMIME
		}
	}
	if !env.UTF8 {
		env.UTF8 = !ascii.Is(env.From)
		for _, t := range env.To {
			env.UTF8 = env.UTF8 || !ascii.Is(t)
		}
	}
	if env.Received.IsZero() {
		env.Received = time.Now()
	}
	env.DSN = env.DSN.Clone()
	m := &memMessage{body: body}
	for _, t := range env.To {
		if !slices.ContainsFunc(m.rcpts, func(r *memRcpt) bool { return r.addr == t }) {
			m.rcpts = append(m.rcpts, &memRcpt{msg: m, addr: t, domain: odmr.RecipientDomain(t)})
		}
	}
	env.To = nil

	q.mu.Lock()
	defer q.mu.Unlock()
	q.init()
	q.nextID++
	m.seq = uint64(q.nextID)
	env.ID = strconv.Itoa(q.nextID)
	m.env = env
	m.elem = q.messages.PushBack(m)
	q.byID[env.ID] = m
	for _, rc := range m.rcpts {
		d := q.domains[rc.domain]
		if d == nil {
			d = &domainQueue{}
			q.domains[rc.domain] = d
		}
		d.rcpts = append(d.rcpts, rc)
		d.pending++
	}
	return env.ID, nil
}

func (q *Queue) init() {
	if q.domains == nil {
		q.domains = make(map[string]*domainQueue)
		q.byID = make(map[string]*memMessage)
	}
}

// readBufs holds the read buffers of readCRLF: one allocated per message
// would be most of an Enqueue's garbage.
var readBufs = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// readCRLF reads r whole, turning bare LF into CRLF, and reports whether
// it has 8-bit bytes.
func readCRLF(r io.Reader) (body []byte, eightBit bool, err error) {
	var out bytes.Buffer
	pb := readBufs.Get().(*[32 << 10]byte)
	defer readBufs.Put(pb)
	w := &crlf.Writer{W: &out, Limit: -1}
	if _, err := io.CopyBuffer(w, r, pb[:]); err != nil {
		return nil, false, err
	}
	return out.Bytes(), w.EightBit, nil
}

// HasMail reports whether any recipient in domains is still queued. It
// consults a per-domain count and costs the same whatever the queue size.
func (q *Queue) HasMail(ctx context.Context, domains []string) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, d := range domains {
		if q.domains[d] != nil {
			return true, nil
		}
	}
	return false, nil
}

// Claim returns a batch over the messages queued for domains.
func (q *Queue) Claim(ctx context.Context, domains []string) (odmr.Batch, error) {
	return &memBatch{
		q:       q,
		domains: slices.Clone(domains),
		cursor:  make(map[string]uint64, len(domains)),
		leases:  make(map[*memLease]struct{}),
	}, nil
}

// Len returns the number of messages with recipients still queued.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.messages.Len()
}

// Queued returns the number of recipients in domain still queued.
func (q *Queue) Queued(domain string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if d := q.domains[domain]; d != nil {
		return d.pending
	}
	return 0
}

// Messages returns the envelopes of the messages still queued, with To
// holding the recipients not yet done.
func (q *Queue) Messages() []odmr.Envelope {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]odmr.Envelope, 0, q.messages.Len())
	for e := q.messages.Front(); e != nil; e = e.Next() {
		m := e.Value.(*memMessage)
		env := m.env
		for _, r := range m.rcpts {
			env.To = append(env.To, r.addr)
		}
		out = append(out, env)
	}
	return out
}

// LastError returns the error of the last temporary failure of a queued
// recipient of message id, and how many attempts it has seen.
func (q *Queue) LastError(id, rcpt string) (attempts int, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if m := q.byID[id]; m != nil {
		for _, r := range m.rcpts {
			if r.addr == rcpt {
				return r.attempts, r.lastErr
			}
		}
	}
	return 0, nil
}

// Failed returns the recipients that failed permanently, oldest first.
func (q *Queue) Failed() []odmr.RecipientResult {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.failed)
}

type memBatch struct {
	q       *Queue
	domains []string
	// cursor holds, per domain, the sequence number of the last message
	// looked at: the batch moves forward through each domain's queue, so
	// each message is looked at once and returned at most once.
	cursor map[string]uint64
	leases map[*memLease]struct{} // not yet completed
	closed bool
}

func (b *memBatch) Next(ctx context.Context) (odmr.Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q := b.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if b.closed {
		return nil, errors.New("odmr: batch closed")
	}
	// The oldest message with a recipient free in one of the batch's
	// domains, found at the head of each domain's queue.
	var m *memMessage
	for _, d := range b.domains {
		if r := b.head(d); r != nil && (m == nil || r.msg.seq < m.seq) {
			m = r.msg
		}
	}
	if m == nil {
		return nil, io.EOF
	}
	var mine []*memRcpt
	for _, r := range m.rcpts {
		if r.leasedBy == nil && slices.Contains(b.domains, r.domain) {
			mine = append(mine, r)
		}
	}
	for _, d := range b.domains {
		b.cursor[d] = max(b.cursor[d], m.seq)
	}
	env := m.env
	env.To = make([]string, len(mine))
	for i, r := range mine {
		r.leasedBy = b
		env.To[i] = r.addr
	}
	env.DSN = dsnFor(m.env.DSN, env.To)
	l := &memLease{b: b, m: m, rcpts: mine, env: env}
	b.leases[l] = struct{}{}
	return l, nil
}

// head returns the oldest recipient in domain past the batch's cursor that
// is neither done nor leased, moving the cursor past those that are; nil
// when there is none. q.mu must be held.
func (b *memBatch) head(domain string) *memRcpt {
	dq := b.q.domains[domain]
	if dq == nil {
		return nil
	}
	cur := b.cursor[domain]
	i, _ := slices.BinarySearchFunc(dq.rcpts, cur+1, func(r *memRcpt, seq uint64) int { return cmp.Compare(r.msg.seq, seq) })
	for ; i < len(dq.rcpts); i++ {
		r := dq.rcpts[i]
		if !r.done && r.leasedBy == nil {
			break
		}
		cur = r.msg.seq
	}
	b.cursor[domain] = cur
	if i == len(dq.rcpts) {
		return nil
	}
	r := dq.rcpts[i]
	if cur >= r.msg.seq {
		// A recipient of the same message was skipped: look at the
		// message again next time.
		b.cursor[domain] = r.msg.seq - 1
	}
	return r
}

func (b *memBatch) Close() error {
	q := b.q
	q.mu.Lock()
	defer q.mu.Unlock()
	b.closed = true
	for l := range b.leases {
		for _, r := range l.rcpts {
			if r.leasedBy == b {
				r.leasedBy = nil
			}
		}
	}
	b.leases = nil
	return nil
}

type memLease struct {
	b     *memBatch
	m     *memMessage
	rcpts []*memRcpt
	env   odmr.Envelope
	done  bool
}

func (l *memLease) Envelope() odmr.Envelope {
	env := l.env
	env.To = slices.Clone(env.To)
	env.DSN = env.DSN.Clone()
	return env
}

func (l *memLease) Open() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.m.body)), nil
}

func (l *memLease) Complete(ctx context.Context, results []odmr.RecipientResult) error {
	q := l.b.q
	q.mu.Lock()
	if l.done {
		q.mu.Unlock()
		return errors.New("odmr: message already completed")
	}
	l.done = true
	outcome := make(map[string]error, len(results))
	reported := make(map[string]bool, len(results))
	for _, r := range results {
		outcome[r.Recipient] = r.Err
		reported[r.Recipient] = true
	}
	var failed []odmr.RecipientResult
	keep := l.m.rcpts[:0]
	for _, r := range l.m.rcpts {
		if r.leasedBy != l.b || !slices.Contains(l.rcpts, r) {
			keep = append(keep, r)
			continue
		}
		r.leasedBy = nil
		err, ok := outcome[r.addr]
		switch {
		case !ok:
			r.attempts++
			r.lastErr = fmt.Errorf("odmr: no result reported for %s", r.addr)
			keep = append(keep, r)
		case err == nil:
			q.done(r)
		case odmr.Permanent(err):
			q.done(r)
			failed = append(failed, odmr.RecipientResult{Recipient: r.addr, Err: err})
		default:
			r.attempts++
			r.lastErr = err
			keep = append(keep, r)
		}
	}
	l.m.rcpts = keep
	if len(keep) == 0 {
		q.messages.Remove(l.m.elem)
		delete(q.byID, l.m.env.ID)
	}
	delete(l.b.leases, l)
	q.failed = append(q.failed, failed...)
	hook := q.OnFailure
	env := l.m.env
	q.mu.Unlock()
	if hook != nil && len(failed) > 0 {
		hook(env, failed)
	}
	return nil
}

// done takes r off its domain's queue; q.mu must be held.
func (q *Queue) done(r *memRcpt) {
	r.done = true
	dq := q.domains[r.domain]
	if dq.pending--; dq.pending <= 0 {
		delete(q.domains, r.domain)
		return
	}
	if len(dq.rcpts) > 2*dq.pending+16 {
		dq.rcpts = slices.DeleteFunc(dq.rcpts, func(r *memRcpt) bool { return r.done })
	}
}

var _ odmr.QueueSource = (*Queue)(nil)

// dsnFor returns the part of d that concerns the recipients in to; nil
// when nothing of d is left.
func dsnFor(d *odmr.DSN, to []string) *odmr.DSN {
	if d == nil {
		return nil
	}
	c := &odmr.DSN{Return: d.Return, EnvID: d.EnvID}
	for _, r := range to {
		if rd, ok := d.Recipients[r]; ok {
			if c.Recipients == nil {
				c.Recipients = make(map[string]odmr.RecipientDSN)
			}
			rd.Notify = slices.Clone(rd.Notify)
			c.Recipients[r] = rd
		}
	}
	if c.Return == "" && c.EnvID == "" && c.Recipients == nil {
		return nil
	}
	return c
}
