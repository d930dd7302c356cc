package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// WaitIndexed waits until the start-up work Open leaves to the background
// is done: every envelope read, missing markers restored, damaged
// messages quarantined, bodies without an envelope removed, and the
// in-memory index complete. Open returns before, so that a provider
// answers ATRN and delivers at once whatever the size of the queue:
// HasMail and Claim read the markers on disk and need none of it, the
// quotas read the domain's directory until the index is complete, and
// QueueStats, List and Expire wait for it. A program that must see the
// spool repaired before it goes on (a test, a tool) calls WaitIndexed.
// It returns an error if the index could not be built (see the log) or
// the Spool was closed first.
func (s *Spool) WaitIndexed(ctx context.Context) error {
	return s.idx.wait(ctx)
}

// Indexed reports, without waiting, whether the index Open builds is
// complete (see [Spool.WaitIndexed]): false while it is being built, which
// takes minutes for a million messages queued, and if building it failed.
// A metrics exporter asks it before [Spool.QueueStats], which would wait.
func (s *Spool) Indexed() bool {
	return s.idx.isReady()
}

// build builds the index from the envelopes in queue/, which d lists,
// repairing what a crash left on the way, then compares it with every
// marker, once, removing the markers left without an envelope, and marks
// it ready. The changes this process makes meanwhile are noted and
// replayed over what the scan found.
func (s *Spool) build(d *os.File) {
	ix := &s.idx
	var noted []change
	ix.mu.Lock()
	ix.all = &noted
	ix.mu.Unlock()
	dirs, err := s.scanQueue(d)
	if buildHook != nil {
		buildHook()
	}
	ix.mu.Lock()
	ix.all = nil
	if err == nil {
		for _, c := range noted {
			apply(dirs, c)
		}
		ix.dirs = dirs
	}
	ix.mu.Unlock()
	if err == nil {
		err = s.reconcileAll()
	}
	if err == nil && s.ctx.Err() != nil {
		err = errClosed
	}
	ix.readyErr = err
	close(ix.ready)
	if err != nil && !errors.Is(err, errClosed) {
		s.log.Error("spool: cannot build the index; QueueStats, List and Expire fail and quotas are read from disk until the spool is opened again", "err", err)
	}
}

// buildHook, when set by a test, runs between the scan and the replay of
// the changes made meanwhile.
var buildHook func()

// scanBatch is how many names of queue/ the scan reads at a time: the
// listing of a large queue is never held whole in memory.
const scanBatch = 1024

// scanWorkers is how many envelopes the scan reads at once. Reading them
// is mostly waiting for the disk, which serves several reads at a time
// better than one after the other.
const scanWorkers = 8

// scan is what scanQueue found so far.
type scan struct {
	mu   sync.Mutex
	dirs map[string]*domainIndex
}

// scanQueue reads every envelope that d, the open queue/ directory, lists,
// restores missing markers, quarantines damaged messages and removes
// bodies left without an envelope, and returns the index of what is
// queued. A message whose envelope cannot be read is found later by its
// markers.
func (s *Spool) scanQueue(d *os.File) (map[string]*domainIndex, error) {
	defer d.Close()
	sc := &scan{dirs: make(map[string]*domainIndex)}
	names := make(chan string, scanBatch)
	var wg sync.WaitGroup
	for range scanWorkers {
		wg.Go(func() {
			for n := range names {
				s.scanFile(n, sc)
			}
		})
	}
	err := s.listQueue(d, names)
	close(names)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	return sc.dirs, nil
}

// listQueue sends the names d lists to names, a batch at a time.
func (s *Spool) listQueue(d *os.File, names chan<- string) error {
	for {
		if s.ctx.Err() != nil {
			return errClosed
		}
		batch, err := d.Readdirnames(scanBatch)
		for _, n := range batch {
			names <- n
		}
		if err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("spool: %w", err)
		}
	}
}

// scanFile looks at file n of queue/.
func (s *Spool) scanFile(n string, sc *scan) {
	id, ext, _ := strings.Cut(n, ".")
	if !isID(id) {
		return
	}
	switch ext {
	case "json":
		s.scanEnvelope(id, sc)
	case "eml":
		if !s.readOnly {
			if _, err := os.Lstat(s.envPath(id)); isNotExist(err) {
				s.removeOrphanBody(id)
			}
		}
	}
}

