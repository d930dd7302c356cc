//go:build !linux

package spool

// lockedFiles cannot list the locks held by other processes on this
// platform without taking them, which would make a session pass over the
// message looked at: the listing marks only the leases of its own Spool.
func lockedFiles() (map[fileKey]bool, bool) { return nil, false }

func keyOfFile(path string) (fileKey, bool) { return fileKey{}, false }
