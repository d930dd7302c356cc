package spool

import (
	"os"

	"github.com/go-odmr/odmr"
)

// Quotas.
//
// The message count is checked before the body is read, the byte count as
// soon as the body outgrows what is left, and both are held, while the
// message is being received, as a reservation, so concurrent Enqueue calls
// of one process cannot together exceed a limit. Messages queued by other
// processes sharing the spool count once the periodic maintenance has
// compared their domain's directory with the index (see RefreshDomains):
// across processes a quota is a bound that can be overshot by what they
// queue in between, never a reason to drop mail that was accepted.
//
// Until the index Open builds in the background is complete, what is
// queued in a domain is read from its directory instead: the markers, and
// the sizes of the bodies they name (a stat each), so quotas hold from the
// start without waiting for the whole queue to be read.

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
	// queued is what was queued in each directory of limits, read from
	// disk because the index was not complete; nil when it was.
	queued map[string]usage
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
	if !s.idx.isReady() {
		r.queued = make(map[string]usage, len(r.limits))
		for dir := range r.limits {
			r.queued[dir] = s.diskUsage(dir)
		}
	}
	ix := &s.idx
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for dir, l := range r.limits {
		if l.maxMessages > 0 && ix.used(dir, r.queued).messages+1 > l.maxMessages {
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
		n := max(l.maxBytes-ix.used(dir, r.queued).bytes, 0)
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
		if l.maxBytes > 0 && ix.used(dir, r.queued).bytes+size > l.maxBytes {
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
	if maxBytes <= 0 && maxMessages <= 0 {
		return nil
	}
	dir := dirName(d)
	var queued map[string]usage
	if !s.idx.isReady() {
		queued = map[string]usage{dir: s.diskUsage(dir)}
	}
	ix := &s.idx
	ix.mu.Lock()
	defer ix.mu.Unlock()
	u := ix.used(dir, queued)
	if maxMessages > 0 && u.messages >= maxMessages || maxBytes > 0 && u.bytes >= maxBytes {
		return errQuota(d)
	}
	return nil
}

// used returns what is queued and reserved in dir: queued[dir] if queued
// is not nil, else what the index holds. ix.mu must be held.
func (ix *index) used(dir string, queued map[string]usage) usage {
	var u usage
	if queued != nil {
		u = queued[dir]
	} else if di := ix.dirs[dir]; di != nil {
		u = usage{len(di.msgs), di.bytes}
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

// diskUsage reads what is queued in domain directory dir from disk: its
// markers, and the sizes of the bodies they name, which are the sizes
// their envelopes record. It serves the quotas until the index is
// complete.
func (s *Spool) diskUsage(dir string) usage {
	var u usage
	ids, err := s.readMarkers(dir)
	if err != nil {
		return u // logged; the domain's mail is not served either
	}
	for _, id := range ids {
		if fi, err := os.Lstat(s.bodyPath(id)); err == nil {
			u.add(1, fi.Size())
		}
	}
	return u
}
