package odmr

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

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
