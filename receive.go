package odmr

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/mailbox"
	"github.com/go-odmr/odmr/internal/oneconn"
)

// DSNSink is an optional interface of a [MessageSink] that takes on the
// delivery status notification requests of [Envelope.DSN] (RFC 3461): it
// passes them to a server that honours them, as [SMTPSink] does, or
// sends the notifications itself. A [Customer] offers DSN to the provider
// only when its Sink implements DSNSink and PassesDSN returns true. With
// other sinks (a Maildir is the end of the line, and sends nothing) the
// customer does not offer DSN, and the provider answers for the requests:
// its queue sends the "relayed" notification NOTIFY=SUCCESS asks for.
type DSNSink interface {
	PassesDSN() bool
}

// DSNProber is an optional interface of a [DSNSink] whose target may or
// may not honour DSN requests, as a local server that does not offer DSN
// would drop them. Once per fetch, when PassesDSN is true, the customer
// asks ProbeDSN, before it greets the provider, and offers DSN only when
// it returns true; when it returns an error, DSN is not offered and the
// error is logged. ctx bounds the probe.
type DSNProber interface {
	ProbeDSN(ctx context.Context) (bool, error)
}

// dsnProbeTimeout bounds a DSNProber's probe: the provider is waiting for
// the customer's greeting meanwhile.
const dsnProbeTimeout = 30 * time.Second

// RecipientChecker is an optional interface of a [MessageSink]. A sink
// that implements it is asked about each recipient at RCPT time, so the
// provider learns which recipients failed and why, one by one: a message
// has a single reply to its data, but each RCPT has its own.
type RecipientChecker interface {
	// CheckRecipient accepts (nil) or refuses rcpt for the transaction
	// described by env: From, Size, Body and UTF8 as MAIL FROM gave them,
	// and To holding the recipients accepted so far. An *Error is the reply
	// the provider is sent (550 for an unknown user, 452 for a full
	// mailbox); any other error is answered 451 and logged.
	CheckRecipient(ctx context.Context, env Envelope, rcpt string) error
}

// ReversedSession describes the session a message arrived in after the
// role swap. A [MessageSink] or [RecipientChecker] of a [Customer] finds
// it in its context with [ReversedSessionFromContext].
type ReversedSession struct {
	// Provider is the name the provider gave in its EHLO or HELO.
	Provider string
	// RemoteAddr is the provider's address.
	RemoteAddr net.Addr
	// TLS is the state of the connection's TLS, nil in clear text.
	TLS *tls.ConnectionState
}

type reversedSessionKey struct{}

// ReversedSessionFromContext returns the ReversedSession in ctx, and
// whether there is one: there is in the context a Customer gives its sink.
func ReversedSessionFromContext(ctx context.Context) (ReversedSession, bool) {
	info, ok := ctx.Value(reversedSessionKey{}).(ReversedSession)
	return info, ok
}

// errBareLineEnding refuses a message with a CR or LF that is not part of
// a CRLF pair (RFC 5321 section 2.3.8): the ambiguity behind SMTP
// smuggling.
var errBareLineEnding = &smtp.SMTPError{
	Code:         554,
	EnhancedCode: smtp.EnhancedCode{5, 6, 0},
	Message:      "Message contains a bare CR or LF; lines must end with CRLF",
}

// maxDomainLength is the longest EHLO or HELO name the customer takes
// (RFC 5321 section 4.5.3.1.2).
const maxDomainLength = 255

// maxLineLength bounds a line of the reversed session, commands and
// message lines alike. RFC 5321 allows 1000 bytes, but mail with longer
// lines exists, and refusing it would bounce it: only a line too long to
// be text is refused.
const maxLineLength = 64 << 10

// errLineTooLongData refuses a message with a line over maxLineLength.
var errLineTooLongData = &smtp.SMTPError{
	Code:         554,
	EnhancedCode: smtp.EnhancedCode{5, 6, 0},
	Message:      "Message has a line longer than 64 KiB",
}

