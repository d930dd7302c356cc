package odmr

import (
	"container/list"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/sockaddr"
)

var (
	errAuthTimeout = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Authentication took too long, closing connection"}
	errGaveWay     = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Too many connections; unauthenticated session closed to make room"}
)

// networkKey names the network addr belongs to for the per-network
// limits (sockaddr.Network), sized by IPv4Prefix and IPv6Prefix.
func (p *Provider) networkKey(addr net.Addr) string {
	return sockaddr.Network(addr, orDefault(p.IPv4Prefix, defaults.IPv4Prefix), orDefault(p.IPv6Prefix, defaults.IPv6Prefix))
}

// sessionTable is the provider's count of sessions: all of them, those per
// network, and the unauthenticated ones oldest first, which give way to a
// newcomer when the provider is full. Its methods need p.mu.
type sessionTable struct {
	all    map[*session]struct{}
	perNet map[string]int
	unauth list.List // of *session, by age
}

// admitLocked makes room for a new session from the network key, or says
// why it is refused. When
// MaxSessions is reached the oldest unauthenticated session gives way:
// it is returned as victim, already uncounted, for the caller to evict
// once p.mu is released. Authenticated sessions never give way, and a full
// per-network cap refuses rather than evicts, so one network cannot push
// out another's sessions by reconnecting.
func (p *Provider) admitLocked(key string) (victim *session, refusal string) {
	t := &p.table
	if limit := orDefault(p.MaxSessionsPerAddr, defaults.MaxSessionsPerAddr); limit > 0 && t.perNet[key] >= limit {
		return nil, "too many sessions from one network"
	}
	if limit := orDefault(p.MaxSessions, defaults.MaxSessions); limit > 0 && len(t.all) >= limit {
		// Sessions leave t.unauth when they are promoted, under p.mu:
		// the front one has not authenticated and, marked evicted here,
		// never will (see promote).
		e := t.unauth.Front()
		if e == nil {
			return nil, "too many sessions"
		}
		victim = e.Value.(*session)
		victim.evicted.Store(true)
		p.uncountLocked(victim)
	}
	return victim, ""
}

// countLocked counts a new, unauthenticated session.
func (p *Provider) countLocked(s *session) {
	t := &p.table
	t.all[s] = struct{}{}
	t.perNet[s.netKey]++
	s.unauthElem = t.unauth.PushBack(s)
}

// uncountLocked forgets s; it does nothing for a session already forgotten.
func (p *Provider) uncountLocked(s *session) {
	t := &p.table
	if _, ok := t.all[s]; !ok {
		return
	}
	delete(t.all, s)
	if t.perNet[s.netKey]--; t.perNet[s.netKey] <= 0 {
		delete(t.perNet, s.netKey)
	}
	if s.unauthElem != nil {
		t.unauth.Remove(s.unauthElem)
		s.unauthElem = nil
	}
}

// promote takes s out of the sessions that give way to newcomers, before
// its AUTH is answered 235. It reports false if s was chosen to give way
// first: eviction and promotion are decided under p.mu, so a session told
// 235 is never closed to make room, and one chosen to make room is never
// told 235.
func (p *Provider) promote(s *session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.evicted.Load() {
		return false
	}
	if s.unauthElem != nil {
		p.table.unauth.Remove(s.unauthElem)
		s.unauthElem = nil
	}
	return true
}

// evict ends an unauthenticated session that admitLocked chose to make
// room: its next read (or the one it is blocked in) fails, and it answers
// 421.
func (s *session) evict() {
	s.raw.SetReadDeadline(time.Unix(1, 0))
	// s.log belongs to the session's goroutine: log through the provider.
	s.p.logAnon(s.p.logger(), slog.LevelInfo, "odmr: unauthenticated session closed to make room",
		"remote", s.raw.RemoteAddr().String(), "age", time.Since(s.start).Round(time.Millisecond))
}

// authDeadline is when an unauthenticated session must have authenticated,
// or the zero time for no limit.
func (s *session) authDeadline() time.Time {
	d := orDefault(s.p.AuthTimeout, defaults.AuthTimeout)
	if d < 0 {
		return time.Time{}
	}
	return s.start.Add(d)
}

// limitTimeout answers a read timeout caused by eviction or by the
// authentication deadline; it returns nil for any other timeout.
func (s *session) limitTimeout() error {
	if s.evicted.Load() {
		s.reply(errGaveWay)
		return errors.New("odmr: unauthenticated session closed to make room for others")
	}
	if s.identity == "" {
		if end := s.authDeadline(); !end.IsZero() && !time.Now().Before(end) {
			s.reply(errAuthTimeout)
			return fmt.Errorf("odmr: not authenticated within %v", orDefault(s.p.AuthTimeout, defaults.AuthTimeout))
		}
	}
	return nil
}
