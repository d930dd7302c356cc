package odmr

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-odmr/odmr/internal/accept"
	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/lograte"
	"github.com/go-odmr/odmr/odmrtrace"
)

// ErrProviderClosed is returned by [Provider.ServeListener] and
// [Provider.ListenAndServe] after [Provider.Shutdown] or [Provider.Close].
var ErrProviderClosed = errors.New("odmr: provider closed")

// Provider is the side of ODMR that holds mail and answers ATRN (RFC 2645
// section 4). Set its fields, then call [Provider.Serve] for each
// connection the program accepts, or [Provider.ListenAndServe] to let the
// provider accept them. The fields must not change once it serves.
//
// A Provider needs an Authenticator, an Authorizer and a Queue; every
// other field has a documented zero value.
type Provider struct {
	// Hostname names the provider in its greeting, EHLO reply and CRAM-MD5
	// challenges. "" means os.Hostname(), or "localhost" if that fails.
	// A name with a space, a line break or a NUL is refused: every
	// session is then answered 421 and Serve returns an error saying why.
	Hostname string

	// Authenticator looks up credentials for AUTH.
	Authenticator Authenticator
	// Authorizer tells which domains an authenticated identity may pull.
	Authorizer DomainAuthorizer
	// Queue holds the mail.
	Queue QueueSource

	// AllowInsecureAuth offers and accepts PLAIN and LOGIN, which send the
	// secret itself, on connections without TLS. False means only CRAM-MD5
	// is usable in clear text.
	AllowInsecureAuth bool
	// DisableSCRAM turns SCRAM-SHA-256 and SCRAM-SHA-1 off. They are
	// offered by default: they never send the secret, and the provider can
	// check them against stored keys (see [SCRAMAuthenticator]).
	DisableSCRAM bool
	// DisableCRAMMD5 turns CRAM-MD5 off, as RFC 2645 section 5.1.2 allows a
	// site that uses stronger mechanisms. fetchmail needs CRAM-MD5.
	DisableCRAMMD5 bool

	// TLSConfig enables STARTTLS (RFC 3207) and [Provider.ListenAndServeTLS].
	// nil means no TLS: STARTTLS is not offered and is answered 454.
	TLSConfig *tls.Config
	// RequireTLS refuses AUTH and ATRN with 530 5.7.0 until the session
	// runs over TLS. fetchmail does not do STARTTLS: leave it off for it.
	RequireTLS bool
	// ExternalAuth, if set, offers SASL EXTERNAL under TLS to clients that
	// presented a certificate the TLS config verified, and maps the
	// connection state to an identity. nil means no EXTERNAL.
	ExternalAuth func(ctx context.Context, cs tls.ConnectionState) (identity string, err error)

	// CommandTimeout is how long the provider waits for each command before
	// the role swap. 0 means 5 minutes.
	CommandTimeout time.Duration
	// ReplyTimeout is how long the provider, once the roles are reversed,
	// waits for the customer's greeting and for each reply. 0 means 5
	// minutes.
	ReplyTimeout time.Duration
	// DataTimeout is how long it waits for the reply to the end of a
	// message. 0 means 10 minutes.
	DataTimeout time.Duration
	// WriteTimeout bounds each write to the connection. 0 means 1
	// minute.
	WriteTimeout time.Duration
	// BackendTimeout bounds each call the customer waits on to the
	// Authorizer and the Queue: Domains and HasMail at ATRN, Claim and
	// each Next while delivering. The call's context ends then, and the
	// customer gets 451 (at ATRN) or QUIT, the rest of its mail staying
	// queued, instead of waiting on a database that no longer answers.
	// Complete is not bounded: results are recorded whatever it takes.
	// 0 means 1 minute; negative means no bound. (AUTH's lookups are
	// bounded by AuthTimeout, or SessionTimeout when it is negative.)
	BackendTimeout time.Duration

	// MaxErrors is how many error replies a session may earn before it is
	// closed with 421. 0 means 10.
	MaxErrors int
	// MaxAuthFailures is how many failed AUTH commands a session may make;
	// the next failure closes it with 421. 0 means 3.
	MaxAuthFailures int
	// AuthFailuresAllowed is how many failed AUTH attempts one source (an
	// IPv4 address or an IPv6 /64) may make before each further failure
	// closes the source for AuthBackoff, doubling up to MaxAuthBackoff;
	// AUTH from it is answered 454 meanwhile. Wrong secrets, cancelled or
	// abandoned exchanges and attempts refused by AuthGuessInterval all
	// count once a user was named. A success forgives only the failures
	// at the same identity (the customer's own typos), not those at
	// others; the count is forgotten after MaxAuthBackoff without
	// failures. 0 means 5; negative turns the penalty off.
	AuthFailuresAllowed int
	// AuthBackoff and MaxAuthBackoff: 0 means 1 second and 5 minutes.
	AuthBackoff, MaxAuthBackoff time.Duration
	// AuthGuessInterval and AuthGuessBurst slow the guessing of one
	// identity's secret, from however many sources: each identity has a
	// bucket of AuthGuessBurst guesses that refills at one per
	// AuthGuessInterval (by default 10 a minute). Each attempt takes a
	// guess before the secret is checked and a success gives it back; with
	// none left the attempt is answered 454 whatever the secret. Sources
	// that have logged in as the identity before (the last four), and
	// have no failures at other identities, skip the bucket: the customer
	// gets in from its usual address while others guess. 0 means 6
	// seconds and 10; a negative interval turns the buckets off.
	AuthGuessInterval time.Duration
	AuthGuessBurst    int
	// AuthLimiterEntries caps the sources, and separately the identities,
	// whose state the AUTH limits keep; the least recently used of a
	// sample go first. Keys are hashed: a long name costs no more than a
	// short one. 0 means 100000 (about 10 MB per table when full).
	AuthLimiterEntries int
	// AuthLogsPerSecond caps the log records about failed AUTH, and
	// separately those about sessions that end, are refused or are closed
	// to make room without having authenticated (a flood of connections
	// would otherwise write a record or two each); the next one written
	// says how many were suppressed. User names are cut to
	// 64 bytes and escaped. 0 means 10; negative means no cap.
	AuthLogsPerSecond int
	// SCRAMSaltKey derives the SCRAM salt of accounts stored with a shared
	// secret, and of unknown users, as HMAC-SHA-256(key, mechanism, name):
	// stable per user, so the derived keys can be cached, and alike for
	// users who do not exist. Providers that serve the same accounts (a
	// cluster) should share it, or a user's salt changes with the server.
	// nil means a random key per Provider, so salts change on restart.
	SCRAMSaltKey []byte
	// SCRAMCacheSize caps the SCRAM keys derived from shared secrets that
	// are kept, so that a login costs PBKDF2 only the first time. 0 means
	// 10000; negative means no cache.
	SCRAMCacheSize int
	// ATRNInterval and ATRNBurst limit each identity to a burst of
	// ATRNBurst commands, then one per ATRNInterval (RFC 2645 section 5.2.1
	// lets a provider refuse frequent requests with 450). 0 means 1 second
	// and 30; a negative interval turns the limit off.
	ATRNInterval time.Duration
	ATRNBurst    int

	// MaxSessions caps the sessions served at once. When it is reached,
	// the oldest session that has not authenticated is closed with 421 to
	// make room for the newcomer; if every session has authenticated, the
	// newcomer is answered 421 and closed. Authenticated sessions are
	// never closed to make room. 0 means 1000; negative means no cap.
	MaxSessions int
	// MaxSessionsPerAddr caps the sessions from one remote network, as
	// IPv4Prefix and IPv6Prefix size it (by default one IPv4 address or one
	// IPv6 /64). Further connections from it are answered 421 and closed;
	// they make no other session give way. 0 means 20; negative means no
	// cap.
	MaxSessionsPerAddr int
	// IPv4Prefix and IPv6Prefix are the prefix lengths of the networks
	// MaxSessionsPerAddr counts and the AUTH limits penalise as one
	// source; IPv4-mapped IPv6 addresses count as IPv4.
	// 0 means 32 and 64.
	IPv4Prefix, IPv6Prefix int
	// ConnLogsPerSecond caps the log records about connections refused by
	// MaxSessions or MaxSessionsPerAddr, sessions closed to make room and
	// sessions that ended without authenticating, which anyone able to
	// connect can cause; the next one written says
	// how many were suppressed. 0 means 10; negative means no cap.
	ConnLogsPerSecond int
	// AuthTimeout bounds the time from connection to a successful AUTH;
	// a session still unauthenticated then is closed with 421 4.7.0.
	// The Authenticator's lookups end at that deadline too. 0 means 1
	// minute; negative means no limit: SessionTimeout still ends the
	// session, and the lookups.
	AuthTimeout time.Duration
	// SessionTimeout bounds the time from connection to the role swap,
	// whatever the customer does. 0 means 15 minutes.
	SessionTimeout time.Duration

	// DisableChunking stops the provider from sending message bodies with
	// BDAT (RFC 3030). By default a customer that offers CHUNKING as well
	// as PIPELINING gets BDAT: no dot-stuffing, and no wait at all between
	// messages; BENCHMARKS.md measures it against DATA.
	// Customers that offer PIPELINING always get pipelined commands (RFC
	// 2920); the others get one command at a time and DATA.
	DisableChunking bool

	// Debug, if set, receives a transcript of each session before the role
	// swap in the RFC's notation ("C: ", "P: "), with AUTH exchanges
	// redacted, and the SMTP exchange after it. Writes from concurrent
	// sessions are serialized per line.
	Debug io.Writer

	// Logger receives one record per session event. Secrets and SASL
	// payloads are never logged. nil means slog.Default().
	Logger *slog.Logger

	// Trace, if set, receives the events of the sessions (started,
	// ended, AUTH, ATRN, each recipient delivered, deferred or bounced) to
	// feed a metrics system. nil means none, at no cost.
	Trace *odmrtrace.ProviderTrace

	// challenge, when set, replaces the CRAM-MD5 challenge generator so
	// tests can replay golden transcripts.
	challenge func(hostname string) []byte

	mu         sync.Mutex
	listeners  map[*net.Listener]struct{}
	sessions   map[*session]struct{} // to interrupt at Shutdown
	table      sessionTable
	authLimits *authLimiter
	authLogs   *lograte.Limiter
	anonLogs   *lograte.Limiter // records about sessions that never authenticated
	scramKeys  *scramKeys
	atrnLimits *atrnLimiter
	debugMu    sync.Mutex
	sessionsWG sync.WaitGroup
	baseCtx    context.Context
	cancel     context.CancelFunc
	shutdown   atomic.Bool
}