// receive serves the reversed session with go-smtp's server, which hands
// each message to c.Sink. go-smtp only serves listeners, so the connection
// is wrapped as a listener that yields it once; when it closes, the
// server is shut down and every goroutine it started has ended before
// receive returns.
func (c *Customer) receive(ctx context.Context, conn *idleConn, res *FetchResult, log *slog.Logger) error {
	rcv := &receiver{
		ctx:     ctx,
		conn:    conn,
		host:    c.hostname(),
		trace:   !c.NoReceivedHeader,
		sink:    c.Sink,
		log:     log,
		prefix:  strconv.FormatInt(time.Now().UnixNano(), 36),
		maxSize: c.MaxMessageSize,
	}
	rcv.accept, _ = AcceptedDomainsFromContext(ctx)
	rcv.routing, _ = ctx.Value(routedLocalPartsKey{}).(bool)
	srv := smtp.NewServer(rcv)
	srv.Domain = c.hostname()
	if c.MaxMessageSize > 0 {
		// go-smtp v0.25.1 refuses a message of exactly MaxMessageBytes
		// (its data reader fails once the limit is used up, before it
		// sees the end of the data): give it one byte more and enforce
		// the limit here, at MAIL and while reading.
		srv.MaxMessageBytes = c.MaxMessageSize + 1
	}
	srv.EnableSMTPUTF8 = true
	if ds, ok := c.Sink.(DSNSink); ok && ds.PassesDSN() {
		srv.EnableDSN = true
		if p, ok := c.Sink.(DSNProber); ok {
			pctx, cancel := context.WithTimeout(ctx, dsnProbeTimeout)
			offered, err := p.ProbeDSN(pctx)
			cancel()
			switch {
			case err != nil:
				log.Warn("odmr: could not ask the local server whether it offers DSN; not offering DSN to the provider", "err", err)
			case !offered:
				log.Info("odmr: the local server does not offer DSN; not offering it to the provider, which answers the requests")
			}
			srv.EnableDSN = offered && err == nil
		}
	}
	srv.MaxLineLength = maxLineLength
	srv.ErrorLog = smtpLogger{log}

	l := oneconn.New(&serverConn{Conn: conn, rcv: rcv})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	<-l.Done()
	// The session has closed the connection; Shutdown closes the listener
	// and waits for the session's goroutine, and Serve then returns.
	srv.Shutdown(context.Background())
	<-served
	// A BDAT transfer runs the sink in a goroutine of its own that the
	// server does not wait for.
	rcv.inflight.Wait()

	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	rcv.addTo(res)

	connErr := conn.err()
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case rcv.cut != nil:
		return fmt.Errorf("odmr: connection to the provider lost during a message (it stays queued): %w", rcv.cut)
	case rcv.openTx && connErr != nil && !errors.Is(connErr, net.ErrClosed):
		return fmt.Errorf("odmr: connection to the provider lost during a transaction: %w", connErr)
	case errors.As(connErr, &ne) && ne.Timeout():
		return fmt.Errorf("odmr: the provider sent nothing for %v", conn.idle)
	}
	if rcv.mails == 0 {
		// 250 to ATRN, then QUIT or a closed connection before any
		// MAIL: RFC 2645 section 5.2.1 allows it, Exim does it.
		res.NoMail = true
	}
	if connErr != nil && !errors.Is(connErr, io.EOF) && !errors.Is(connErr, net.ErrClosed) {
		log.Debug("odmr: provider left without QUIT", "err", connErr)
	}
	return nil
}

// errPeerEOF is what go-smtp reads when the provider closes the
// connection. It matches net.ErrClosed, so that go-smtp ends the session
// quietly, as it does at io.EOF, instead of answering 421.
var errPeerEOF error = peerEOF{}

type peerEOF struct{}

func (peerEOF) Error() string { return "connection closed by the provider" }

func (peerEOF) Is(target error) bool { return target == net.ErrClosed }

// serverConn is the connection as go-smtp's server sees it. It reads
// errPeerEOF where the connection gives io.EOF: go-smtp copies a BDAT
// chunk with io.Copy, which takes io.EOF for the end of the data, so a
// connection closed inside the last chunk would hand the sink a truncated
// message as if it were whole; any other error makes the copy fail and
// the message is abandoned.
//
// It also mends three replies of go-smtp v0.25.1, which writes each reply
// line with a Write of its own:
//   - the first line of the EHLO reply, "250-Hello <client>", gets the
//     customer's name in front, as RFC 5321 section 4.1.1.1 wants the
//     server's domain there; the HELO reply likewise;
//   - "SIZE n" advertises the customer's MaxMessageSize, not the one byte
//     more that go-smtp is given (see receive);
//   - go-smtp refuses a BDAT chunk over the size limit itself, without
//     the session seeing it: the refusal is counted here, unless the
//     session made it (a sink may use the same words) and counted it.
type serverConn struct {
	net.Conn
	rcv *receiver
}

