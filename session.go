package odmr

import (
	"bufio"
	"container/list"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/termsafe"
	"github.com/go-odmr/odmr/internal/wire"
)

const (
	maxCommandLine = 4096  // longer than RFC 5321's 512, for long ATRN lists
	maxSASLLine    = 12288 // RFC 4954 section 4
)

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
	ticket       authTicket // what the AUTH limiter took for this attempt
	isTLS        bool
	domains      []string // the ATRN's, once the session is reversed

	netKey     string        // the network counted by MaxSessionsPerAddr
	unauthElem *list.Element // in p.table.unauth until authenticated; guarded by p.mu
	evicted    atomic.Bool   // chosen to make room for a newcomer; set under p.mu

	// Counts for the closing log record.
	messages, delivered, failed, deferred int
	noDSN                                 bool // the customer did not offer DSN

	// recordErr is the first error of a Message's Complete: the queue
	// cannot record what was delivered (a full disk), so the session sends
	// nothing more, and what it would send could only be sent again later.
	recordErr error

	// For the Trace: the code of the last reply, and the 421 the
	// session was closed with.
	lastCode   int
	closedWith *Error
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
		log: p.logger().With("session", newSessionID(), "remote", conn.RemoteAddr().String()),
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

// newSessionID returns a short random name for a session, on each of its
// log records as "session", so that they can be joined with grep.
func newSessionID() string {
	return rand.Text()[:10]
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
		s.observeEnd(s.State(), err)
		s.state.Store(int32(StateClosed))
		lingeringClose(s.conn)
		// The identity and the domains are on s.log already.
		attrs := []any{
			"messages", s.messages, "delivered", s.delivered,
			"failed", s.failed, "deferred", s.deferred, "duration", time.Since(start).Round(time.Millisecond),
		}
		if err != nil && !errors.Is(err, errSessionOver) {
			attrs = append(attrs, "err", err)
		} else {
			err = nil
		}
		if s.identity == "" {
			s.p.logAnon(s.log, slog.LevelInfo, "odmr: session ended", attrs...)
		} else {
			s.log.Info("odmr: session ended", attrs...)
		}
	}()

	s.observeStart()
	// On an implicit-TLS connection everything, a refusal included, goes
	// through TLS, as with Postfix's smtpd_tls_wrappermode: the handshake
	// comes first, under its deadline. A 421 written before it would run
	// the handshake inside the write with no read deadline, so a client
	// that sends nothing would hold the session for good.
	if err := s.implicitHandshake(ctx); err != nil {
		return err
	}
	if s.p.Authenticator == nil || s.p.Authorizer == nil || s.p.Queue == nil {
		return s.result(&closing{errNotConfigured, errors.New("odmr: Provider needs an Authenticator, an Authorizer and a Queue")})
	}
	if h := s.p.hostname(); strings.ContainsAny(h, " \t\r\n\x00") {
		// It goes into the greeting, the EHLO reply and the EHLO the
		// provider sends: a line break there would forge protocol lines.
		return s.result(&closing{errNotConfigured, fmt.Errorf("odmr: invalid Provider.Hostname %q", h)})
	}
	s.log.Debug("odmr: session started")
	if err := s.replyLine(220, s.p.hostname()+" "+replyGreeting); err != nil {
		return err
	}
	for {
		line, err := s.readCommand()
		if err != nil {
			return s.result(s.readFailed(ctx, err))
		}
		if err := s.result(s.dispatch(ctx, line)); err != nil {
			return err
		}
	}
}

// implicitHandshake runs the TLS handshake of a connection with implicit
// TLS under the deadline of the first command, or the authentication or
// session deadline when either comes sooner: otherwise the greeting
// would start it with no read deadline, and a client that sends nothing
// would hold its session for good.
func (s *session) implicitHandshake(ctx context.Context) error {
	tc, ok := s.conn.(*tls.Conn)
	if !ok {
		return nil
	}
	deadline := time.Now().Add(s.commandTimeout())
	if end := s.authDeadline(); !end.IsZero() && end.Before(deadline) {
		deadline = end
	}
	if end := s.sessionDeadline(); end.Before(deadline) {
		deadline = end
	}
	hsCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := tc.HandshakeContext(hsCtx); err != nil {
		return fmt.Errorf("odmr: TLS handshake: %w", err)
	}
	return nil
}

