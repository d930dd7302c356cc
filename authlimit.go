package odmr

import (
	"hash/maphash"
	"strconv"
	"sync"
	"time"
)

// authLimiter slows down password guessing in two ways, after Dovecot's
// auth penalty and Postfix's anvil.
//
// Sources (the session's network: by default an IPv4 address or an IPv6
// /64, as Provider.IPv4Prefix and IPv6Prefix set) are penalised: after `free`
// failures each further failure closes the source for a period that
// doubles from base up to max. A success as an identity forgives only the
// source's failures at that same identity, or an attacker could
// interleave logins to an account of its own; the count is forgotten once
// the source has been quiet for max.
//
// Identities are slowed, never locked: each one has a bucket of `burst`
// guesses that refills at one per `every`. An attempt on an identity takes
// a guess from its bucket before the secret is looked at, and a success
// gives it back; with the bucket empty the attempt is refused whatever the
// secret, so the refusal tells nothing. Sources that have authenticated as
// the identity before, and have no failures at other identities, skip the
// bucket (the source penalty still applies), so the real customer gets in
// from its usual address while others guess, typos and all.
//
// The tables are capped, and keyed by a hash of the name or network, so
// what an attacker sends does not change what they cost.
type authLimiter struct {
	free     int
	base     time.Duration
	max      time.Duration
	every    time.Duration // < 0: no identity buckets
	burst    int
	capacity int
	seed     maphash.Seed

	mu       sync.Mutex
	sources  map[uint64]*sourceState
	idents   map[uint64]*identState
	lastScan time.Time
}

type sourceState struct {
	failures int
	until    time.Time // no attempts before this
	last     time.Time
	// byIdent attributes failures to the identities they were at, so that
	// a customer's own typos are forgiven when it gets in, and nothing
	// else is.
	byIdent [knownSources]identFailures
}

type identFailures struct {
	ident uint64
	n     int
}

// knownSources is how many sources an identity remembers.
const knownSources = 4

type identState struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
	known  [knownSources]uint64
	next   int // the slot of known to fill next
}

func newAuthLimiter(free int, base, max, every time.Duration, burst, capacity int) *authLimiter {
	return &authLimiter{
		free: free, base: base, max: max, every: every, burst: burst, capacity: capacity,
		seed:    maphash.MakeSeed(),
		sources: make(map[uint64]*sourceState),
		idents:  make(map[uint64]*identState),
	}
}

func (l *authLimiter) hash(kind byte, s string) uint64 {
	var h maphash.Hash
	h.SetSeed(l.seed)
	h.WriteByte(kind)
	h.WriteString(s)
	return h.Sum64()
}

// blocked reports how long source must still wait, or 0.
func (l *authLimiter) blocked(source string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.sources[l.hash('s', source)]; st != nil && now.Before(st.until) {
		return st.until.Sub(now)
	}
	return 0
}

// authTicket records what admit took, for succeed to give back.
type authTicket struct{ took bool }

// admit decides, before the secret is checked, whether source may try a
// secret for user. It must not depend on the secret.
func (l *authLimiter) admit(source, user string, now time.Time) (authTicket, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	hs := l.hash('s', source)
	st := l.sources[hs]
	if st != nil && now.Before(st.until) {
		return authTicket{}, false
	}
	if l.every < 0 {
		return authTicket{}, true
	}
	hi := l.hash('u', user)
	id := l.idents[hi]
	if id != nil && st.failuresElsewhere(hi) == 0 && id.knows(hs) {
		return authTicket{}, true
	}
	if id == nil {
		id = &identState{tokens: float64(l.burst), at: now}
		l.insertIdent(hi, id, now)
	}
	id.refill(now, l.every, l.burst)
	if id.tokens < 1 {
		return authTicket{}, false
	}
	id.tokens--
	return authTicket{took: true}, true
}

// failuresElsewhere counts the source's failures at identities other than
// ident's, and at none.
func (st *sourceState) failuresElsewhere(ident uint64) int {
	if st == nil {
		return 0
	}
	n := st.failures
	for _, f := range st.byIdent {
		if f.ident == ident {
			n -= f.n
		}
	}
	return n
}

func (id *identState) knows(h uint64) bool {
	for _, k := range id.known {
		if k == h {
			return true
		}
	}
	return false
}

func (id *identState) refill(now time.Time, every time.Duration, burst int) {
	if d := now.Sub(id.at); d > 0 {
		id.tokens = min(float64(burst), id.tokens+float64(d)/float64(every))
		id.at = now
	}
}

