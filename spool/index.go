package spool

import (
	"cmp"
	"context"
	"encoding/hex"
	"slices"
	"sync"
	"time"
)

// The index.
//
// Which messages are queued for a domain is kept on disk, where every
// process sharing the spool sees it at once: domains/<domain>/ holds one
// empty marker file per message with recipients queued in the domain.
// HasMail looks only there, so it costs one directory read per domain
// whatever the size of the queue, and Claim lists the markers of its
// domains. Every lease is checked against the envelope on disk, so a stale
// marker costs a little time but never a wrong delivery.
//
// The in-memory index adds what the markers do not say: the size and
// arrival time of each queued message, per domain directory, which the
// quotas, QueueStats, List and Expire need. It holds 32 bytes per message
// and domain (a binary ID, a size and a time) in one map per domain,
// with the domain's totals kept as it changes, so a quota check costs a
// map lookup and a metrics scrape a pass over the domains, not over the
// messages.
//
// Open builds it in the background (see Spool.build), from the envelopes:
// the Spool serves sessions from the markers meanwhile, and what needs the
// index (a quota, QueueStats, List, Expire) waits for it. This process's
// own changes update it at once; those of other processes sharing the
// directory are picked up by reconciling domain directories with their
// markers: a bounded number per maintenance (Options.RefreshDomains), all
// of them in List.

// msgKey is a message ID in binary: its 28 hex digits in 14 bytes.
type msgKey [idLen / 2]byte

// keyOf returns the key of id, which must have the form of an ID.
func keyOf(id string) msgKey {
	var k msgKey
	hex.Decode(k[:], []byte(id))
	return k
}

func (k msgKey) id() string { return hex.EncodeToString(k[:]) }

// entry is what the index knows of a message queued in one domain
// directory.
type entry struct {
	size     int64 // -1: the envelope could not be read (see the log)
	received int64 // UnixNano
}

// domainIndex is the index of one domain directory.
type domainIndex struct {
	domain     string // "" when unknown: the directory's name says it
	msgs       map[msgKey]entry
	bytes      int64 // the sizes of the readable entries, added up
	unreadable int
	// oldest is the earliest arrival of msgs, or a bound below it when
	// stale: removing the oldest message makes it stale, and it is
	// computed again when it is needed.
	oldest int64
	stale  bool
}

type index struct {
	mu      sync.Mutex
	dirs    map[string]*domainIndex // queued, per domain directory
	pending map[string]*usage       // reserved by Enqueue calls in progress

	// ready is closed when the index is complete, with readyErr set if
	// it could not be.
	ready    chan struct{}
	readyErr error

	// While the index is built (all) or a directory reconciled with its
	// markers (watch), the changes this process makes are noted, to be
	// replayed over what was read from disk.
	all   *[]change
	watch map[string]*[]change
}

// change is one change this process made to the index.
type change struct {
	add    bool
	key    msgKey
	dir    string
	domain string
	e      entry
}

type usage struct {
	messages int
	bytes    int64
}

func (ix *index) init() {
	ix.dirs = make(map[string]*domainIndex)
	ix.pending = make(map[string]*usage)
	ix.watch = make(map[string]*[]change)
	ix.ready = make(chan struct{})
}

