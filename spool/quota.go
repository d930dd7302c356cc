package spool

import (
	"github.com/go-odmr/odmr"
)

// Quotas.
//
// The message count is checked before the body is read, the byte count as
// soon as the body outgrows what is left, and both are held, while the
// message is being received, as a reservation, so concurrent Enqueue calls
// of one process cannot together exceed a limit. Messages queued by other
// processes sharing the spool count from the next refresh of the index
// (see MaintenanceInterval): across processes a quota is a bound that can
// be overshot by what they queue in between, never a reason to drop mail
// that was accepted.

// errQuota returns the reply for a domain that is over its quota.
func errQuota(domain string) *odmr.Error {
	return &odmr.Error{Code: 452, EnhancedCode: odmr.EnhancedCode{4, 2, 2},
		Message: "Too much mail queued for " + domain + ", try again later"}
}

// reservation is the quota held by one Enqueue in progress.
type reservation struct {
	limits  map[string]limit // per domain directory
	counted bool             // a message was reserved in each directory
	bytes   int64
}

type limit struct {
	domain      string
	maxBytes    int64
	maxMessages int
}

// reserve checks the message count of every domain of a new message and
// reserves one message in each. dirs maps domain directories to domains.
func (s *Spool) reserve(dirs map[string]string) (*reservation, error) {
	r := &reservation{limits: make(map[string]limit)}
	if s.opts.Quota == nil {
		return r, nil
	}
	for dir, d := range dirs {
		maxBytes, maxMessages := s.opts.Quota(d)
		if maxBytes > 0 || maxMessages > 0 {
			r.limits[dir] = limit{d, maxBytes, maxMessages}
		}
	}
	if len(r.limits) == 0 {
		return r, nil
	}
	ix := &s.idx
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for dir, l := range r.limits {
		if l.maxMessages > 0 && ix.used(dir).messages+1 > l.maxMessages {
			return nil, errQuota(l.domain)
		}
	}
	for dir := range r.limits {
		ix.pendingOf(dir).messages++
	}
	r.counted = true
	return r, nil
}

// bytesLeft returns how many bytes the message may still have, or -1 for
// no limit, and the domain that sets the limit.
func (s *Spool) bytesLeft(r *reservation) (int64, string) {
	left, domain := int64(-1), ""
	ix := &s.idx
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for dir, l := range r.limits {
		if l.maxBytes <= 0 {
			continue
		}
		n := max(l.maxBytes-ix.used(dir).bytes, 0)
		if left < 0 || n < left {
			left, domain = n, l.domain
		}
	}
	return left, domain
}

// reserveBytes checks the byte count of every domain for a message of size
// bytes, and reserves them.
func (s *Spool) reserveBytes(r *reservation, size int64) error {
	if len(r.limits) == 0 {
		return nil
	}
	ix := &s.idx
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for dir, l := range r.limits {
		if l.maxBytes > 0 && ix.used(dir).bytes+size > l.maxBytes {
			return errQuota(l.domain)
		}
	}
	for dir := range r.limits {
		ix.pendingOf(dir).bytes += size
	}
	r.bytes = size
	return nil
}

// release gives back what r reserved.
func (s *Spool) release(r *reservation) {
	if r == nil || !r.counted && r.bytes == 0 {
		return
	}
	ix := &s.idx
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for dir := range r.limits {
		p := ix.pendingOf(dir)
		if r.counted {
			p.messages--
		}
		p.bytes -= r.bytes
		if p.messages == 0 && p.bytes == 0 {
			delete(ix.pending, dir)
		}
	}
	r.counted, r.bytes = false, 0
}

// CheckQuota returns the 452 error Enqueue would return for a message to
// rcpt because its domain already has as many messages or bytes queued as
// its quota allows, or nil. An SMTP server calls it at RCPT TO, so that one
// full domain does not make it refuse a whole message; the byte count of
// the message itself can only be checked by Enqueue.
func (s *Spool) CheckQuota(rcpt string) error {
	if s.opts.Quota == nil {
		return nil
	}
	d := odmr.RecipientDomain(rcpt)
	maxBytes, maxMessages := s.opts.Quota(d)
	ix := &s.idx
	ix.mu.Lock()
	defer ix.mu.Unlock()
	u := ix.used(dirName(d))
	if maxMessages > 0 && u.messages >= maxMessages || maxBytes > 0 && u.bytes >= maxBytes {
		return errQuota(d)
	}
	return nil
}

// used returns what is queued and reserved in dir; ix.mu must be held.
func (ix *index) used(dir string) usage {
	var u usage
	if q := ix.usage[dir]; q != nil {
		u = *q
	}
	if p := ix.pending[dir]; p != nil {
		u.add(p.messages, p.bytes)
	}
	return u
}

func (ix *index) pendingOf(dir string) *usage {
	p := ix.pending[dir]
	if p == nil {
		p = new(usage)
		ix.pending[dir] = p
	}
	return p
}