func (c *serverConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		err = errPeerEOF
	}
	return n, err
}

func (c *serverConn) Write(p []byte) (int, error) {
	line, ok := bytes.CutSuffix(p, []byte("\r\n"))
	if !ok || len(line) < 4 || bytes.IndexByte(line, '\n') >= 0 {
		return c.Conn.Write(p)
	}
	code, text := string(line[:4]), string(line[4:])
	counted := false
	if code[0] == '4' || code[0] == '5' {
		c.rcv.mu.Lock()
		counted, c.rcv.replied = c.rcv.replied, false
		c.rcv.mu.Unlock()
	}
	var mended string
	switch {
	case code == "250-" && strings.HasPrefix(text, "Hello "):
		mended = code + c.rcv.host + " " + text
		c.rcv.mu.Lock()
		c.rcv.helo = false
		c.rcv.mu.Unlock()
	case code == "250 " && strings.HasPrefix(text, "2.0.0 Hello "):
		mended = code + c.rcv.host + " " + strings.TrimPrefix(text, "2.0.0 ")
		c.rcv.mu.Lock()
		c.rcv.helo = true
		c.rcv.mu.Unlock()
	case (code == "250-" || code == "250 ") && strings.HasPrefix(text, "SIZE ") && c.rcv.maxSize > 0:
		mended = code + "SIZE " + strconv.FormatInt(c.rcv.maxSize, 10)
	case code == "552 " && text == "5.3.4 Max message size exceeded" && !counted:
		c.rcv.chunkRefused()
	case code == "250 " && text == "2.0.0 Continue":
		c.rcv.chunkContinued()
	}
	if mended == "" {
		return c.Conn.Write(p)
	}
	if _, err := io.WriteString(c.Conn, mended+"\r\n"); err != nil {
		return 0, err
	}
	return len(p), nil
}

// receiver is the go-smtp backend of one reversed session.
type receiver struct {
	ctx     context.Context
	conn    *idleConn
	host    string // the customer's name, for Received:
	trace   bool   // prepend Received:
	sink    MessageSink
	log     *slog.Logger
	prefix  string // of message IDs
	maxSize int64  // 0 for no limit

	inflight sync.WaitGroup // Data calls under way
	accept   []string       // the domains recipients may be in, canonical
	routing  bool           // Customer.AllowRoutedLocalParts

	mu      sync.Mutex
	session *recvSession // the session, once EHLO has made it
	replied bool         // the session counted the refusal go-smtp writes next
	helo    bool         // the provider said HELO, not EHLO
	mails   int          // MAIL commands accepted
	openTx  bool         // a transaction was open when the session ended
	cut     error        // the connection failed in the middle of a message
	fetchCounts
}

// NewSession is called by go-smtp at the provider's EHLO.
func (r *receiver) NewSession(c *smtp.Conn) (smtp.Session, error) {
	if len(c.Hostname()) > maxDomainLength {
		return nil, &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Domain name too long"}
	}
	s := &recvSession{r: r, conn: c, peer: c.Hostname(), addr: c.Conn().RemoteAddr()}
	s.entered = sync.NewCond(&s.mu)
	r.mu.Lock()
	r.session = s
	r.mu.Unlock()
	r.mu.Lock()
	r.session = s
	r.mu.Unlock()
	return s, nil
}

// current is the session, once EHLO has made it; nil before.
func (r *receiver) current() *recvSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.session
}

// chunkRefused counts a message go-smtp refused for its size in the
// middle of a BDAT transfer. The same reply to MAIL FROM with a SIZE over
// the limit comes before the session sees the MAIL: it is not a message
// refused, and no transaction is open then.
func (r *receiver) chunkRefused() {
	s := r.current()
	if s == nil {
		return
	}
	s.mu.Lock()
	open := s.inTx
	s.mu.Unlock()
	if open {
		s.refused()
		r.log.Info("odmr: message refused", "reply", 552, "err", "over MaxMessageSize")
	}
}