// scanEnvelope reads the envelope of message id into sc, repairing on the
// way.
func (s *Spool) scanEnvelope(id string, sc *scan) {
	env, err := readEnvelope(s.envPath(id), id)
	if isNotExist(err) {
		return // completed meanwhile by another process
	} else if err != nil {
		s.logUnreadable(id, err)
		return
	}
	if err := s.checkBody(env); err != nil {
		if s.stillQueued(id) {
			if s.readOnly {
				sc.mu.Lock()
				s.damaged = append(s.damaged, QuarantinedMessage{ID: id, Reason: damageReason(env, err)})
				sc.mu.Unlock()
			} else {
				s.quarantine(env, err)
			}
		}
		return
	}
	queued := env.queuedDirs()
	if !s.readOnly {
		for dir := range queued {
			if err := s.restoreMarker(dir, id); err != nil {
				// One domain's directory must not keep the others'
				// mail from being served.
				s.logOnce("dir:"+dir, "spool: cannot restore a domain marker; the domain directory is damaged, its mail is not served until it is repaired", "id", id, "dir", dir, "err", err)
			}
		}
	}
	// A read-only spool counts a message whose marker is missing as Open
	// would once it restored the marker.
	k, e := keyOf(id), entry{size: env.Size, received: env.Received.UnixNano()}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if env.Held && env.queued() {
		s.held++
	}
	for dir, domain := range queued {
		put(sc.dirs, change{add: true, key: k, dir: dir, domain: domain, e: e})
	}
}

// reconcileDir compares the index of domain directory dir with its
// markers: a marker the index does not know is another process's message,
// whose envelope is read; an entry without a marker was delivered, held or
// removed by another process. A marker without an envelope is debris and
// is removed. The changes this process makes meanwhile are replayed over
// what was read.
func (s *Spool) reconcileDir(dir string) {
	ix := &s.idx
	var noted []change
	ix.mu.Lock()
	if ix.watch[dir] != nil {
		ix.mu.Unlock()
		return
	}
	ix.watch[dir] = &noted
	var known map[msgKey]bool
	if di := ix.dirs[dir]; di != nil {
		known = make(map[msgKey]bool, len(di.msgs))
		for k := range di.msgs {
			known[k] = true
		}
	}
	ix.mu.Unlock()

	var changes []change
	ids, err := s.readMarkers(dir)
	if err == nil {
		for _, id := range ids {
			k := keyOf(id)
			if known[k] {
				delete(known, k)
				continue
			}
			info := s.loadInfo(id)
			if info == nil {
				if !s.readOnly {
					s.cleanMarker(dir, id)
				}
				continue
			}
			changes = append(changes, change{add: true, key: k, dir: dir, domain: info.domains[dir], e: info.entry()})
		}
		for k := range known {
			if s.readOnly && s.queuedIn(k.id(), dir) {
				continue // its marker is missing; Open would restore it
			}
			changes = append(changes, change{key: k, dir: dir})
		}
	} else {
		// A directory that cannot be read (logged) is not served: its
		// mail is not counted until it is repaired.
		for k := range known {
			changes = append(changes, change{key: k, dir: dir})
		}
	}

	ix.mu.Lock()
	defer ix.mu.Unlock()
	delete(ix.watch, dir)
	for _, c := range changes {
		apply(ix.dirs, c)
	}
	for _, c := range noted {
		apply(ix.dirs, c)
	}
}

// queuedIn reports whether message id has recipients queued in dir, as
// its envelope says.
func (s *Spool) queuedIn(id, dir string) bool {
	env, err := readEnvelope(s.envPath(id), id)
	return err == nil && env.queuedIn(dir)
}

// reconcileSome reconciles the next n domain directories, going on
// where the last call stopped, and from the first once all were done.
func (s *Spool) reconcileSome(n int) {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	for n > 0 {
		if s.sweep == nil {
			f, err := openDir(s.path(domainsDir))
			if err != nil {
				s.log.Warn("spool: cannot list the domain directories", "err", err)
				return
			}
			s.sweep = f
		}
		names, err := s.sweep.Readdirnames(min(n, scanBatch))
		for _, name := range names {
			s.reconcileDir(name)
		}
		n -= len(names)
		if err != nil {
			s.sweep.Close()
			s.sweep = nil
			if err != io.EOF {
				s.log.Warn("spool: cannot list the domain directories", "err", err)
			}
			return
		}
	}
}

// reconcileAll reconciles every domain directory, on disk or in the
// index.
func (s *Spool) reconcileAll() error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	names, err := readNames(s.path(domainsDir))
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	seen := make(map[string]bool, len(names))
	for _, name := range names {
		if s.ctx.Err() != nil {
			return errClosed
		}
		seen[name] = true
		s.reconcileDir(name)
	}
	s.idx.mu.Lock()
	var gone []string
	for dir := range s.idx.dirs {
		if !seen[dir] {
			gone = append(gone, dir)
		}
	}
	s.idx.mu.Unlock()
	for _, dir := range gone {
		s.reconcileDir(dir)
	}
	return nil
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
