package odmr

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/pipeline"
	"github.com/go-odmr/odmr/internal/wire"
)

// ErrProviderClosed is returned by [Provider.ServeListener] and
// [Provider.ListenAndServe] after [Provider.Shutdown] or [Provider.Close].
var ErrProviderClosed = errors.New("odmr: provider closed")

// Default limits of a [Provider]; a zero field in the struct means these.
const (
	DefaultCommandTimeout  = 5 * time.Minute
	DefaultReplyTimeout    = 5 * time.Minute
	DefaultDataTimeout     = 10 * time.Minute
	DefaultWriteTimeout    = time.Minute
	DefaultMaxErrors       = 10
	DefaultMaxAuthFailures = 3
)

const (
	maxCommandLine = 4096  // longer than RFC 5321's 512, for long ATRN lists
	maxSASLLine    = 12288 // RFC 4954 section 4
)

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
	// the role swap. 0 means DefaultCommandTimeout.
	CommandTimeout time.Duration
	// ReplyTimeout is how long the provider, once the roles are reversed,
	// waits for the customer's greeting and for each reply. 0 means
	// DefaultReplyTimeout.
	ReplyTimeout time.Duration
	// DataTimeout is how long it waits for the reply to the end of a
	// message. 0 means DefaultDataTimeout.
	DataTimeout time.Duration
	// WriteTimeout bounds each write to the connection. 0 means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration

	// MaxErrors is how many error replies a session may earn before it is
	// closed with 421. 0 means DefaultMaxErrors.
	MaxErrors int
	// MaxAuthFailures is how many failed AUTH commands a session may make;
	// the next failure closes it with 421. 0 means DefaultMaxAuthFailures.
	MaxAuthFailures int
	// AuthFailuresAllowed is how many failed AUTH commands one identity, or
	// one remote address, may make before each further failure locks it
	// out for AuthBackoff, doubling up to MaxAuthBackoff; AUTH is answered
	// 454 meanwhile. 0 means DefaultAuthFailuresAllowed; negative turns the
	// lockout off.
	AuthFailuresAllowed int
	// AuthBackoff and MaxAuthBackoff: 0 means DefaultAuthBackoff and
	// DefaultMaxAuthBackoff.
	AuthBackoff, MaxAuthBackoff time.Duration
	// ATRNInterval and ATRNBurst limit each identity to a burst of
	// ATRNBurst commands, then one per ATRNInterval (RFC 2645 section 5.2.1
	// lets a provider refuse frequent requests with 450). 0 means
	// DefaultATRNInterval and DefaultATRNBurst; a negative interval turns
	// the limit off.
	ATRNInterval time.Duration
	ATRNBurst    int

	// MaxSessions caps the sessions served at once; MaxSessionsPerAddr
	// those from one remote IP address. Further connections are answered
	// 421 and closed. 0 means DefaultMaxSessions and
	// DefaultMaxSessionsPerAddr; negative means no cap.
	MaxSessions, MaxSessionsPerAddr int
	// SessionTimeout bounds the time from connection to the role swap,
	// whatever the customer does. 0 means DefaultSessionTimeout.
	SessionTimeout time.Duration

	// Chunking makes the provider send message bodies with BDAT (RFC 3030)
	// to customers that offer CHUNKING as well as PIPELINING: no
	// dot-stuffing, and no wait at all between messages. It is off by
	// default, because go-smtp's server (which this package's Customer
	// uses) does not report a connection cut inside a BDAT chunk as an
	// error. Customers that offer PIPELINING always get pipelined
	// commands (RFC 2920); the others get one command at a time.
	Chunking bool

	// Debug, if set, receives a transcript of each session before the role
	// swap in the RFC's notation ("C: ", "P: "), with AUTH exchanges
	// redacted, and the SMTP exchange after it. Writes from concurrent
	// sessions are serialized per line.
	Debug io.Writer

	// Logger receives one record per session event. Secrets and SASL
	// payloads are never logged. nil means slog.Default().
	Logger *slog.Logger

	// challenge, when set, replaces the CRAM-MD5 challenge generator so
	// tests can replay golden transcripts.
	challenge func(hostname string) []byte

	mu         sync.Mutex
	listeners  map[*net.Listener]struct{}
	sessions   map[*session]struct{}
	perAddr    map[string]int
	authFails  *failureLimiter
	atrnLimits *atrnLimiter
	debugMu    sync.Mutex
	sessionsWG sync.WaitGroup
	baseCtx    context.Context
	cancel     context.CancelFunc
	shutdown   atomic.Bool
}

