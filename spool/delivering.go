package spool

// fileKey names a file by its device and inode.
type fileKey struct {
	major, minor uint32
	ino          uint64
}

// leaseView tells which messages a session is delivering, without taking
// a lock: a lease is a flock(2) lock on a marker (lock.go), which this
// Spool's own table knows for its batches and, on Linux, /proc/locks for
// every process.
type leaseView struct {
	s      *Spool
	locked map[fileKey]bool
}

// leaseView reads the locks held now; queueadmin listings ask it about
// each message.
func (s *Spool) leaseView() *leaseView {
	locked, _ := lockedFiles()
	return &leaseView{s: s, locked: locked}
}

// delivering reports whether a session holds a lease on some recipients
// of env's message.
func (v *leaseView) delivering(env *envelopeFile) bool {
	dirs := env.allDirs()
	v.s.mu.Lock()
	for dir := range dirs {
		if v.s.leases[groupKey{env.ID, dir}] != nil {
			v.s.mu.Unlock()
			return true
		}
	}
	v.s.mu.Unlock()
	if len(v.locked) == 0 {
		return false
	}
	for dir := range dirs {
		if k, ok := keyOfFile(v.s.markerPath(dir, env.ID)); ok && v.locked[k] {
			return true
		}
	}
	return false
}