// wait waits until the index is complete.
func (ix *index) wait(ctx context.Context) error {
	select {
	case <-ix.ready:
		return ix.readyErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// isReady reports whether the index is complete: built, and without
// error.
func (ix *index) isReady() bool {
	select {
	case <-ix.ready:
		return ix.readyErr == nil
	default:
		return false
	}
}

// msgInfo is what the index learns of a message from its envelope.
type msgInfo struct {
	size     int64
	received time.Time
	// domains maps the directory of each recipient's domain to the domain.
	domains    map[string]string
	unreadable bool
}

func infoOf(env *envelopeFile) *msgInfo {
	info := &msgInfo{size: env.Size, received: env.Received, domains: make(map[string]string)}
	for dir, d := range env.allDirs() {
		info.domains[dir] = d
	}
	return info
}

func (info *msgInfo) entry() entry {
	if info.unreadable {
		return entry{size: -1, received: info.received.UnixNano()}
	}
	return entry{size: info.size, received: info.received.UnixNano()}
}

// add records a message queued by this process in dirs.
func (ix *index) add(id string, info *msgInfo, dirs []string) {
	k, e := keyOf(id), info.entry()
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, d := range dirs {
		c := change{add: true, key: k, dir: d, domain: info.domains[d], e: e}
		ix.note(c)
		put(ix.dirs, c)
	}
}

// remove records that the message's recipients in dirs are no longer
// queued.
func (ix *index) remove(id string, dirs ...string) {
	k := keyOf(id)
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, d := range dirs {
		c := change{key: k, dir: d}
		ix.note(c)
		del(ix.dirs, c)
	}
}

// note keeps c for a build or reconciliation in progress; ix.mu is held.
func (ix *index) note(c change) {
	if ix.all != nil {
		*ix.all = append(*ix.all, c)
	}
	if w := ix.watch[c.dir]; w != nil {
		*w = append(*w, c)
	}
}

// apply makes change c in dirs.
func apply(dirs map[string]*domainIndex, c change) {
	if c.add {
		put(dirs, c)
	} else {
		del(dirs, c)
	}
}

func put(dirs map[string]*domainIndex, c change) {
	di := dirs[c.dir]
	if di == nil {
		di = &domainIndex{msgs: make(map[msgKey]entry, 1), oldest: c.e.received}
		dirs[c.dir] = di
	}
	if c.domain != "" {
		di.domain = c.domain
	}
	if old, ok := di.msgs[c.key]; ok {
		di.count(old, -1)
	}
	di.msgs[c.key] = c.e
	di.count(c.e, +1)
	if c.e.received < di.oldest {
		di.oldest = c.e.received
	}
}

func del(dirs map[string]*domainIndex, c change) {
	di := dirs[c.dir]
	if di == nil {
		return
	}
	e, ok := di.msgs[c.key]
	if !ok {
		return
	}
	delete(di.msgs, c.key)
	di.count(e, -1)
	if len(di.msgs) == 0 {
		delete(dirs, c.dir)
	} else if e.received <= di.oldest {
		di.stale = true
	}
}

// count adds (sign +1) or takes away (-1) e's share of the totals.
func (di *domainIndex) count(e entry, sign int) {
	if e.size < 0 {
		di.unreadable += sign
	} else {
		di.bytes += int64(sign) * e.size
	}
}

// oldestTime returns the earliest arrival of the domain's messages.
func (di *domainIndex) oldestTime() int64 {
	if di.stale {
		first := true
		for _, e := range di.msgs {
			if first || e.received < di.oldest {
				di.oldest, first = e.received, false
			}
		}
		di.stale = false
	}
	return di.oldest
}

func (u *usage) add(messages int, bytes int64) {
	u.messages += messages
	u.bytes += bytes
}

// loadInfo reads what the index needs of a message from its envelope. It
// returns nil when there is no envelope.
func (s *Spool) loadInfo(id string) *msgInfo {
	env, err := readEnvelope(s.envPath(id), id)
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		s.logUnreadable(id, err)
		return &msgInfo{unreadable: true, received: idTime(id)}
	}
	return infoOf(env)
}

// DomainStats describes what is queued for one domain.
type DomainStats struct {
	// Domain is the recipients' domain, lower-case.
	Domain string
	// Messages counts the messages with recipients queued in the domain,
	// and Bytes adds up their sizes.
	Messages int
	Bytes    int64
	// Oldest is the arrival time of the oldest of them.
	Oldest time.Time
	// Unreadable counts the messages whose envelope could not be read (see
	// the log); they are counted in Messages but not in Bytes.
	Unreadable int
}

// List compares the index with every domain directory on disk and returns
// what is queued, per domain, sorted by domain: the view of an operator's
// list command. It waits for the index Open builds, and reads every
// marker.
func (s *Spool) List() ([]DomainStats, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if err := s.idx.wait(s.ctx); err != nil {
		return nil, err
	}
	if err := s.reconcileAll(); err != nil {
		return nil, err
	}
	return s.stats(), nil
}

// stats sums up the index per domain, sorted by domain. It costs a pass
// over the domains, and one over the messages of each domain whose oldest
// message left since the last call.
func (s *Spool) stats() []DomainStats {
	s.idx.mu.Lock()
	defer s.idx.mu.Unlock()
	stats := make(map[string]*DomainStats, len(s.idx.dirs))
	for dir, di := range s.idx.dirs {
		domain := di.domain
		if domain == "" {
			var ok bool
			if domain, ok = domainOfDir(dir); !ok {
				domain = dir
			}
		}
		st := stats[domain]
		if st == nil {
			st = &DomainStats{Domain: domain}
			stats[domain] = st
		}
		st.Messages += len(di.msgs)
		st.Unreadable += di.unreadable
		st.Bytes += di.bytes
		oldest := time.Unix(0, di.oldestTime())
		if st.Oldest.IsZero() || oldest.Before(st.Oldest) {
			st.Oldest = oldest
		}
	}
	out := make([]DomainStats, 0, len(stats))
	for _, st := range stats {
		out = append(out, *st)
	}
	slices.SortFunc(out, func(a, b DomainStats) int { return cmp.Compare(a.Domain, b.Domain) })
	return out
}

// olderThan returns the messages in the index that arrived before t, with
// the directories in which they are queued, oldest first. It looks at the
// messages of the domains whose oldest message arrived before t, and at
// nothing else.
func (ix *index) olderThan(t time.Time) []expiring {
	cutoff := t.UnixNano()
	ix.mu.Lock()
	defer ix.mu.Unlock()
	found := make(map[msgKey]*expiring)
	for dir, di := range ix.dirs {
		if di.oldest >= cutoff || di.oldestTime() >= cutoff {
			continue
		}
		for k, e := range di.msgs {
			if e.size < 0 || e.received >= cutoff {
				continue
			}
			x := found[k]
			if x == nil {
				x = &expiring{id: k.id(), received: time.Unix(0, e.received)}
				found[k] = x
			}
			x.dirs = append(x.dirs, dir)
		}
	}
	out := make([]expiring, 0, len(found))
	for _, x := range found {
		slices.Sort(x.dirs)
		out = append(out, *x)
	}
	slices.SortFunc(out, func(a, b expiring) int {
		return cmp.Or(a.received.Compare(b.received), cmp.Compare(a.id, b.id))
	})
	return out
}

type expiring struct {
	id       string
	received time.Time
	dirs     []string
}