func (p *Provider) hostname() string {
	if p.Hostname != "" {
		return p.Hostname
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

func (p *Provider) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

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
		p.perAddr = make(map[string]int)
		free := orDefault(p.AuthFailuresAllowed, DefaultAuthFailuresAllowed)
		if free < 0 {
			free = int(^uint(0) >> 1)
		}
		p.authFails = newFailureLimiter(free, orDefault(p.AuthBackoff, DefaultAuthBackoff), orDefault(p.MaxAuthBackoff, DefaultMaxAuthBackoff))
		p.atrnLimits = &atrnLimiter{every: orDefault(p.ATRNInterval, DefaultATRNInterval), burst: orDefault(p.ATRNBurst, DefaultATRNBurst)}
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
	host := remoteHost(conn.RemoteAddr())
	if limit := orDefault(p.MaxSessions, DefaultMaxSessions); limit > 0 && len(p.sessions) >= limit {
		p.mu.Unlock()
		return p.refuse(conn, "too many sessions", "Too many connections, try again later")
	}
	if limit := orDefault(p.MaxSessionsPerAddr, DefaultMaxSessionsPerAddr); limit > 0 && p.perAddr[host] >= limit {
		p.mu.Unlock()
		return p.refuse(conn, "too many sessions from one address", "Too many connections from your address, try again later")
	}
	s := newSession(p, conn)
	p.sessions[s] = struct{}{}
	p.perAddr[host]++
	p.sessionsWG.Add(1)
	p.mu.Unlock()

	defer func() {
		p.mu.Lock()
		delete(p.sessions, s)
		if p.perAddr[host]--; p.perAddr[host] <= 0 {
			delete(p.perAddr, host)
		}
		p.mu.Unlock()
		p.sessionsWG.Done()
	}()
	return s.run(ctx)
}

// refuse answers a connection that will not be served with 421.
func (p *Provider) refuse(conn net.Conn, why, text string) error {
	p.logger().Warn("odmr: connection refused", "remote", conn.RemoteAddr().String(), "reason", why)
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
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
		return err
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
		return err
	}
	return p.ServeListener(l)
}

