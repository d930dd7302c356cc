//go:build !unix

package spool

import (
	"errors"
	"os"
)

// tryLock is not available: the spool needs flock(2).
func tryLock(f *os.File) (bool, error) {
	return false, errors.New("spool: file locking is not supported on this platform")
}

const lockingSupported = false
