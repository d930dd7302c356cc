package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-odmr/odmr"
)

// Leases.
//
// A batch leases the recipients of a message in one of its domains by
// locking the message's marker in that domain's directory (see lock.go),
// then reads the envelope from disk to learn which of them are still
// queued: the marker decides who may deliver, the envelope what there is
// to deliver. A message with recipients in several domains has one marker,
// and so one lease, per domain, and is delivered to each domain's customer
// separately.
//
// The lock dies with the process that holds it. Inside a live process, a
// lease that goes LeaseTTL without being touched (Envelope, a read of the
// body, Complete) is taken back, so a session that hangs or forgets to
// close its batch does not hold mail forever. Complete after that
// re-takes the lease if no one else has it and records the results; if
// someone has, the results are dropped with an error and the recipients
// stay queued.

// batch is the odmr.Batch of a Spool.
type batch struct {
	s    *Spool
	dirs []string // domain directories, in the order asked

	mu         sync.Mutex
	queue      []string        // IDs to try, in order
	considered map[string]bool // IDs listed before, never tried again
	open       []*message      // returned and not yet completed
	closed     bool
}

// Next leases the next message with recipients in the batch's domains,
// oldest first, or returns io.EOF. Messages whose recipients in these
// domains are leased by another session are passed over. Messages older
// than MaxAge are expired on the way instead of being returned.
func (b *batch) Next(ctx context.Context) (odmr.Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if b.closed {
			return nil, errors.New("spool: batch closed")
		}
		if err := b.s.checkOpen(); err != nil {
			return nil, err
		}
		if len(b.queue) == 0 {
			if err := b.refill(); err != nil {
				return nil, err
			}
			if len(b.queue) == 0 {
				return nil, io.EOF
			}
		}
		id := b.queue[0]
		b.queue = b.queue[1:]
		m, err := b.s.lease(ctx, b, id)
		if err != nil {
			return nil, err
		}
		if m != nil {
			b.open = append(b.open, m)
			return m, nil
		}
	}
}

