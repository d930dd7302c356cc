// Package lograte caps the log records about events anyone can cause (a
// flood of connections, of failed logins, of accept errors), so that
// they cannot fill the disk, and counts the records held back so that
// the next one written can say how many there were.
package lograte

import (
	"sync"
	"time"
)

// Limiter lets through at most N records in each second, a window that
// starts with the first record after the last one ended. It is safe for
// concurrent use.
type Limiter struct {
	// N is how many records a second are let through. 0 means 1;
	// negative means no cap.
	N int

	mu         sync.Mutex
	window     time.Time
	used       int
	suppressed int
}

// Allow reports whether a record may be written at now, and how many
// were held back since the last one let through.
func (l *Limiter) Allow(now time.Time) (ok bool, suppressed int) {
	if l.N < 0 {
		return true, 0
	}
	n := max(l.N, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.window.IsZero() || now.Sub(l.window) >= time.Second {
		l.window, l.used = now, 0
	}
	if l.used >= n {
		l.suppressed++
		return false, 0
	}
	l.used++
	s := l.suppressed
	l.suppressed = 0
	return true, s
}
