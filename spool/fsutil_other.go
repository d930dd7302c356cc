//go:build !unix

package spool

// The spool needs flock and does not open on these platforms (see
// lock_other.go); these flags only let it compile.
const (
	oNonblock  = 0
	oNofollow  = 0
	oDirectory = 0
)