// refill lists the markers of the batch's domains and queues the IDs it
// has not considered yet. Listing again when the queue runs dry picks up
// what arrived during the session.
func (b *batch) refill() error {
	var ids []string
	for _, dir := range b.dirs {
		names, err := b.s.readMarkers(dir)
		if err != nil {
			continue // logged; the batch's other domains are served
		}
		for _, id := range names {
			if !b.considered[id] {
				b.considered[id] = true
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	b.queue = ids
	return nil
}

// Close releases the messages returned by Next and not completed; they stay
// queued as they were.
func (b *batch) Close() error {
	b.mu.Lock()
	open := b.open
	b.open = nil
	b.closed = true
	b.mu.Unlock()
	for _, m := range open {
		m.release(stateReleased)
	}
	return nil
}

func (b *batch) forget(m *message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.open = slices.DeleteFunc(b.open, func(x *message) bool { return x == m })
}

// heldGroup is a lease on the recipients of a message in one domain
// directory: the locked marker.
type heldGroup struct {
	dir  string
	lock *os.File
}

// lease tries to lease message id in the batch's domains. It returns nil
// when there is nothing to deliver: all leased elsewhere, already done,
// unreadable (logged) or expired (bounced here).
func (s *Spool) lease(ctx context.Context, b *batch, id string) (*message, error) {
	groups, err := s.lockGroups(id, b.dirs)
	if err != nil || len(groups) == 0 {
		return nil, err
	}
	env, groups, err := s.checkGroups(id, groups)
	if err != nil || len(groups) == 0 {
		return nil, err
	}
	if err := s.checkBody(env); err != nil {
		if s.stillQueued(id) {
			s.quarantine(env, err)
		}
		unlockGroups(groups)
		return nil, nil
	}
	if time.Since(env.Received) >= s.opts.MaxAge {
		err := s.settle(ctx, id, groups, nil, nil, settleExpire)
		unlockGroups(groups)
		if err != nil {
			s.log.Error("spool: cannot expire message", "id", id, "err", err)
		}
		return nil, nil
	}
	m := &message{s: s, b: b, id: id, groups: groups}
	dirs := make(map[string]bool, len(groups))
	for _, g := range groups {
		dirs[g.dir] = true
	}
	var to []string
	for _, r := range env.Recipients {
		if r.State == Queued && dirs[dirName(odmr.RecipientDomain(r.Addr))] {
			to = append(to, r.Addr)
		}
	}
	m.env = env.envelope(to)
	m.touch()
	m.mu.Lock()
	m.timer = time.AfterFunc(s.opts.LeaseTTL, m.checkIdle)
	m.mu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		m.timer.Stop()
		unlockGroups(groups)
		return nil, errClosed
	}
	for _, g := range groups {
		s.leases[groupKey{id, g.dir}] = m
	}
	s.mu.Unlock()
	return m, nil
}

// lockGroups locks the markers of id in those of dirs where it has one and
// no one else holds it.
func (s *Spool) lockGroups(id string, dirs []string) ([]heldGroup, error) {
	var groups []heldGroup
	for _, dir := range dirs {
		s.mu.Lock()
		mine := s.leases[groupKey{id, dir}] != nil
		s.mu.Unlock()
		if mine {
			continue // leased by another batch of this Spool
		}
		f, _, err := lockPath(s.markerPath(dir, id))
		if err != nil {
			// A marker that is not a regular file, a domain directory
			// that cannot be read: the recipients there stay queued and
			// the others are served.
			s.logOnce("marker:"+dir+"/"+id, "spool: skipping a marker that cannot be locked; it is left in place", "dir", dir, "id", id, "err", err)
			continue
		}
		if f != nil {
			groups = append(groups, heldGroup{dir, f})
		}
	}
	return groups, nil
}

// checkGroups reads the envelope of a message whose groups are locked, and
// keeps the groups that have recipients queued. It removes the markers of
// the others, which are stale, and unlocks them.
func (s *Spool) checkGroups(id string, groups []heldGroup) (*envelopeFile, []heldGroup, error) {
	env, err := readEnvelope(s.envPath(id), id)
	if err != nil {
		if !isNotExist(err) {
			s.logUnreadable(id, err)
			unlockGroups(groups)
			return nil, nil, nil
		}
		env = nil
	}
	keep := groups[:0]
	var stale []string
	for _, g := range groups {
		if env != nil && env.queuedIn(g.dir) {
			keep = append(keep, g)
			continue
		}
		removeIfExists(s.markerPath(g.dir, id))
		g.lock.Close()
		stale = append(stale, g.dir)
	}
	if len(stale) > 0 {
		s.idx.remove(id, stale...)
	}
	return env, keep, nil
}

func unlockGroups(groups []heldGroup) {
	for _, g := range groups {
		g.lock.Close()
	}
}

// Lease states of a message.
const (
	stateLeased    = iota
	stateCompleted // Complete ran
	stateReleased  // the batch or the Spool was closed
	stateIdle      // LeaseTTL passed without activity
)

// message is a leased message, the odmr.Message of a Spool.
type message struct {
	s   *Spool
	b   *batch
	id  string
	env odmr.Envelope // To: the leased recipients

	last atomic.Int64 // UnixNano of the last activity
	// quarantined is set when Open found the body damaged and moved the
	// message aside: Complete has nothing left to record.
	quarantined atomic.Bool

	mu     sync.Mutex
	state  int
	groups []heldGroup
	timer  *time.Timer
}

func (m *message) touch() { m.last.Store(time.Now().UnixNano()) }

// Envelope returns the envelope, with To holding the leased recipients.
func (m *message) Envelope() odmr.Envelope {
	m.touch()
	env := m.env
	env.To = slices.Clone(env.To)
	return env
}

// Open returns the body, streamed from its file. Reading it keeps the
// lease alive. A body that is missing, not a regular file, or whose size
// differs from the one recorded at Enqueue is refused with an error, and
// the message is quarantined; Complete then records nothing.
func (m *message) Open() (io.ReadCloser, error) {
	m.touch()
	var damage error
	f, err := openRegular(m.s.bodyPath(m.id))
	if isNotExist(err) || errors.Is(err, errNotRegular) {
		damage = err
	} else if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	} else if fi, err := f.Stat(); err != nil {
		f.Close()
		return nil, fmt.Errorf("spool: %w", err)
	} else if fi.Size() != m.env.Size {
		// A body whose size is not the one recorded when it was
		// committed has been damaged since; better not to deliver it.
		f.Close()
		damage = fmt.Errorf("body has %d bytes, its envelope says %d", fi.Size(), m.env.Size)
	}
	if damage == nil {
		return &bodyReader{f: f, m: m}, nil
	}
	err = fmt.Errorf("spool: damaged body of message %s: %w", m.id, damage)
	m.s.log.Error("spool: damaged message body", "id", m.id, "err", err)
	if env, rerr := readEnvelope(m.s.envPath(m.id), m.id); rerr == nil {
		m.s.quarantine(env, damage)
		m.quarantined.Store(true)
	}
	return nil, err
}

type bodyReader struct {
	f *os.File
	m *message
}

func (r *bodyReader) Read(p []byte) (int, error) {
	r.m.touch()
	return r.f.Read(p)
}

func (r *bodyReader) Close() error { return r.f.Close() }

// Complete records the results and ends the lease: delivered recipients
// are done, permanent failures are done and reported to the sender in a
// DSN, and the others stay queued with their attempt counted and the error
// recorded. A recipient without a result counts as a temporary failure.
// The message is removed when no recipient is left. The results are
// recorded even if ctx is canceled: the deliveries they report happened.
func (m *message) Complete(ctx context.Context, results []odmr.RecipientResult) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch m.state {
	case stateCompleted:
		return fmt.Errorf("spool: message %s already completed", m.id)
	case stateReleased:
		return fmt.Errorf("spool: message %s was released before Complete; results not recorded", m.id)
	case stateIdle:
		if m.quarantined.Load() {
			m.state = stateCompleted
			return nil
		}
		if err := m.retake(); err != nil {
			m.state = stateCompleted
			return err
		}
	}
	m.timer.Stop()
	defer m.unlock(stateCompleted)
	if m.quarantined.Load() {
		return nil
	}
	return m.s.settle(context.WithoutCancel(ctx), m.id, m.groups, m.env.To, results, settleResults)
}