// chunkContinued notes that go-smtp accepted a BDAT chunk that is not the
// last. When the transfer's Data has not started (the chunks so far were
// empty), the next MAIL must wait for it: see waitBDAT.
func (r *receiver) chunkContinued() {
	s := r.current()
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.pipe == nil {
		s.awaitData = true
	}
	s.mu.Unlock()
}

// reply turns a sink's error into the reply for the provider. An error
// that carries a 4xx or 5xx reply is sent as it is; anything else is
// logged and answered 451, never echoed to the peer.
func (r *receiver) reply(err error, what string, attrs ...any) *smtp.SMTPError {
	if e := AsError(err); e != nil && e.Code >= 400 && e.Code < 600 {
		out := &smtp.SMTPError{Code: e.Code, EnhancedCode: smtp.EnhancedCode(e.EnhancedCode), Message: oneLine(e.Message)}
		if e.EnhancedCode == (EnhancedCode{}) {
			out.EnhancedCode = smtp.EnhancedCodeNotSet
		}
		return out
	}
	r.log.Error("odmr: sink failed; answering 451", append(attrs, "in", what, "err", err)...)
	return errLocalError.toSMTPError()
}

// oneLine keeps a reply text from breaking the reply.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, s)
}

// recvSession is the go-smtp session: one SMTP transaction at a time.
type recvSession struct {
	r    *receiver
	conn *smtp.Conn
	peer string   // the provider's EHLO name
	addr net.Addr // the provider's address
	mu   sync.Mutex
	env  Envelope
	inTx bool
	tx   *txEnd // how the open transaction ended, once it has
	n    int

	// pipe is the last BDAT transfer's reader; see waitBDAT.
	pipe *io.PipeReader
	// awaitData is set when go-smtp has accepted a BDAT chunk of a
	// transfer whose Data has not started yet (a zero-length first
	// chunk); entered is signalled when a Data call starts.
	awaitData bool
	entered   *sync.Cond
}

// waitBDAT waits until go-smtp's goroutine for the last BDAT transfer has
// finished. In go-smtp v0.25.1 that goroutine, after Data returns, sends
// its result on a channel field of the connection that the next BDAT
// transfer replaces: when a transfer is abandoned (RSET, a chunk over the
// size limit) and the next one starts at once, the old result can be
// taken for the new message's. The goroutine closes the pipe's reader
// after that send, so a read from it returning io.ErrClosedPipe means it
// is done. A transfer always ends (its writer closed) before the next
// MAIL, so the read does not wait for data.
func (s *recvSession) waitBDAT() {
	// Both waits below end within the idle timeout whatever happens: a
	// goroutine of go-smtp that never came would otherwise stall the
	// session with no read pending to time out.
	ctx, cancel := context.WithTimeout(s.r.ctx, s.r.conn.idle)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.entered.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	// A transfer whose chunks were all empty has a goroutine that has not
	// called Data yet: wait until it has, so that its pipe is known. It
	// finds no transaction open and returns at once.
	for s.awaitData && ctx.Err() == nil {
		s.entered.Wait()
	}
	s.awaitData = false
	pr := s.pipe
	s.pipe = nil
	s.mu.Unlock()
	for pause := time.Microsecond; pr != nil; pause = min(2*pause, time.Millisecond) {
		if _, err := pr.Read(nil); err == io.ErrClosedPipe || ctx.Err() != nil {
			break
		}
		time.Sleep(pause)
	}
	if ctx.Err() != nil && s.r.ctx.Err() == nil {
		s.r.log.Warn("odmr: go-smtp's goroutine for an abandoned BDAT transfer did not finish", "waited", s.r.conn.idle)
	}
}

// txEnd tells a BDAT transfer that go-smtp abandoned why it was: an RSET
// (or QUIT) from the provider, or a connection that failed. go-smtp
// closes the transfer's pipe and then calls Reset or Logout, in its own
// goroutine; the sink reads the pipe in another, so the connection's
// state is taken at that call, not when the sink notices.
type txEnd struct {
	once    sync.Once
	done    chan struct{}
	connErr error // the connection's read error when the transaction ended
}

func newTxEnd() *txEnd { return &txEnd{done: make(chan struct{})} }

