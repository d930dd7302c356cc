// Package nospace tells a full disk or quota from other errors, and
// holds the reply every part of the module gives for one: RFC 5321's 452
// (insufficient system storage) with RFC 3463's 4.3.1 (mail system full),
// which makes the sender try again later, as after a 451.
package nospace

import (
	"errors"
	"syscall"
)

// The reply to a message that could not be stored for lack of space.
const (
	Code    = 452
	Message = "Insufficient system storage, try again later"
)

// Enhanced is the reply's enhanced status code.
var Enhanced = [3]int{4, 3, 1}

// Is reports whether err says that a disk (ENOSPC) or a disk quota
// (EDQUOT) is full.
func Is(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