func (p *Provider) hostname() string     { return hostnameOr(p.Hostname) }
func (p *Provider) logger() *slog.Logger { return loggerOr(p.Logger) }

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// init sets up the provider's bookkeeping; p.mu must be held.
func (p *Provider) initLocked() {
	if p.baseCtx == nil {
		p.baseCtx, p.cancel = context.WithCancel(context.Background())
		p.listeners = make(map[*net.Listener]struct{})
		p.sessions = make(map[*session]struct{})
		p.table.all = make(map[*session]struct{})
		p.table.perNet = make(map[string]int)
		free := orDefault(p.AuthFailuresAllowed, defaults.AuthFailuresAllowed)
		if free < 0 {
			free = int(^uint(0) >> 1)
		}
		p.authLimits = newAuthLimiter(free, orDefault(p.AuthBackoff, defaults.AuthBackoff), orDefault(p.MaxAuthBackoff, defaults.MaxAuthBackoff),
			orDefault(p.AuthGuessInterval, defaults.AuthGuessInterval), orDefault(p.AuthGuessBurst, defaults.AuthGuessBurst),
			orDefault(p.AuthLimiterEntries, defaults.AuthLimiterEntries))
		p.authLogs = &lograte.Limiter{N: orDefault(p.AuthLogsPerSecond, defaults.AuthLogsPerSecond)}
		p.anonLogs = &lograte.Limiter{N: orDefault(p.ConnLogsPerSecond, defaults.ConnLogsPerSecond)}
		p.scramKeys = newSCRAMKeys(p.SCRAMSaltKey, orDefault(p.SCRAMCacheSize, defaults.SCRAMCacheSize))
		p.atrnLimits = &atrnLimiter{every: orDefault(p.ATRNInterval, defaults.ATRNInterval), burst: orDefault(p.ATRNBurst, defaults.ATRNBurst)}
	}
}