func (t *txEnd) end(connErr error) {
	t.once.Do(func() {
		t.connErr = connErr
		close(t.done)
	})
}

// endTx records the end of the open transaction, if any.
func (s *recvSession) endTx() {
	s.mu.Lock()
	tx := s.tx
	s.env, s.inTx, s.tx = Envelope{}, false, nil
	s.mu.Unlock()
	if tx != nil {
		tx.end(s.r.conn.err())
	}
}

// Reset ends the transaction (RSET, or the end of DATA).
func (s *recvSession) Reset() { s.endTx() }

// Logout is called when the connection ends.
func (s *recvSession) Logout() error {
	s.mu.Lock()
	open := s.inTx
	s.mu.Unlock()
	s.endTx()
	if open {
		s.r.mu.Lock()
		s.r.openTx = true
		s.r.mu.Unlock()
	}
	return nil
}

// Mail starts a transaction. The sender reaches the sink with its local
// part quoted as the provider sent it.
func (s *recvSession) Mail(from string, opts *smtp.MailOptions) error {
	from, ok := mailbox.Quote(from)
	if !ok {
		return errBadAddress
	}
	s.waitBDAT()
	// A second MAIL without RSET ends the transaction before it.
	s.endTx()
	s.mu.Lock()
	s.peer = s.conn.Hostname() // the name of the latest EHLO or HELO
	s.mu.Unlock()
	env := Envelope{From: from, DSN: dsnFromMail(opts)}
	if opts != nil {
		env.Size, env.Body, env.UTF8 = opts.Size, BodyType(opts.Body), opts.UTF8
	}
	if s.r.maxSize > 0 && env.Size > s.r.maxSize {
		return smtp.ErrDataTooLarge
	}
	s.mu.Lock()
	s.env, s.inTx, s.tx = env, true, newTxEnd()
	s.mu.Unlock()
	s.r.mu.Lock()
	s.r.mails++
	s.r.mu.Unlock()
	return nil
}

// errBadAddress refuses an address that cannot be written back on the
// wire: a control character in its local part.
var errBadAddress = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad address syntax"}

// Rcpt adds a recipient of the customer's domains, asking the sink first
// if it is a RecipientChecker. The address reaches the sink with its
// local part quoted as the provider sent it (see mailbox.Quote).
func (s *recvSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	to, ok := mailbox.Quote(to)
	if !ok {
		s.refusedRcpt()
		return errBadAddress
	}
	if why := recipientRefusal(to, s.r.accept, s.r.routing); why != "" {
		s.refusedRcpt()
		s.r.log.Warn("odmr: recipient outside the customer's domains refused", "to", logValue(to))
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: why}
	}
	s.mu.Lock()
	dsn := s.env.DSN.Clone()
	s.mu.Unlock()
	addRcptDSN(&dsn, to, opts)
	if rc, ok := s.r.sink.(RecipientChecker); ok {
		s.mu.Lock()
		env := s.env
		env.To = append([]string(nil), s.env.To...)
		s.mu.Unlock()
		env.DSN = dsn.Clone()
		if err := rc.CheckRecipient(s.sinkContext(), env, to); err != nil {
			s.refusedRcpt()
			s.localRefused(err)
			s.r.log.Info("odmr: recipient refused", "from", env.From, "to", to, "err", err)
			return s.r.reply(err, "CheckRecipient", "to", to)
		}
	}
	s.mu.Lock()
	s.env.To = append(s.env.To, to)
	s.env.DSN = dsn
	s.mu.Unlock()
	return nil
}

