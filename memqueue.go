package odmr

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// MemoryQueue is a [QueueSource] that keeps messages in memory: the
// reference queue for tests, examples and programs that do not need mail
// to survive a restart. The zero value is an empty queue ready to use. It
// is safe for concurrent use; sessions that pull the same domain at once
// share its messages without delivering any recipient twice.
type MemoryQueue struct {
	// OnFailure, if set, is called (outside the queue's lock) with the
	// recipients of a message that failed permanently, so the program can
	// send a bounce. The queue forgets those recipients.
	OnFailure func(env Envelope, failed []RecipientResult)

	mu       sync.Mutex
	nextID   int
	messages []*memMessage     // in arrival order
	pending  map[string]int    // domain -> recipients not yet done
	failed   []RecipientResult // permanent failures, oldest first
	byID     map[string]*memMessage
}

type memRcpt struct {
	addr     string
	domain   string
	leasedBy *memBatch
	attempts int
	lastErr  error
}

type memMessage struct {
	seq   uint64   // arrival order; q.messages is sorted by it
	env   Envelope // To is unused; recipients live in rcpts
	body  []byte
	rcpts []*memRcpt
}

// Enqueue adds a message for env.From and env.To with the body read from
// r, and returns its ID. Bare LF line endings in the body become CRLF;
// Size and Body (8BITMIME when the body has 8-bit bytes, 7BIT otherwise,
// whatever was declared, but for BINARYMIME) are set from the content, and
// UTF8 when an address is not ASCII.
func (q *MemoryQueue) Enqueue(env Envelope, r io.Reader) (string, error) {
	if len(env.To) == 0 {
		return "", errors.New("odmr: message has no recipients")
	}
	body, err := readCRLF(r)
	if err != nil {
		return "", err
	}
	env.Size = int64(len(body))
	// The content decides, not the declaration: intakes (go-smtp's client
	// among them) declare BODY=8BITMIME for 7-bit mail too, and a 7-bit
	// message may go to a customer without 8BITMIME.
	if env.Body != BodyBinaryMIME {
		env.Body = ""
		if has8Bit(body) {
			env.Body = Body8BitMIME
		}
	}
	if !env.UTF8 {
		env.UTF8 = !isASCII(env.From)
		for _, t := range env.To {
			env.UTF8 = env.UTF8 || !isASCII(t)
		}
	}
	if env.Received.IsZero() {
		env.Received = time.Now()
	}
	env.DSN = env.DSN.Clone()
	m := &memMessage{body: body}
	for _, t := range env.To {
		m.rcpts = append(m.rcpts, &memRcpt{addr: t, domain: domainOf(t)})
	}
	env.To = nil

	q.mu.Lock()
	defer q.mu.Unlock()
	q.init()
	q.nextID++
	m.seq = uint64(q.nextID)
	env.ID = strconv.Itoa(q.nextID)
	m.env = env
	q.messages = append(q.messages, m)
	q.byID[env.ID] = m
	for _, rc := range m.rcpts {
		q.pending[rc.domain]++
	}
	return env.ID, nil
}

func (q *MemoryQueue) init() {
	if q.pending == nil {
		q.pending = make(map[string]int)
		q.byID = make(map[string]*memMessage)
	}
}

// readCRLF reads r whole, turning bare LF into CRLF.
func readCRLF(r io.Reader) ([]byte, error) {
	var out bytes.Buffer
	buf := make([]byte, 32<<10)
	prev := byte(0)
	for {
		n, err := r.Read(buf)
		chunk := buf[:n]
		for len(chunk) > 0 {
			i := bytes.IndexByte(chunk, '\n')
			if i < 0 {
				out.Write(chunk)
				prev = chunk[len(chunk)-1]
				break
			}
			out.Write(chunk[:i])
			if (i > 0 && chunk[i-1] != '\r') || (i == 0 && prev != '\r') {
				out.WriteByte('\r')
			}
			out.WriteByte('\n')
			prev = '\n'
			chunk = chunk[i+1:]
		}
		if err == io.EOF {
			return out.Bytes(), nil
		} else if err != nil {
			return nil, err
		}
	}
}