// Serve runs one ODMR session on conn and closes conn when it ends. It
// returns nil when the session ended normally (QUIT, or the delivery ran
// to the end) and the error that ended it otherwise. Mail that was not
// acknowledged by the customer stays queued whatever happens.
func (p *Provider) Serve(conn net.Conn) error {
	p.mu.Lock()
	p.initLocked()
	if p.shutdown.Load() {
		p.mu.Unlock()
		p.refuse(conn, "shutting down", errShuttingDown.Message)
		return ErrProviderClosed
	}
	ctx := p.baseCtx
	key := p.networkKey(conn.RemoteAddr())
	victim, refusal := p.admitLocked(key)
	if refusal != "" {
		p.mu.Unlock()
		text := "Too many connections, try again later"
		if refusal != "too many sessions" {
			text = "Too many connections from your network, try again later"
		}
		return p.refuse(conn, refusal, text)
	}
	s := newSession(p, conn)
	s.netKey = key
	p.countLocked(s)
	p.sessions[s] = struct{}{}
	p.sessionsWG.Add(1)
	p.mu.Unlock()
	if victim != nil {
		victim.evict()
	}

	defer func() {
		p.mu.Lock()
		delete(p.sessions, s)
		p.uncountLocked(s)
		p.mu.Unlock()
		p.sessionsWG.Done()
	}()
	return s.run(ctx)
}