// readFailed turns the error that ended reading a command into the
// session's end, with a reply where the connection can still take one.
func (s *session) readFailed(ctx context.Context, err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return fmt.Errorf("odmr: connection closed by customer in %s state", s.State())
	case errors.Is(err, wire.ErrFlood):
		return &closing{errLineFlood, err}
	case errors.As(err, &ne) && ne.Timeout():
		if s.p.shutdown.Load() || ctx.Err() != nil {
			return &closing{errShuttingDown, errSessionOver}
		}
		if err := s.limitTimeout(); err != nil {
			return err
		}
		return &closing{errTimeout, fmt.Errorf("odmr: customer idle for %v", s.commandTimeout())}
	}
	return err
}

func (s *session) commandTimeout() time.Duration {
	return orDefault(s.p.CommandTimeout, defaults.CommandTimeout)
}

// backendCtx bounds one call to the Authorizer or the Queue by
// BackendTimeout.
func (s *session) backendCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	d := orDefault(s.p.BackendTimeout, defaults.BackendTimeout)
	if d < 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// sessionDeadline is when SessionTimeout ends the session, if it has not
// reached the role swap by then.
func (s *session) sessionDeadline() time.Time {
	return s.start.Add(orDefault(s.p.SessionTimeout, defaults.SessionTimeout))
}

// readLine reads one line under the command timeout. Errors about the
// line itself (too long, bare CR) come back as *Error.
func (s *session) readLine(max int) (string, error) {
	deadline := time.Now().Add(s.commandTimeout())
	if end := s.sessionDeadline(); end.Before(deadline) {
		deadline = end
	}
	if s.identity == "" {
		if end := s.authDeadline(); !end.IsZero() && end.Before(deadline) {
			deadline = end
		}
	}
	s.conn.SetReadDeadline(deadline)
	if (s.p.shutdown.Load() && s.State() < StateReversed) || s.evicted.Load() {
		// Shutdown or eviction may have run between the check and the
		// deadline.
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
		return "", errBareCRCommand
	}
	return string(line), err
}

// readCommand reads command lines, answering those that are malformed.
func (s *session) readCommand() (string, error) {
	for {
		line, err := s.readLine(maxCommandLine)
		if e, ok := err.(*Error); ok {
			if err := s.result(e); err != nil {
				return "", err
			}
			continue
		}
		return line, err
	}
}

// dispatch runs one command and returns its handler's result, which
// s.result writes (see closing).
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
		return s.replyLine(250, replyOK)
	case "RSET":
		return s.replyLine(250, replyOK)
	case "QUIT":
		s.replyLine(221, replyBye)
		return errSessionOver
	case "GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE":
		// Cross-protocol requests (a browser aimed at port 366) are not
		// a confused mail client: close at once.
		return &closing{errCrossProtocol, errors.New("odmr: HTTP request on the ODMR port")}
	case "":
		return errEmptyCommand
	}
	return errNotODMR
}

