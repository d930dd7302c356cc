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
	// devs and inodes are the devices and the inodes of locked.
	devs   map[[2]uint32]bool
	inodes map[uint64]bool
}

// leaseView reads the locks held now; queueadmin listings ask it about
// each message.
func (s *Spool) leaseView() *leaseView {
	locked, _ := lockedFiles()
	return newLeaseView(s, locked)
}

func newLeaseView(s *Spool, locked map[fileKey]bool) *leaseView {
	v := &leaseView{s: s, locked: locked, devs: make(map[[2]uint32]bool), inodes: make(map[uint64]bool)}
	for k := range locked {
		v.devs[[2]uint32{k.major, k.minor}] = true
		v.inodes[k.ino] = true
	}
	return v
}

// isLocked reports whether the table of locks holds the file k. Where no
// lock in it is on k's device, the inode alone decides: on a btrfs
// subvolume, and on overlayfs, stat(2) gives a device that the kernel's
// table does not use, so no lock would ever match. (Another file system's
// file with the same inode number can then mark a message wrongly; a
// listing's mark, never a lease, depends on it.)
func (v *leaseView) isLocked(k fileKey) bool {
	if v.locked[k] {
		return true
	}
	return !v.devs[[2]uint32{k.major, k.minor}] && v.inodes[k.ino]
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
		if k, ok := keyOfFile(v.s.markerPath(dir, env.ID)); ok && v.isLocked(k) {
			return true
		}
	}
	return false
}