// refuse answers a connection that will not be served with 421.
func (p *Provider) refuse(conn net.Conn, why, text string) error {
	p.observeRefused(conn)
	p.logAnon(p.logger(), slog.LevelWarn, "odmr: connection refused", "remote", conn.RemoteAddr().String(), "reason", why)
	// The whole deadline, not the write's alone: on an implicit-TLS
	// listener the write starts the handshake, which reads, and a client
	// that sends nothing would hold the refused connection for good.
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "421 4.7.0 %s\r\n", text)
	conn.Close()
	return fmt.Errorf("odmr: connection refused: %s", why)
}

// ListenAndServeTLS is ListenAndServe with implicit TLS: the TLS handshake
// comes first, with p.TLSConfig, which must be set. addr "" means ":366".
func (p *Provider) ListenAndServeTLS(addr string) error {
	if p.TLSConfig == nil {
		return errors.New("odmr: ListenAndServeTLS needs Provider.TLSConfig")
	}
	if addr == "" {
		addr = fmt.Sprintf(":%d", Port)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("odmr: %w", err)
	}
	return p.ServeListener(tls.NewListener(l, p.TLSConfig))
}

// ListenAndServe listens on the TCP address addr (":366" when empty) and
// serves each connection in its own goroutine until Shutdown or Close.
func (p *Provider) ListenAndServe(addr string) error {
	if addr == "" {
		addr = fmt.Sprintf(":%d", Port)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("odmr: %w", err)
	}
	return p.ServeListener(l)
}

// ServeListener accepts connections on l and serves each in its own
// goroutine. It returns ErrProviderClosed after Shutdown or Close, and
// closes l. Temporary accept errors (EMFILE, ENFILE, ENOBUFS, ENOMEM,
// ECONNABORTED, timeouts) do not stop it: it waits, from 5 ms doubling up
// to 1 s, and tries again, logging them at most once a second.
func (p *Provider) ServeListener(l net.Listener) error {
	l = accept.Retrying(l, p.logger())
	p.mu.Lock()
	p.initLocked()
	if p.shutdown.Load() {
		p.mu.Unlock()
		l.Close()
		return ErrProviderClosed
	}
	p.listeners[&l] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.listeners, &l)
		p.mu.Unlock()
		l.Close()
	}()

	for {
		conn, err := l.Accept()
		if err != nil {
			if p.shutdown.Load() {
				return ErrProviderClosed
			}
			return err
		}
		go p.Serve(conn)
	}
}

// Shutdown stops the provider gracefully: it closes the listeners, ends
// the sessions that have not reached the role swap with a 421 reply, and
// waits for deliveries under way to stop. A delivering session takes no
// further message from its batch: it waits for the customer's replies to
// the messages already sent (one with DATA; with pipelining, those whose
// commands went out, BDAT sending ahead as far as its window allows),
// says QUIT and ends; the rest of the batch stays queued for the next
// ATRN. If ctx ends first Shutdown returns ctx.Err(), and Close ends what
// is left, which stays queued unless the customer had acknowledged it.
func (p *Provider) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.initLocked()
	p.shutdown.Store(true)
	for l := range p.listeners {
		(*l).Close()
	}
	for s := range p.sessions {
		s.interruptIdle()
	}
	p.logger().Info("odmr: shutting down", "sessions", len(p.sessions))
	p.mu.Unlock()

	done := make(chan struct{})
	go func() {
		p.sessionsWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the provider at once: it closes the listeners and every
// session's connection. Mail being delivered stays queued unless the
// customer had acknowledged it.
func (p *Provider) Close() error {
	p.mu.Lock()
	p.initLocked()
	p.shutdown.Store(true)
	var err error
	for l := range p.listeners {
		if e := (*l).Close(); e != nil && err == nil {
			err = e
		}
	}
	p.cancel()
	p.mu.Unlock()
	return err
}

// lingeringClose half-closes conn and reads what the peer still sends for
// a moment before closing, so that a reply written just before (a 421, a
// 500) reaches a peer that was still sending instead of being lost to a
// TCP reset.
func lingeringClose(conn net.Conn) {
	defer conn.Close()
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		return
	}
	if cw.CloseWrite() != nil {
		return
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(conn, 256<<10))
}

// logAnon writes a record about a session that has not authenticated
// unless too many were written in the last second: anyone can open
// connections, and should not fill the disk with their records.
func (p *Provider) logAnon(log *slog.Logger, level slog.Level, msg string, args ...any) {
	ok, suppressed := p.anonLogs.Allow(time.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	log.Log(context.Background(), level, msg, args...)
}
