package spool

import (
	"cmp"
	"path/filepath"
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
// arrival time of each queued message, which the quota, List and Expire
// need. It is built from the envelope files at Open. This process's own
// changes update it at once; those of other processes sharing the
// directory are picked up by refresh, which List, Expire and the periodic
// maintenance run. Only the envelopes of messages new to the index are
// read, so a refresh of a large queue is mostly the listing of directories.

type index struct {
	mu      sync.Mutex
	msgs    map[string]*indexEntry
	usage   map[string]*usage // queued, per domain directory
	pending map[string]*usage // reserved by Enqueue calls in progress

	// While refresh walks the disk, the changes this process makes are
	// noted here too and replayed over what the walk found.
	walking bool
	added   map[string]*indexEntry
	removed map[string][]string
}

type indexEntry struct {
	info   *msgInfo
	queued map[string]bool // domain directories with a marker
}

// msgInfo is what the index knows of a message; it does not change.
type msgInfo struct {
	size     int64
	received time.Time
	// domains maps the directory of each recipient's domain to the domain.
	domains    map[string]string
	unreadable bool
}

type usage struct {
	messages int
	bytes    int64
}

func (ix *index) init() {
	ix.msgs = make(map[string]*indexEntry)
	ix.usage = make(map[string]*usage)
	ix.pending = make(map[string]*usage)
}

// add records a message queued by this process.
func (ix *index) add(id string, info *msgInfo, dirs []string) {
	e := &indexEntry{info: info, queued: make(map[string]bool, len(dirs))}
	for _, d := range dirs {
		e.queued[d] = true
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if old := ix.msgs[id]; old != nil {
		ix.account(old, -1)
	}
	ix.msgs[id] = e
	ix.account(e, +1)
	if ix.walking {
		ix.added[id] = e
	}
}

// remove records that the message's recipients in dirs are no longer
// queued.
func (ix *index) remove(id string, dirs ...string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.walking {
		ix.removed[id] = append(ix.removed[id], dirs...)
	}
	ix.removeLocked(ix.msgs, id, dirs, true)
}

// removeLocked takes dirs off the entry of id in msgs, and off the usage
// when live; ix.mu must be held.
func (ix *index) removeLocked(msgs map[string]*indexEntry, id string, dirs []string, live bool) {
	e := msgs[id]
	if e == nil {
		return
	}
	for _, d := range dirs {
		if e.queued[d] {
			delete(e.queued, d)
			if live {
				ix.usageOf(d).add(-1, -e.info.size)
			}
		}
	}
	if len(e.queued) == 0 {
		delete(msgs, id)
	}
}

// account adds (sign +1) or takes away (-1) e's share of the usage.
func (ix *index) account(e *indexEntry, sign int) {
	for d := range e.queued {
		ix.usageOf(d).add(sign, int64(sign)*e.info.size)
	}
}

func (ix *index) usageOf(dir string) *usage {
	u := ix.usage[dir]
	if u == nil {
		u = new(usage)
		ix.usage[dir] = u
	}
	return u
}

func (u *usage) add(messages int, bytes int64) {
	u.messages += messages
	u.bytes += bytes
}

// refresh rebuilds the index from the markers on disk. known holds the
// information read from envelopes already, by Open; for any other message
// not yet in the index, the envelope is read.
func (s *Spool) refresh(known map[string]*msgInfo) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	ix := &s.idx
	ix.mu.Lock()
	if known == nil {
		known = make(map[string]*msgInfo, len(ix.msgs))
	}
	for id, e := range ix.msgs {
		if known[id] == nil {
			known[id] = e.info
		}
	}
	ix.walking = true
	ix.added = make(map[string]*indexEntry)
	ix.removed = make(map[string][]string)
	ix.mu.Unlock()

	msgs, stale, err := s.walkMarkers(known)
	for _, k := range stale {
		if !s.readOnly {
			s.cleanMarker(k.dir, k.id)
		}
	}

	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.walking = false
	if err == nil {
		for id, e := range ix.added {
			msgs[id] = e
		}
		for id, dirs := range ix.removed {
			ix.removeLocked(msgs, id, dirs, false)
		}
		ix.msgs = msgs
		ix.usage = make(map[string]*usage)
		for _, e := range msgs {
			ix.account(e, +1)
		}
	}
	ix.added, ix.removed = nil, nil
	return err
}

// walkMarkers lists domains/ and reads the envelopes of the messages that
// known does not describe. It also returns the markers it found without an
// envelope: debris, or messages being enqueued.
func (s *Spool) walkMarkers(known map[string]*msgInfo) (map[string]*indexEntry, []groupKey, error) {
	dirs, err := readNames(s.path(domainsDir))
	if err != nil {
		return nil, nil, err
	}
	var stale []groupKey
	msgs := make(map[string]*indexEntry, len(known))
	for _, d := range dirs {
		ids, err := s.readMarkers(d)
		if err != nil {
			continue // logged; the other domains are served
		}
		for _, id := range ids {
			e := msgs[id]
			if e == nil {
				info := known[id]
				if info == nil || info.unreadable {
					info = s.loadInfo(id)
				}
				if info == nil {
					stale = append(stale, groupKey{id, d})
					continue
				}
				e = &indexEntry{info: info, queued: make(map[string]bool)}
				msgs[id] = e
			}
			e.queued[d] = true
		}
	}
	return msgs, stale, nil
}

// readMarkers lists the markers in domain directory dir. It logs, once,
// a directory that cannot be read and entries that are not regular files,
// and leaves both alone: one damaged domain must not stop the others.
func (s *Spool) readMarkers(dir string) ([]string, error) {
	ids, odd, err := readIDs(filepath.Join(s.path(domainsDir), dir))
	if err != nil {
		s.logOnce("dir:"+dir, "spool: cannot read a domain directory; its mail is not served until it is repaired", "dir", dir, "err", err)
		return nil, err
	}
	for _, id := range odd {
		s.logOnce("marker:"+dir+"/"+id, "spool: skipping a marker that is not a regular file; it is left in place", "dir", dir, "id", id)
	}
	return ids, nil
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

func infoOf(env *envelopeFile) *msgInfo {
	info := &msgInfo{size: env.Size, received: env.Received, domains: make(map[string]string)}
	for dir, d := range env.allDirs() {
		info.domains[dir] = d
	}
	return info
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

// List refreshes the index from disk and returns what is queued, per
// domain, sorted by domain: the view of an operator's list command.
func (s *Spool) List() ([]DomainStats, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if err := s.refresh(nil); err != nil {
		return nil, err
	}
	return s.stats(), nil
}

// stats sums up the index per domain, sorted by domain.
func (s *Spool) stats() []DomainStats {
	s.idx.mu.Lock()
	defer s.idx.mu.Unlock()
	stats := make(map[string]*DomainStats)
	for id, e := range s.idx.msgs {
		for dir := range e.queued {
			domain, ok := e.info.domains[dir]
			if !ok {
				if domain, ok = domainOfDir(dir); !ok {
					domain = dir
				}
			}
			st := stats[domain]
			if st == nil {
				st = &DomainStats{Domain: domain}
				stats[domain] = st
			}
			st.Messages++
			if e.info.unreadable {
				st.Unreadable++
			} else {
				st.Bytes += e.info.size
			}
			received := e.info.received
			if received.IsZero() {
				received = idTime(id)
			}
			if st.Oldest.IsZero() || received.Before(st.Oldest) {
				st.Oldest = received
			}
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
// the directories in which they are queued, oldest first.
func (ix *index) olderThan(t time.Time) []expiring {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var out []expiring
	for id, e := range ix.msgs {
		if !e.info.unreadable && e.info.received.Before(t) {
			x := expiring{id: id, received: e.info.received}
			for d := range e.queued {
				x.dirs = append(x.dirs, d)
			}
			slices.Sort(x.dirs)
			out = append(out, x)
		}
	}
	slices.SortFunc(out, func(a, b expiring) int { return a.received.Compare(b.received) })
	return out
}

type expiring struct {
	id       string
	received time.Time
	dirs     []string
}
