package odmr

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of the abuse limits of a [Provider].
const (
	DefaultMaxSessions         = 1000
	DefaultMaxSessionsPerAddr  = 20
	DefaultSessionTimeout      = 15 * time.Minute
	DefaultAuthFailuresAllowed = 5
	DefaultAuthBackoff         = time.Second
	DefaultMaxAuthBackoff      = 5 * time.Minute
	DefaultATRNInterval        = time.Second
	DefaultATRNBurst           = 30
)

// failureLimiter slows down guessing: after `free` failures for a key (an
// identity or a remote address) each further failure closes the key for a
// period that doubles, up to a maximum. A success clears the key.
type failureLimiter struct {
	free     int
	base     time.Duration
	max      time.Duration
	mu       sync.Mutex
	keys     map[string]*failureState
	lastScan time.Time
}

type failureState struct {
	failures int
	until    time.Time // no attempts before this
	last     time.Time
}

func newFailureLimiter(free int, base, max time.Duration) *failureLimiter {
	return &failureLimiter{free: free, base: base, max: max, keys: make(map[string]*failureState)}
}

// blocked reports how long key must still wait, or 0.
func (l *failureLimiter) blocked(key string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.keys[key]; st != nil && now.Before(st.until) {
		return st.until.Sub(now)
	}
	return 0
}

func (l *failureLimiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	st := l.keys[key]
	if st == nil {
		st = &failureState{}
		l.keys[key] = st
	}
	st.failures++
	st.last = now
	if over := st.failures - l.free; over > 0 {
		d := l.base
		for i := 1; i < over && d < l.max; i++ {
			d *= 2
		}
		st.until = now.Add(min(d, l.max))
	}
}

func (l *failureLimiter) succeed(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.keys, key)
}

// sweep forgets keys quiet for longer than the maximum backoff, at most
// once a minute; l.mu must be held.
func (l *failureLimiter) sweep(now time.Time) {
	if now.Sub(l.lastScan) < time.Minute {
		return
	}
	l.lastScan = now
	for k, st := range l.keys {
		if now.Sub(st.last) > l.max && now.After(st.until) {
			delete(l.keys, k)
		}
	}
}

// atrnLimiter is a token bucket per identity.
type atrnLimiter struct {
	every time.Duration
	burst int
	mu    sync.Mutex
	m     map[string]*rate.Limiter
}

func (l *atrnLimiter) allow(identity string, now time.Time) bool {
	if l.every < 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[string]*rate.Limiter)
	}
	if len(l.m) > 10000 {
		// Forget full buckets: they would allow the burst anyway.
		for k, lim := range l.m {
			if lim.TokensAt(now) >= float64(l.burst) {
				delete(l.m, k)
			}
		}
	}
	lim := l.m[identity]
	if lim == nil {
		lim = rate.NewLimiter(rate.Every(l.every), l.burst)
		l.m[identity] = lim
	}
	return lim.AllowN(now, 1)
}

// remoteHost is the key for per-address limits: the IP without the port.
func remoteHost(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	s := addr.String()
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	return s
}