// ServeListener accepts connections on l and serves each in its own
// goroutine. It returns ErrProviderClosed after Shutdown or Close, and
// closes l.
func (p *Provider) ServeListener(l net.Listener) error {
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

	var backoff time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			if p.shutdown.Load() {
				return ErrProviderClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.logger().Warn("odmr: accept failed, retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		go p.Serve(conn)
	}
}

// Shutdown stops the provider gracefully: it closes the listeners, ends
// the sessions that have not reached the role swap with a 421 reply, and
// waits for deliveries under way to finish. If ctx ends first it returns
// ctx.Err(), and Close ends what is left.
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

// session is one ODMR session on the provider side.
type session struct {
	p     *Provider
	raw   net.Conn // the accepted connection, for deadlines from other goroutines
	conn  net.Conn // raw, or the TLS connection over it
	start time.Time
	br    *bufio.Reader
	bw    *bufio.Writer
	log   *slog.Logger
	state atomic.Int32

	helo         string
	identity     string
	inSASL       bool // redact client lines in the debug transcript
	errs         int
	authFailures int
	isTLS        bool

	// Counts for the closing log record.
	messages, delivered, failed, deferred int
}

func newSession(p *Provider, conn net.Conn) *session {
	s := &session{
		p:     p,
		raw:   conn,
		conn:  conn,
		start: time.Now(),
		// Small buffers keep idle sessions cheap (BENCHMARKS.md); wire.ReadLine
		// joins lines longer than the reader's buffer.
		br:  bufio.NewReaderSize(conn, 1024),
		bw:  bufio.NewWriterSize(conn, 512),
		log: p.logger().With("remote", conn.RemoteAddr().String()),
	}
	_, s.isTLS = conn.(*tls.Conn)
	return s
}

func (s *session) State() State { return State(s.state.Load()) }

// interruptIdle wakes a session blocked reading a command so it sees the
// shutdown flag. Sessions in the reversed state keep delivering.
func (s *session) interruptIdle() {
	if s.State() < StateReversed {
		s.raw.SetReadDeadline(time.Unix(1, 0))
	}
}

// errSessionOver ends the command loop after a reply that closes the session.
var errSessionOver = errors.New("odmr: session closed by provider")

func (s *session) run(ctx context.Context) (err error) {
	start := s.start
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() {
		s.state.Store(int32(StateClosed))
		lingeringClose(s.conn)
		attrs := []any{
			"identity", s.identity, "messages", s.messages, "delivered", s.delivered,
			"failed", s.failed, "deferred", s.deferred, "duration", time.Since(start).Round(time.Millisecond),
		}
		if err != nil && !errors.Is(err, errSessionOver) {
			s.log.Info("odmr: session ended", append(attrs, "err", err)...)
		} else {
			s.log.Info("odmr: session ended", attrs...)
			err = nil
		}
	}()

	if s.p.Authenticator == nil || s.p.Authorizer == nil || s.p.Queue == nil {
		s.reply(&Error{Code: 421, EnhancedCode: EnhancedCode{4, 3, 0}, Message: "Service not configured, closing connection"})
		return errors.New("odmr: Provider needs an Authenticator, an Authorizer and a Queue")
	}
	s.log.Debug("odmr: session started")
	if err := s.replyLine(220, s.p.hostname()+" on-demand mail relay server ready"); err != nil {
		return err
	}
	for {
		line, err := s.readCommand()
		if err != nil {
			return s.readFailed(ctx, err)
		}
		if err := s.dispatch(ctx, line); err != nil {
			return err
		}
	}
}

// readFailed answers the error that ended reading a command.
func (s *session) readFailed(ctx context.Context, err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return fmt.Errorf("odmr: connection closed by customer in %s state", s.State())
	case errors.Is(err, wire.ErrFlood):
		s.reply(&Error{Code: 421, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Line too long, closing connection"})
		return err
	case errors.As(err, &ne) && ne.Timeout():
		if s.p.shutdown.Load() || ctx.Err() != nil {
			s.reply(errShuttingDown)
			return errSessionOver
		}
		s.reply(errTimeout)
		return fmt.Errorf("odmr: customer idle for %v", s.commandTimeout())
	}
	return err
}

func (s *session) commandTimeout() time.Duration {
	return orDefault(s.p.CommandTimeout, DefaultCommandTimeout)
}

// readLine reads one line under the command timeout. Errors about the
// line itself (too long, bare CR) come back as *Error.
func (s *session) readLine(max int) (string, error) {
	deadline := time.Now().Add(s.commandTimeout())
	if end := s.start.Add(orDefault(s.p.SessionTimeout, DefaultSessionTimeout)); end.Before(deadline) {
		deadline = end
	}
	s.conn.SetReadDeadline(deadline)
	if s.p.shutdown.Load() && s.State() < StateReversed {
		// Shutdown may have run between the check and the deadline.
		return "", os.ErrDeadlineExceeded
	}
	line, err := wire.ReadLine(s.br, max)
	if err == nil && s.p.Debug != nil {
		s.debug("C: ", string(line))
	}
	switch {
	case errors.Is(err, wire.ErrLineTooLong):
		return "", errLineTooLong
	case errors.Is(err, wire.ErrBareCR):
		return "", errSyntax.withMessage("Bare CR or NUL in command")
	}
	return string(line), err
}

// readCommand reads command lines, answering those that are malformed.
func (s *session) readCommand() (string, error) {
	for {
		line, err := s.readLine(maxCommandLine)
		var e *Error
		if errors.As(err, &e) {
			if err := s.fail(e); err != nil {
				return "", err
			}
			continue
		}
		return line, err
	}
}

// dispatch runs one command; a non-nil error ends the session.
func (s *session) dispatch(ctx context.Context, line string) error {
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	arg = strings.Trim(arg, " \t")
	switch verb {
	case "EHLO", "HELO":
		return s.handleHello(verb, arg)
	case "STARTTLS":
		return s.handleStartTLS(ctx, arg)
	case "AUTH":
		return s.handleAuth(ctx, arg)
	case "ATRN":
		return s.handleATRN(ctx, arg)
	case "NOOP":
		return s.replyLine(250, "2.0.0 OK")
	case "RSET":
		return s.replyLine(250, "2.0.0 OK")
	case "QUIT":
		s.replyLine(221, "2.0.0 Bye")
		return errSessionOver
	case "GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE":
		// Cross-protocol requests (a browser aimed at port 366) are not
		// a confused mail client: close at once.
		s.reply(errCrossProtocol)
		return errors.New("odmr: HTTP request on the ODMR port")
	case "":
		return s.fail(errSyntax.withMessage("Empty command"))
	}
	return s.fail(ErrNotImplemented.withMessage("Command not implemented; ODMR accepts EHLO, AUTH, ATRN and QUIT"))
}

func (s *session) handleHello(verb, arg string) error {
	if arg == "" {
		return s.fail(errBadArguments.withMessage("%s requires a domain or address", verb))
	}
	s.helo = arg
	host := s.p.hostname()
	if verb == "HELO" {
		return s.replyLine(250, host)
	}
	lines := []string{host}
	if mechs := s.mechanisms(); len(mechs) > 0 {
		lines = append(lines, "AUTH "+strings.Join(mechs, " "))
	}
	if s.p.TLSConfig != nil && !s.isTLS {
		lines = append(lines, "STARTTLS")
	}
	lines = append(lines, "ENHANCEDSTATUSCODES", "ATRN")
	return s.replyLines(250, lines...)
}

// mechanisms lists the SASL mechanisms offered on this connection.
func (s *session) mechanisms() []string {
	var m []string
	if !s.p.DisableSCRAM {
		m = append(m, SCRAMSHA256, SCRAMSHA1)
	}
	if !s.p.DisableCRAMMD5 {
		m = append(m, CRAMMD5)
	}
	if s.isTLS || s.p.AllowInsecureAuth {
		m = append(m, sasl.Plain, sasl.Login)
	}
	if s.p.ExternalAuth != nil && s.isTLS {
		if cs := s.conn.(*tls.Conn).ConnectionState(); len(cs.VerifiedChains) > 0 {
			m = append(m, sasl.External)
		}
	}
	return m
}

// errTLSRequired answers AUTH and ATRN in clear when TLS is required.
var errTLSRequired = &Error{Code: 530, EnhancedCode: EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}

func (s *session) handleStartTLS(ctx context.Context, arg string) error {
	switch {
	case s.isTLS:
		return s.fail(errBadSequence.withMessage("TLS already active"))
	case s.p.TLSConfig == nil:
		return s.reply(&Error{Code: 454, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "TLS not available"})
	case arg != "":
		return s.fail(errBadArguments.withMessage("STARTTLS takes no parameters"))
	case s.identity != "":
		return s.fail(errBadSequence.withMessage("Already authenticated"))
	}
	if err := s.replyLine(220, "2.0.0 Ready to start TLS"); err != nil {
		return err
	}
	// Bytes that came after STARTTLS in clear are not part of the TLS
	// session: executing them would let an attacker inject commands
	// (CVE-2011-0411 and kin). Drop them.
	if n := s.br.Buffered(); n > 0 {
		s.br.Discard(n)
		s.log.Warn("odmr: discarded bytes pipelined after STARTTLS", "bytes", n)
	}
	tc := tls.Server(s.raw, s.p.TLSConfig)
	hsCtx, cancel := context.WithTimeout(ctx, s.commandTimeout())
	defer cancel()
	if err := tc.HandshakeContext(hsCtx); err != nil {
		return fmt.Errorf("odmr: TLS handshake: %w", err)
	}
	s.conn = tc
	s.br.Reset(tc)
	s.bw.Reset(tc)
	s.isTLS = true
	s.helo = "" // RFC 3207 section 4.2: the client starts over with EHLO
	s.log = s.log.With("tls", tls.VersionName(tc.ConnectionState().Version))
	s.log.Debug("odmr: TLS started")
	return nil
}

func (s *session) handleAuth(ctx context.Context, arg string) error {
	if s.helo == "" {
		return s.fail(errBadSequence.withMessage("Send EHLO first"))
	}
	if s.identity != "" {
		return s.fail(errBadSequence.withMessage("Already authenticated"))
	}
	if s.p.RequireTLS && !s.isTLS {
		return s.fail(errTLSRequired)
	}
	if wait := s.p.authFails.blocked(remoteHost(s.raw.RemoteAddr()), time.Now()); wait > 0 {
		s.log.Info("odmr: AUTH refused while the address is locked out", "wait", wait.Round(time.Second))
		return s.fail(errAuthLocked(wait))
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	if mech == "" {
		return s.fail(errBadArguments.withMessage("AUTH requires a mechanism"))
	}
	offered := false
	for _, m := range s.mechanisms() {
		offered = offered || m == mech
	}
	if !offered {
		if (mech == sasl.Plain || mech == sasl.Login) && !s.isTLS {
			return s.fail(errEncryptionReq)
		}
		return s.fail(errUnknownMech)
	}

	var user string
	srv := s.saslServer(ctx, mech, &user)
	var resp []byte
	if hasIR {
		ir = strings.TrimSpace(ir)
		switch ir {
		case "*":
			return s.fail(errAuthCancelled)
		case "=":
			resp = []byte{}
		default:
			b, err := base64.StdEncoding.DecodeString(ir)
			if err != nil {
				return s.fail(errBadBase64)
			}
			resp = b
		}
	}
	s.inSASL = true
	defer func() { s.inSASL = false }()
	for {
		chal, done, err := srv.Next(resp)
		if err == nil && done && user != "" {
			if wait := s.p.authFails.blocked("user:"+user, time.Now()); wait > 0 {
				// Even right credentials wait out a lockout, or the
				// lockout would tell a guesser when it got them right.
				s.log.Info("odmr: AUTH refused while the identity is locked out", "user", user, "wait", wait.Round(time.Second))
				return s.fail(errAuthLocked(wait))
			}
		}
		if err != nil {
			return s.authFailed(mech, user, err)
		}
		if done {
			s.p.authFails.succeed("user:" + user)
			s.identity = user
			s.state.Store(int32(StateAuthenticated))
			s.log = s.log.With("identity", user)
			s.log.Info("odmr: authenticated", "mechanism", mech)
			return s.replyLine(235, "2.7.0 Authentication successful")
		}
		if err := s.replyLine(334, base64.StdEncoding.EncodeToString(chal)); err != nil {
			return err
		}
		line, err := s.readLine(maxSASLLine)
		var e *Error
		if errors.As(err, &e) {
			return s.fail(e)
		} else if err != nil {
			return s.readFailed(ctx, err)
		}
		if line == "*" {
			return s.fail(errAuthCancelled)
		}
		resp, err = base64.StdEncoding.DecodeString(line)
		if err != nil {
			return s.fail(errBadBase64)
		}
	}
}

// errTempAuth marks a credential store failure.
type errTempAuth struct{ err error }

func (e errTempAuth) Error() string { return "odmr: credential lookup failed: " + e.err.Error() }
func (e errTempAuth) Unwrap() error { return e.err }

// secret looks a user up, separating unknown users from store failures.
func (s *session) secret(ctx context.Context, user string) ([]byte, error) {
	sec, err := s.p.Authenticator.Secret(ctx, user)
	if err != nil && !errors.Is(err, ErrUnknownUser) && !errors.Is(err, ErrNoSecret) {
		return nil, errTempAuth{err}
	}
	return sec, err
}

// scramCredentials returns the user's SCRAM credentials from the store, or
// derives them from the shared secret. An unknown user gets made-up
// credentials, stable per user, so that the exchange fails only at the
// proof and does not tell which users exist.
func (s *session) scramCredentials(ctx context.Context, mech, user string) (SCRAMCredentials, error) {
	if sa, ok := s.p.Authenticator.(SCRAMAuthenticator); ok {
		c, err := sa.SCRAMCredentials(ctx, mech, user)
		switch {
		case err == nil:
			return c, nil
		case errors.Is(err, ErrUnknownUser):
			return fakeSCRAM(mech, user), nil
		case !errors.Is(err, ErrNoSecret):
			return c, errTempAuth{err}
		}
	}
	sec, err := s.secret(ctx, user)
	switch {
	case errors.Is(err, ErrUnknownUser), errors.Is(err, ErrNoSecret):
		return fakeSCRAM(mech, user), nil
	case err != nil:
		return SCRAMCredentials{}, err
	}
	salt := make([]byte, 16)
	rand.Read(salt)
	return deriveSCRAM(mech, user, string(sec), salt, DefaultSCRAMIterations)
}

func (s *session) checkPassword(ctx context.Context, user, password string) error {
	sec, err := s.secret(ctx, user)
	if errors.Is(err, ErrNoSecret) {
		if sa, ok := s.p.Authenticator.(SCRAMAuthenticator); ok {
			for _, mech := range []string{SCRAMSHA256, SCRAMSHA1} {
				c, err := sa.SCRAMCredentials(ctx, mech, user)
				if err == nil {
					if checkSCRAMPassword(c, user, password) {
						return nil
					}
					return ErrAuthFailed
				}
			}
		}
		return ErrAuthFailed
	}
	if errors.Is(err, ErrUnknownUser) {
		equalSecret(password, []byte("odmr-unknown-user-placeholder"))
		return ErrAuthFailed
	} else if err != nil {
		return err
	}
	if !equalSecret(password, sec) {
		return ErrAuthFailed
	}
	return nil
}

func (s *session) saslServer(ctx context.Context, mech string, user *string) sasl.Server {
	switch mech {
	case CRAMMD5:
		srv := NewCRAMMD5Server(s.p.hostname(), func(u string) ([]byte, error) {
			*user = u
			return s.secret(ctx, u)
		}).(*cramMD5Server)
		if s.p.challenge != nil {
			srv.challenge = s.p.challenge(s.p.hostname())
		}
		return srv
	case sasl.Plain:
		return sasl.NewPlainServer(func(authz, u, pass string) error {
			*user = u
			if authz != "" && authz != u {
				return ErrAuthFailed
			}
			return s.checkPassword(ctx, u, pass)
		})
	case sasl.Login:
		return &loginServer{check: func(u, pass string) error {
			*user = u
			return s.checkPassword(ctx, u, pass)
		}}
	case SCRAMSHA256, SCRAMSHA1:
		srv, err := newSCRAMServer(mech, user, func(u string) (SCRAMCredentials, error) {
			return s.scramCredentials(ctx, mech, u)
		})
		if err != nil {
			panic(err) // the mechanism names are this package's own
		}
		return srv
	case sasl.External:
		return sasl.NewExternalServer(func(authz string) error {
			id, err := s.p.ExternalAuth(ctx, s.conn.(*tls.Conn).ConnectionState())
			if err != nil {
				return fmt.Errorf("%w: %v", ErrAuthFailed, err)
			}
			*user = id
			if authz != "" && authz != id {
				return ErrAuthFailed
			}
			return nil
		})
	}
	panic("odmr: unexpected mechanism " + mech)
}

func (s *session) authFailed(mech, user string, err error) error {
	var temp errTempAuth
	if errors.As(err, &temp) {
		s.log.Warn("odmr: credential store failed", "mechanism", mech, "user", user, "err", temp.err)
		return s.fail(&Error{Code: 454, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"})
	}
	s.authFailures++
	now := time.Now()
	s.p.authFails.fail(remoteHost(s.raw.RemoteAddr()), now)
	if user != "" {
		s.p.authFails.fail("user:"+user, now)
	}
	s.log.Info("odmr: authentication failed", "mechanism", mech, "user", user, "failures", s.authFailures)
	if s.authFailures > orDefault(s.p.MaxAuthFailures, DefaultMaxAuthFailures) {
		s.reply(errTooManyAuth)
		return errors.New("odmr: too many failed authentication attempts")
	}
	return s.fail(ErrAuthFailed)
}

func (s *session) handleATRN(ctx context.Context, arg string) error {
	if s.p.RequireTLS && !s.isTLS {
		return s.fail(errTLSRequired)
	}
	if s.identity == "" {
		return s.fail(ErrAuthRequired)
	}
	if !s.p.atrnLimits.allow(s.identity, time.Now()) {
		s.log.Info("odmr: ATRN refused", "reason", "rate limit")
		return s.fail(ErrATRNRefused.withMessage("Too many ATRN requests; wait before asking again"))
	}
	domains, err := ParseATRN(arg)
	if err != nil {
		return s.fail(errBadArguments.withMessage("%s", strings.TrimPrefix(err.Error(), "odmr: ")))
	}
	allowed, err := s.p.Authorizer.Domains(ctx, s.identity)
	if err != nil {
		s.log.Warn("odmr: domain authorizer failed", "err", err)
		return s.fail(ErrTryLater)
	}
	permitted := make(map[string]bool, len(allowed))
	var all []string
	for _, d := range allowed {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if d != "" && !permitted[d] {
			permitted[d] = true
			all = append(all, d)
		}
	}
	if len(domains) == 0 {
		domains = all
		if len(domains) == 0 {
			s.log.Info("odmr: ATRN refused", "reason", "identity has no domains")
			return s.fail(errNoDomains)
		}
	}
	for _, d := range domains {
		if !permitted[d] {
			s.log.Info("odmr: ATRN refused", "domains", domains, "denied", d)
			return s.fail(ErrATRNRefused.withMessage("Access to domain %s denied", d))
		}
	}
	has, err := s.p.Queue.HasMail(ctx, domains)
	if err != nil {
		s.log.Warn("odmr: queue failed", "domains", domains, "err", err)
		return s.fail(ErrTryLater)
	}
	if !has {
		s.log.Info("odmr: no mail", "domains", domains)
		return s.reply(ErrNoMail)
	}
	s.log = s.log.With("domains", domains)
	if err := s.replyLine(250, "2.0.0 OK now reversing the connection"); err != nil {
		return err
	}
	s.state.Store(int32(StateReversed))
	buffered, _ := s.br.Peek(s.br.Buffered())
	rc := Reverse(s.conn, buffered)
	if err := s.deliver(ctx, rc, domains); err != nil {
		return err
	}
	return errSessionOver
}

// fail sends an error reply and counts it; too many errors end the session.
func (s *session) fail(e *Error) error {
	if e.Code >= 500 {
		s.errs++
		if s.errs >= orDefault(s.p.MaxErrors, DefaultMaxErrors) {
			s.reply(errTooManyErrors)
			return errors.New("odmr: too many errors")
		}
	}
	return s.reply(e)
}

// reply sends e as a single-line reply.
func (s *session) reply(e *Error) error {
	text := e.Message
	if ec := e.EnhancedCode.String(); ec != "" {
		text = ec + " " + text
	}
	return s.replyLine(e.Code, text)
}

func (s *session) replyLine(code int, text string) error {
	return s.replyLines(code, text)
}

// replyLines writes a reply, multi-line when given several lines, in one
// write: fetchmail reads the EHLO reply as it arrives.
func (s *session) replyLines(code int, lines ...string) error {
	for i, l := range lines {
		sep := byte('-')
		if i == len(lines)-1 {
			sep = ' '
		}
		fmt.Fprintf(s.bw, "%03d%c%s\r\n", code, sep, l)
		if s.p.Debug != nil {
			if code == 334 {
				l = "<redacted>"
			}
			s.debug("P: ", fmt.Sprintf("%03d%c%s", code, sep, l))
		}
	}
	s.conn.SetWriteDeadline(time.Now().Add(orDefault(s.p.WriteTimeout, DefaultWriteTimeout)))
	return s.bw.Flush()
}

// deliver runs the reversed state: the provider is now the SMTP client.
func (s *session) deliver(ctx context.Context, rc net.Conn, domains []string) error {
	if s.p.Debug != nil {
		rc = &debugConn{Conn: rc, s: s}
	}
	dc := &deadlineConn{Conn: rc, ctx: ctx, write: orDefault(s.p.WriteTimeout, DefaultWriteTimeout)}
	// The session closes the connection; go-smtp's client must not, or it
	// could not say QUIT to a customer that refuses with its greeting.
	// go-smtp reads the greeting and the EHLO reply; lc lets the pipelined
	// sender take the connection over from it without losing a byte.
	lc := pipeline.NewLineConn(dc)
	c := smtp.NewClient(noCloseConn{lc})
	c.CommandTimeout = orDefault(s.p.ReplyTimeout, DefaultReplyTimeout)
	c.SubmissionTimeout = orDefault(s.p.DataTimeout, DefaultDataTimeout)

	// Hello reads the customer's 220 greeting first.
	if err := c.Hello(s.p.hostname()); err != nil {
		if AsError(err) != nil {
			// A 554 greeting (or a refused HELO): RFC 5321 section 3.1 has
			// the customer wait for our QUIT.
			s.quitRaw(dc)
		}
		return fmt.Errorf("odmr: customer greeting or EHLO failed: %w", err)
	}
	batch, err := s.p.Queue.Claim(ctx, domains)
	if err != nil {
		s.log.Warn("odmr: queue claim failed", "err", err)
		c.Quit()
		return nil
	}
	defer batch.Close()
	if ok, _ := c.Extension("PIPELINING"); ok {
		return s.deliverPipelined(ctx, c, lc, batch, domains)
	}
	return s.deliverEach(ctx, c, batch, domains)
}

// deliverOne sends one message. It returns an error only when the
// connection can no longer be used.
func (s *session) deliverOne(ctx context.Context, c *smtp.Client, msg Message, domains []string) (connErr error) {
	env := msg.Envelope()
	rcpts, results := s.prepare(c, env, domains)
	set := func(list []string, err error) {
		for _, r := range list {
			results = append(results, RecipientResult{r, err})
		}
	}
	defer func() { s.complete(ctx, msg, env, results) }()
	if len(rcpts) == 0 {
		return nil
	}

	// lost records a broken connection: every recipient not yet settled
	// stays queued.
	lost := func(list []string, err error) error {
		set(list, fmt.Errorf("%w: %v", errLostConnection, err))
		return err
	}
	opts := &smtp.MailOptions{Size: env.Size, UTF8: env.UTF8}
	if err := c.Mail(env.From, opts); err != nil {
		if e := AsError(err); e != nil {
			set(rcpts, e)
			return s.reset(c)
		}
		return lost(rcpts, err)
	}
	var accepted []string
	for i, r := range rcpts {
		err := c.Rcpt(r, nil)
		if e := AsError(err); e != nil {
			results = append(results, RecipientResult{r, e})
			continue
		} else if err != nil {
			return lost(append(accepted, rcpts[i:]...), err)
		}
		accepted = append(accepted, r)
	}
	if len(accepted) == 0 {
		return s.reset(c)
	}
	body, err := msg.Open()
	if err != nil {
		s.log.Error("odmr: cannot open queued message", "id", env.ID, "err", err)
		set(accepted, errLocalError)
		return s.reset(c)
	}
	defer body.Close()
	w, err := c.Data()
	if e := AsError(err); e != nil {
		set(accepted, e)
		return s.reset(c)
	} else if err != nil {
		return lost(accepted, err)
	}
	if _, err := io.Copy(w, body); err != nil {
		// Never send the final dot after a short copy: the customer would
		// take a truncated message. Dropping the connection makes it
		// discard what it has.
		s.log.Error("odmr: delivery interrupted mid-message", "id", env.ID, "err", err)
		return lost(accepted, err)
	}
	err = w.Close()
	if e := AsError(err); e != nil {
		set(accepted, e)
		return nil
	} else if err != nil {
		return lost(accepted, err)
	}
	set(accepted, nil)
	return nil
}

// prepare sorts the recipients of a message before it is sent: those to
// send, and the results of those that are not, because they are outside
// the session's domains (they stay queued for their own customer), their
// address cannot go on the wire, or the customer cannot take the message.
func (s *session) prepare(c *smtp.Client, env Envelope, domains []string) (rcpts []string, results []RecipientResult) {
	s.messages++
	results = make([]RecipientResult, 0, len(env.To))
	rcpts = make([]string, 0, len(env.To))
	for _, r := range env.To {
		switch {
		case !inDomains(r, domains):
			results = append(results, RecipientResult{r, errLocalError.withMessage("Recipient not in the session's domains")})
		case strings.ContainsAny(r, "\r\n"):
			// A queue that lets this through must not make it a command
			// injection, nor a message that blocks the rest of the queue.
			results = append(results, RecipientResult{r, &Error{Code: 553, EnhancedCode: EnhancedCode{5, 1, 3}, Message: "Recipient address contains CR or LF"}})
		default:
			rcpts = append(rcpts, r)
		}
	}
	var perm error
	if strings.ContainsAny(env.From, "\r\n") {
		perm = &Error{Code: 553, EnhancedCode: EnhancedCode{5, 1, 7}, Message: "Sender address contains CR or LF"}
	} else if len(rcpts) > 0 {
		perm = s.unsendable(c, env)
	}
	if perm != nil {
		for _, r := range rcpts {
			results = append(results, RecipientResult{r, perm})
		}
		rcpts = nil
	}
	return rcpts, results
}

// complete counts a message's results and hands them to the queue.
func (s *session) complete(ctx context.Context, msg Message, env Envelope, results []RecipientResult) {
	for _, r := range results {
		switch {
		case r.Err == nil:
			s.delivered++
		case Permanent(r.Err):
			s.failed++
		default:
			s.deferred++
		}
	}
	// Record outcomes even when the session is being cancelled: an
	// acknowledged message must not be delivered again.
	if err := msg.Complete(context.WithoutCancel(ctx), results); err != nil {
		s.log.Error("odmr: queue could not record delivery results", "id", env.ID, "err", err)
	}
	s.log.Debug("odmr: message done", "id", env.ID, "results", len(results))
}

// unsendable returns a permanent failure when the customer cannot take env.
func (s *session) unsendable(c *smtp.Client, env Envelope) error {
	if env.UTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			return &Error{Code: 553, EnhancedCode: EnhancedCode{5, 6, 7}, Message: "Receiver does not support SMTPUTF8"}
		}
	}
	if env.Body == Body8BitMIME {
		if ok, _ := c.Extension("8BITMIME"); !ok {
			// RFC 6152 section 3: no 8-bit data to a receiver that did not
			// ask for it, and this provider does not downgrade.
			return &Error{Code: 554, EnhancedCode: EnhancedCode{5, 6, 3}, Message: "8-bit message cannot be relayed to a receiver without 8BITMIME"}
		}
	}
	if env.Body == BodyBinaryMIME {
		return &Error{Code: 554, EnhancedCode: EnhancedCode{5, 6, 3}, Message: "Binary message cannot be relayed to this receiver"}
	}
	if limit, ok := c.MaxMessageSize(); ok && limit > 0 && env.Size > int64(limit) {
		return &Error{Code: 552, EnhancedCode: EnhancedCode{5, 3, 4}, Message: fmt.Sprintf("Message size %d exceeds receiver's limit %d", env.Size, limit)}
	}
	return nil
}

// reset ends a transaction that will not be sent.
func (s *session) reset(c *smtp.Client) error {
	if err := c.Reset(); err != nil && AsError(err) == nil {
		return err
	}
	return nil
}

// debug writes one transcript line, redacting SASL data.
func (s *session) debug(prefix, line string) {
	if prefix == "C: " {
		if s.inSASL {
			line = "<redacted>"
		} else if verb, rest, ok := strings.Cut(line, " "); ok && strings.EqualFold(verb, "AUTH") {
			if mech, _, hasIR := strings.Cut(rest, " "); hasIR {
				line = verb + " " + mech + " <redacted>"
			}
		}
	}
	s.p.debugMu.Lock()
	defer s.p.debugMu.Unlock()
	fmt.Fprintf(s.p.Debug, "%s %s%s\n", s.raw.RemoteAddr(), prefix, line)
}

// debugConn copies the reversed session into the debug transcript, line by
// line: what the provider reads is the customer's ("C: ").
type debugConn struct {
	net.Conn
	s          *session
	rbuf, wbuf []byte
}

func (c *debugConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.rbuf = c.lines("C: ", append(c.rbuf, p[:n]...))
	return n, err
}

func (c *debugConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.wbuf = c.lines("P: ", append(c.wbuf, p[:n]...))
	return n, err
}

// lines writes the complete lines of buf and returns the rest, keeping at
// most a few KiB of an unfinished line.
func (c *debugConn) lines(prefix string, buf []byte) []byte {
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		c.s.debug(prefix, strings.TrimSuffix(string(buf[:i]), "\r"))
		buf = buf[i+1:]
	}
	if len(buf) > 4096 {
		c.s.debug(prefix, string(buf)+" [...]")
		buf = buf[:0]
	}
	return append([]byte(nil), buf...)
}

func errAuthLocked(wait time.Duration) *Error {
	return &Error{Code: 454, EnhancedCode: EnhancedCode{4, 7, 0},
		Message: fmt.Sprintf("Too many failed authentication attempts; try again in %v", wait.Round(time.Second)+time.Second)}
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

// noCloseConn keeps go-smtp's client from closing the connection.
type noCloseConn struct{ net.Conn }

func (noCloseConn) Close() error { return nil }

// quitRaw sends QUIT and waits briefly for the reply, whatever state the
// SMTP client is in.
func (s *session) quitRaw(conn net.Conn) {
	conn.SetDeadline(time.Now().Add(orDefault(s.p.ReplyTimeout, DefaultReplyTimeout)))
	if _, err := io.WriteString(conn, "QUIT\r\n"); err != nil {
		return
	}
	bufio.NewReader(conn).ReadString('\n')
}

// deadlineConn bounds each write and stops every operation once ctx is
// done, whatever deadlines the SMTP client sets for itself.
type deadlineConn struct {
	net.Conn
	ctx   context.Context
	write time.Duration
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	// Deadline first, then the check: a cancellation in between sets a
	// past deadline that this one would otherwise overwrite.
	c.Conn.SetWriteDeadline(time.Now().Add(c.write))
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}