func has8Bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// HasMail reports whether any recipient in domains is still queued. It
// consults a per-domain count and costs the same whatever the queue size.
func (q *MemoryQueue) HasMail(ctx context.Context, domains []string) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, d := range domains {
		if q.pending[d] > 0 {
			return true, nil
		}
	}
	return false, nil
}

// Claim returns a batch over the messages queued for domains.
func (q *MemoryQueue) Claim(ctx context.Context, domains []string) (Batch, error) {
	return &memBatch{q: q, domains: slices.Clone(domains)}, nil
}

// Len returns the number of messages with recipients still queued.
func (q *MemoryQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.messages)
}

// Queued returns the number of recipients in domain still queued.
func (q *MemoryQueue) Queued(domain string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pending[domain]
}

// Messages returns the envelopes of the messages still queued, with To
// holding the recipients not yet done.
func (q *MemoryQueue) Messages() []Envelope {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]Envelope, 0, len(q.messages))
	for _, m := range q.messages {
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
func (q *MemoryQueue) LastError(id, rcpt string) (attempts int, err error) {
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
func (q *MemoryQueue) Failed() []RecipientResult {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.failed)
}

func bySeq(m *memMessage, seq uint64) int { return cmp.Compare(m.seq, seq) }

type memBatch struct {
	q       *MemoryQueue
	domains []string
	cursor  uint64 // messages up to this seq have been looked at
	closed  bool
}

func (b *memBatch) Next(ctx context.Context) (Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q := b.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if b.closed {
		return nil, errors.New("odmr: batch closed")
	}
	// The batch moves forward through the queue in arrival order, so each
	// message is looked at once and returned at most once.
	start, _ := slices.BinarySearchFunc(q.messages, b.cursor+1, bySeq)
	for _, m := range q.messages[start:] {
		b.cursor = m.seq
		var mine []*memRcpt
		for _, r := range m.rcpts {
			if r.leasedBy == nil && slices.Contains(b.domains, r.domain) {
				mine = append(mine, r)
			}
		}
		if len(mine) == 0 {
			continue
		}
		env := m.env
		env.To = make([]string, len(mine))
		for i, r := range mine {
			r.leasedBy = b
			env.To[i] = r.addr
		}
		env.DSN = m.env.DSN.only(env.To)
		return &memLease{b: b, m: m, rcpts: mine, env: env}, nil
	}
	return nil, io.EOF
}

func (b *memBatch) Close() error {
	q := b.q
	q.mu.Lock()
	defer q.mu.Unlock()
	b.closed = true
	for _, m := range q.messages {
		for _, r := range m.rcpts {
			if r.leasedBy == b {
				r.leasedBy = nil
			}
		}
	}
	return nil
}

type memLease struct {
	b     *memBatch
	m     *memMessage
	rcpts []*memRcpt
	env   Envelope
	done  bool
}

func (l *memLease) Envelope() Envelope {
	env := l.env
	env.To = slices.Clone(env.To)
	env.DSN = env.DSN.Clone()
	return env
}

func (l *memLease) Open() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.m.body)), nil
}

func (l *memLease) Complete(ctx context.Context, results []RecipientResult) error {
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
	var failed []RecipientResult
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
			q.done(r.domain)
		case Permanent(err):
			q.done(r.domain)
			failed = append(failed, RecipientResult{Recipient: r.addr, Err: err})
		default:
			r.attempts++
			r.lastErr = err
			keep = append(keep, r)
		}
	}
	l.m.rcpts = keep
	if len(keep) == 0 {
		if i, ok := slices.BinarySearchFunc(q.messages, l.m.seq, bySeq); ok {
			q.messages = slices.Delete(q.messages, i, i+1)
		}
		delete(q.byID, l.m.env.ID)
	}
	q.failed = append(q.failed, failed...)
	hook := q.OnFailure
	env := l.m.env
	q.mu.Unlock()
	if hook != nil && len(failed) > 0 {
		hook(env, failed)
	}
	return nil
}

// done counts one recipient of domain off; q.mu must be held.
func (q *MemoryQueue) done(domain string) {
	if q.pending[domain]--; q.pending[domain] <= 0 {
		delete(q.pending, domain)
	}
}

var _ QueueSource = (*MemoryQueue)(nil)