// Data hands the message to the sink as it streams in.
func (s *recvSession) Data(r io.Reader) error {
	s.r.inflight.Add(1)
	defer s.r.inflight.Done()
	s.mu.Lock()
	s.n++
	env := s.env
	env.To = append([]string(nil), s.env.To...)
	env.DSN = s.env.DSN.Clone()
	env.ID = s.r.prefix + "-" + strconv.Itoa(s.n)
	tx := s.tx
	if pr, ok := r.(*io.PipeReader); ok {
		s.pipe = pr
		s.awaitData = false
		s.entered.Broadcast()
	}
	s.mu.Unlock()
	if tx == nil {
		// go-smtp's goroutine for a BDAT transfer that was abandoned
		// before it started: nothing to deliver.
		return smtp.ErrDataReset
	}
	env.Received = time.Now()

	body := &bodyReader{r: r, max: s.r.maxSize}
	var msg io.Reader = body
	if s.r.trace {
		msg = io.MultiReader(strings.NewReader(s.received(env)), body)
	}
	err := s.r.sink.Deliver(s.sinkContext(), env, msg)
	if err == nil && body.err == nil && !body.eof {
		// The sink must read the message to its end. A sink that returns
		// early may have stored a truncated message: refuse it.
		if n, _ := io.Copy(io.Discard, body); n > 0 {
			err = fmt.Errorf("odmr: sink returned with %d bytes of the message unread", n)
		}
	}
	var se *smtp.SMTPError
	switch {
	case body.err == nil && err == nil:
		s.r.mu.Lock()
		s.r.messages++
		s.r.recipients += len(env.To)
		s.r.bytes += body.n
		s.r.mu.Unlock()
		s.r.log.Debug("odmr: message received", "id", env.ID, "from", env.From, "rcpts", len(env.To), "bytes", body.n)
		return nil
	case body.err == nil:
		s.refused()
		s.localRefused(err)
		return s.r.reply(err, "Deliver", "id", env.ID, "from", env.From)
	case errors.As(body.err, &se):
		// Too large, or a bare line ending: a reply of its own.
		s.refused()
		s.r.log.Info("odmr: message refused", "id", env.ID, "from", env.From, "reply", se.Code, "err", se.Message)
		return se
	case errors.Is(body.err, smtp.ErrTooLongLine):
		s.refused()
		return errLineTooLongData
	case errors.Is(body.err, smtp.ErrDataReset) && tx != nil:
		// go-smtp abandoned a BDAT transfer: learn why.
		abandoned := false
		select {
		case <-tx.done:
			abandoned = tx.connErr == nil
		case <-s.r.ctx.Done():
		}
		if abandoned {
			// RSET or QUIT from the provider (RFC 3030 section 3).
			return body.err
		}
	}
	// The connection failed under the message.
	cut := body.err
	if err := s.r.conn.err(); err != nil {
		cut = err
	}
	s.r.mu.Lock()
	if s.r.cut == nil {
		s.r.cut = cut
	}
	s.r.mu.Unlock()
	return errLostConnection.toSMTPError()
}

// received returns the Received: header field the customer prepends to a
// message (RFC 5321 section 4.4), folded, with its CRLF:
//
//	Received: from provider.example.net ([192.0.2.1])
//		by customer.example.org with ESMTPS id lx9p2k1-1
//		for <user@example.org>; Tue, 24 Nov 2026 18:31:20 +0000
func (s *recvSession) received(env Envelope) string {
	var b strings.Builder
	b.WriteString("Received: from ")
	s.mu.Lock()
	peer := s.peer
	s.mu.Unlock()
	b.WriteString(traceWord(peer, "unknown"))
	if lit := addressLiteral(s.addr); lit != "" {
		b.WriteString(" (" + lit + ")")
	}
	b.WriteString("\r\n\tby " + traceWord(s.r.host, "localhost") + " with ")
	s.r.mu.Lock()
	helo := s.r.helo
	s.r.mu.Unlock()
	// RFC 3848 and RFC 6531 section 3.7.3.
	proto := "ESMTP"
	switch {
	case env.UTF8:
		proto = "UTF8SMTP"
	case helo:
		proto = "SMTP"
	}
	if _, ok := s.r.conn.ConnectionState(); ok {
		proto += "S"
	}
	b.WriteString(proto + " id " + env.ID)
	// The recipient only when there is one, and only when it can be
	// written as it is.
	if len(env.To) == 1 && len(env.To[0]) <= maxDomainLength && traceWord(env.To[0], "") == env.To[0] {
		b.WriteString("\r\n\tfor <" + env.To[0] + ">")
	}
	b.WriteString("; " + env.Received.Format(time.RFC1123Z) + "\r\n")
	return b.String()
}

// traceWord keeps a name from the peer from breaking the header field:
// anything but printable ASCII other than space, parentheses, angle
// brackets and ";" becomes "_", and it is cut at 255 bytes.
func traceWord(s, empty string) string {
	if s == "" {
		return empty
	}
	if len(s) > maxDomainLength {
		s = s[:maxDomainLength]
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r >= 0x7f || r == '(' || r == ')' || r == '<' || r == '>' || r == ';' {
			return '_'
		}
		return r
	}, s)
}