// succeed records a login of user from source: the source's failures at
// user are forgiven, the guess admit took is given back and the source
// becomes one the identity knows.
func (l *authLimiter) succeed(source, user string, t authTicket, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	hs, hi := l.hash('s', source), l.hash('u', user)
	if st := l.sources[hs]; st != nil {
		for i, f := range st.byIdent {
			if f.ident == hi && f.n > 0 {
				st.failures -= f.n
				st.byIdent[i] = identFailures{}
			}
		}
	}
	if l.every < 0 {
		return
	}
	id := l.idents[hi]
	if id == nil {
		id = &identState{tokens: float64(l.burst), at: now}
		l.insertIdent(hi, id, now)
	}
	id.refill(now, l.every, l.burst)
	if t.took {
		id.tokens = min(float64(l.burst), id.tokens+1)
	}
	if !id.knows(hs) {
		id.known[id.next] = hs
		id.next = (id.next + 1) % knownSources
	}
}

// fail records a failed or abandoned attempt from source at user ("" if
// none was named). The identity's guess was taken by admit.
func (l *authLimiter) fail(source, user string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	hs := l.hash('s', source)
	st := l.sources[hs]
	if st == nil {
		st = &sourceState{}
		if len(l.sources) >= l.capacity {
			evict(l.sources, func(st *sourceState) time.Time { return st.last })
		}
		l.sources[hs] = st
	}
	st.failures++
	st.last = now
	if user != "" {
		hi := l.hash('u', user)
		slot := -1
		for i, f := range st.byIdent {
			if f.ident == hi || (slot < 0 && f.n == 0) {
				slot = i
			}
			if f.ident == hi {
				break
			}
		}
		if slot >= 0 {
			st.byIdent[slot].ident = hi
			st.byIdent[slot].n++
		}
	}
	if over := st.failures - l.free; over > 0 {
		d := l.base
		for i := 1; i < over && d < l.max; i++ {
			d *= 2
		}
		st.until = now.Add(min(d, l.max))
	}
}

func (l *authLimiter) insertIdent(h uint64, id *identState, now time.Time) {
	l.sweep(now)
	if len(l.idents) >= l.capacity {
		l.evictIdent(now)
	}
	l.idents[h] = id
}

// evictIdent removes, of a few identities picked at random, the one with
// the most guesses left, the least recently used among equals. Evicting
// by age alone let an attacker reset an identity's bucket: drain it,
// leave it alone, and fill the table with new names until it is the
// oldest of a sample. An identity being guessed at has an emptier bucket
// than the names of such a flood, so it stays; one that is evicted had
// little left to give.
func (l *authLimiter) evictIdent(now time.Time) {
	const sample = 16
	var (
		victim uint64
		best   float64
		when   time.Time
		n      int
	)
	for k, id := range l.idents {
		left := id.tokens
		if d := now.Sub(id.at); d > 0 && l.every > 0 {
			left = min(float64(l.burst), left+float64(d)/float64(l.every))
		}
		if n == 0 || left > best || left == best && id.at.Before(when) {
			victim, best, when = k, left, id.at
		}
		if n++; n == sample {
			break
		}
	}
	delete(l.idents, victim)
}

// evict removes the least recently used of a few entries of m picked at
// random (Go's map order), as Redis does: O(1), and an entry in use is
// rarely the oldest of the sample.
func evict[V any](m map[uint64]V, last func(V) time.Time) {
	const sample = 16
	var (
		oldest uint64
		when   time.Time
		n      int
	)
	for k, v := range m {
		if t := last(v); n == 0 || t.Before(when) {
			oldest, when = k, t
		}
		if n++; n == sample {
			break
		}
	}
	delete(m, oldest)
}

// sweep forgets state that has gone back to what a new entry would be:
// sources quiet for max, identity buckets full with no known source. It
// runs at most once a minute; l.mu must be held.
func (l *authLimiter) sweep(now time.Time) {
	if now.Sub(l.lastScan) < time.Minute {
		return
	}
	l.lastScan = now
	for k, st := range l.sources {
		if now.Sub(st.last) > l.max && now.After(st.until) {
			delete(l.sources, k)
		}
	}
	for k, id := range l.idents {
		id.refill(now, l.every, l.burst)
		if id.tokens >= float64(l.burst) && id.known == [knownSources]uint64{} {
			delete(l.idents, k)
		}
	}
}

// size reports the entries held, for tests.
func (l *authLimiter) size() (sources, idents int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sources), len(l.idents)
}

// maxLoggedName is how much of a user name reaches the log.
const maxLoggedName = 64

// loggedName makes a user name safe to log: at most maxLoggedName bytes,
// with control characters and invalid UTF-8 escaped.
func loggedName(name string) string {
	cut := len(name) > maxLoggedName
	if cut {
		name = name[:maxLoggedName]
	}
	q := strconv.Quote(name)
	q = q[1 : len(q)-1]
	if cut {
		q += "..."
	}
	return q
}
