//go:build unix

package spool

import "syscall"

// Flags that keep an open from waiting on, or following, what someone put
// in the spool's place.
const (
	oNonblock  = syscall.O_NONBLOCK
	oNofollow  = syscall.O_NOFOLLOW
	oDirectory = syscall.O_DIRECTORY
)