// retake locks again the groups of a lease taken back for idleness.
func (m *message) retake() error {
	dirs := make([]string, len(m.groups))
	for i, g := range m.groups {
		dirs[i] = g.dir
	}
	groups, err := m.s.lockGroups(m.id, dirs)
	if err == nil && len(groups) < len(dirs) {
		unlockGroups(groups)
		err = fmt.Errorf("spool: lease on message %s expired after %v idle and was taken by another session; results not recorded", m.id, m.s.opts.LeaseTTL)
	}
	if err != nil {
		return err
	}
	m.groups = groups
	m.s.mu.Lock()
	for _, g := range groups {
		m.s.leases[groupKey{m.id, g.dir}] = m
	}
	m.s.mu.Unlock()
	return nil
}

// checkIdle runs LeaseTTL after the last check and takes the lease back if
// it has not been touched since.
func (m *message) checkIdle() {
	ttl := m.s.opts.LeaseTTL
	idle := time.Since(time.Unix(0, m.last.Load()))
	if idle < ttl {
		m.mu.Lock()
		if m.state == stateLeased {
			m.timer.Reset(ttl - idle)
		}
		m.mu.Unlock()
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != stateLeased {
		return
	}
	m.s.log.Warn("spool: lease idle too long, released", "id", m.id, "ttl", ttl)
	m.unlock(stateIdle)
}

// release ends the lease without recording anything.
func (m *message) release(state int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == stateLeased {
		m.timer.Stop()
		m.unlock(state)
	} else if m.state == stateIdle {
		m.state = state
	}
}

// unlock drops the locks and the Spool's record of them; m.mu is held.
func (m *message) unlock(state int) {
	m.state = state
	m.s.mu.Lock()
	for _, g := range m.groups {
		if m.s.leases[groupKey{m.id, g.dir}] == m {
			delete(m.s.leases, groupKey{m.id, g.dir})
		}
	}
	m.s.mu.Unlock()
	unlockGroups(m.groups)
	if state != stateIdle {
		m.b.forget(m)
	}
}