func (s *session) handleHello(verb, arg string) error {
	if e := s.checkState(errBadSequence, StateInitial, StateAuthenticated); e != nil {
		return e
	}
	if arg == "" {
		return errHelloArgument.withArgs(verb)
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

func (s *session) handleStartTLS(ctx context.Context, arg string) error {
	// The state check comes after the others, so that a session that is
	// already under TLS hears that first, whatever its state.
	switch {
	case s.isTLS:
		return errTLSActive
	case s.p.TLSConfig == nil:
		return errTLSUnavailable
	case arg != "":
		return errStartTLSArgs
	}
	if e := s.checkState(errAuthenticated, StateInitial); e != nil {
		return e
	}
	if err := s.replyLine(220, replyStartTLS); err != nil {
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

// handleATRN answers ATRN and, when it is granted, reverses the roles and
// delivers. It writes its reply itself, refusal or not, and reports it to
// the Trace once, here and nowhere else.
func (s *session) handleATRN(ctx context.Context, arg string) error {
	domains, refusal := s.grantATRN(ctx, arg)
	if refusal != nil {
		// The Trace hears of the reply once it is out: the refusal, or
		// the 421 that replaces it when MaxErrors is reached.
		err := s.result(refusal)
		s.observeATRN()
		return err
	}
	s.log = s.log.With("domains", domains)
	s.domains = domains
	err := s.replyLine(250, replyReversing)
	s.observeATRN()
	if err != nil {
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

// grantATRN decides on ATRN arg: the domains to deliver, or the refusal.
// It calls the rate limit, the Authorizer and the Queue's HasMail at most
// once each.
func (s *session) grantATRN(ctx context.Context, arg string) ([]string, *Error) {
	// An authenticated session runs under TLS whenever RequireTLS is
	// set (AUTH needs it), so only a session in the initial state is
	// told to start TLS first.
	refusal := ErrAuthRequired
	if s.p.RequireTLS && !s.isTLS {
		refusal = errTLSRequired
	}
	if e := s.checkState(refusal, StateAuthenticated); e != nil {
		return nil, e
	}
	if !s.p.atrnLimits.allow(s.identity, time.Now()) {
		s.log.Info("odmr: ATRN refused", "reason", "rate limit")
		return nil, errATRNRate
	}
	domains, err := ParseATRN(arg)
	if err != nil {
		return nil, errBadArguments.withMessage("%s", errText(err))
	}
	// The customer waits on these two calls: a backend that stops
	// answering costs it a 451, not the rest of its session.
	dctx, cancel := s.backendCtx(ctx)
	allowed, err := s.p.Authorizer.Domains(dctx, s.identity)
	cancel()
	if err != nil {
		s.log.Warn("odmr: domain authorizer failed", "err", err)
		return nil, ErrTryLater
	}
	permitted := make(map[string]bool, len(allowed))
	var all []string
	for _, d := range allowed {
		d = RecipientDomain("@" + d) // A-labels, as ParseATRN gives them
		if d != "" && !permitted[d] {
			permitted[d] = true
			all = append(all, d)
		}
	}
	if len(domains) == 0 {
		domains = all
		if len(domains) == 0 {
			s.log.Info("odmr: ATRN refused", "reason", "identity has no domains")
			return nil, errNoDomains
		}
	}
	for _, d := range domains {
		if !permitted[d] {
			s.log.Info("odmr: ATRN refused", "domains", domains, "denied", d)
			return nil, errDomainDenied.withArgs(d)
		}
	}
	hctx, cancel := s.backendCtx(ctx)
	has, err := s.p.Queue.HasMail(hctx, domains)
	cancel()
	if err != nil {
		s.log.Warn("odmr: queue failed", "domains", domains, "err", err)
		return nil, ErrTryLater
	}
	if !has {
		s.log.Info("odmr: no mail", "domains", domains)
		return nil, ErrNoMail
	}
	return domains, nil
}

// closing is a handler's result that ends the session with a reply: why
// it ends, and the last thing the customer hears.
type closing struct {
	reply *Error
	err   error
}

func (c *closing) Error() string { return c.err.Error() }
func (c *closing) Unwrap() error { return c.err }

// result is the one place a handler's result reaches the wire, as in
// go-imap's imapserver: nil means the handler wrote its own success reply
// and the session goes on; an *Error is a refused command, written and
// counted (fail); a *closing is written, and ends the session; any other
// error ends it without a reply: the connection failed or was handed
// over. Only an *Error itself is a reply, not one an error wraps: after
// the swap, deliver's errors wrap the customer's replies.
func (s *session) result(err error) error {
	switch e := err.(type) {
	case nil:
		return nil
	case *Error:
		return s.fail(e)
	case *closing:
		s.reply(e.reply)
		return e.err
	}
	return err
}

// checkState is the state check at the top of a handler (go-imap's
// checkState): refusal, unless the session is in one of the states valid.
func (s *session) checkState(refusal *Error, valid ...State) *Error {
	for _, st := range valid {
		if s.State() == st {
			return nil
		}
	}
	return refusal
}

// fail sends an error reply and counts it; too many errors end the session.
func (s *session) fail(e *Error) error {
	if e.Code >= 500 {
		s.errs++
		if s.errs >= orDefault(s.p.MaxErrors, defaults.MaxErrors) {
			s.reply(errTooManyErrors)
			return errors.New("odmr: too many errors")
		}
	}
	return s.reply(e)
}

// reply sends e as a single-line reply.
func (s *session) reply(e *Error) error {
	s.noteReply(e)
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
	s.lastCode = code
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
	s.conn.SetWriteDeadline(time.Now().Add(orDefault(s.p.WriteTimeout, defaults.WriteTimeout)))
	return s.bw.Flush()
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
	fmt.Fprintf(s.p.Debug, "%s %s%s\n", s.raw.RemoteAddr(), prefix, termsafe.Escape(line))
}