// addressLiteral is addr as an RFC 5321 address literal, "[192.0.2.1]"
// or "[IPv6:2001:db8::1]"; "" when addr is not an IP address.
func addressLiteral(addr net.Addr) string {
	var ip net.IP
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip = a.IP
	default:
		return ""
	}
	if ip4 := ip.To4(); ip4 != nil {
		return "[" + ip4.String() + "]"
	}
	return "[IPv6:" + ip.String() + "]"
}

// sinkContext is the context a sink is called with: the fetch's, with
// the session's ReversedSession.
func (s *recvSession) sinkContext() context.Context {
	s.mu.Lock()
	info := ReversedSession{Provider: s.peer, RemoteAddr: s.addr}
	s.mu.Unlock()
	if cs, ok := s.r.conn.ConnectionState(); ok {
		info.TLS = &cs
	}
	return context.WithValue(s.r.ctx, reversedSessionKey{}, info)
}

// refusedRcpt counts a recipient refused at RCPT.
func (s *recvSession) refusedRcpt() {
	s.r.mu.Lock()
	s.r.refusedRcpts++
	s.r.replied = true
	s.r.mu.Unlock()
}

// logValue bounds and escapes a peer's text for a log record.
func logValue(s string) string {
	const max = 256
	if len(s) > max {
		s = s[:max] + "..."
	}
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}

// localRefused counts a refusal of the sink.
func (s *recvSession) localRefused(err error) {
	s.r.mu.Lock()
	s.r.localRefused++
	if s.r.localErr == nil {
		s.r.localErr = err
	}
	s.r.mu.Unlock()
}

func (s *recvSession) refused() {
	s.r.mu.Lock()
	s.r.refused++
	s.r.replied = true
	s.r.mu.Unlock()
}

// bodyReader is the message as the sink reads it. It counts the bytes,
// refuses a CR or LF that is not part of a CRLF pair, and remembers the
// error that ended the stream.
type bodyReader struct {
	r   io.Reader
	max int64 // 0 for no limit
	n   int64
	cr  bool // the last byte read was a CR
	eof bool
	err error // the first error other than io.EOF
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.eof {
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	if b.max > 0 && b.n+int64(n) > b.max {
		n = int(b.max - b.n)
		err = smtp.ErrDataTooLarge
	}
	if bad := b.check(p[:n]); bad >= 0 {
		b.n += int64(bad)
		b.err = errBareLineEnding
		return bad, b.err
	}
	b.n += int64(n)
	switch {
	case err == io.EOF && b.cr:
		b.err = errBareLineEnding
		return n, b.err
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.err = err
	}
	return n, err
}

// check returns the index of the first bare CR or LF in p, or -1. A CR at
// the end of p is judged with the next chunk.
func (b *bodyReader) check(p []byte) int {
	if len(p) == 0 {
		return -1
	}
	bad := len(p)
	if b.cr && p[0] != '\n' {
		bad = 0
	}
	for i := 0; i < bad; {
		j := bytes.IndexByte(p[i:bad], '\n')
		if j < 0 {
			break
		}
		j += i
		if (j == 0 && !b.cr) || (j > 0 && p[j-1] != '\r') {
			bad = j
			break
		}
		i = j + 1
	}
	for i := 0; i < bad; {
		j := bytes.IndexByte(p[i:bad], '\r')
		if j < 0 {
			break
		}
		j += i
		if j+1 < len(p) && p[j+1] != '\n' {
			bad = j
			break
		}
		i = j + 1
	}
	if bad < len(p) {
		return bad
	}
	b.cr = p[len(p)-1] == '\r'
	return -1
}

// smtpLogger passes go-smtp's server log to slog: panics as errors, the
// rest (mostly connections that ended abruptly) at debug level.
type smtpLogger struct{ log *slog.Logger }

func (l smtpLogger) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }

func (l smtpLogger) Println(v ...any) { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l smtpLogger) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		l.log.Error("odmr: smtp server: " + msg)
		return
	}
	l.log.Debug("odmr: smtp server: " + msg)
}
