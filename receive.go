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

	"github.com/go-odmr/odmr/internal/mailbox"
	"github.com/go-odmr/odmr/internal/nospace"
	"github.com/go-odmr/odmr/internal/smtpserver"
)

// dsnProbeTimeout bounds a DSNProber's probe: the provider is waiting for
// the customer's greeting meanwhile.
const dsnProbeTimeout = 30 * time.Second

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
// smuggling. The sink reads it, as it reads errMessageTooLarge.
var errBareLineEnding = &Error{
	Code:         554,
	EnhancedCode: EnhancedCode{5, 6, 0},
	Message:      "Message contains a bare CR or LF; lines must end with CRLF",
}

// errMessageTooLarge refuses a message over Customer.MaxMessageSize.
var errMessageTooLarge = &Error{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
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
var errLineTooLongData = &Error{
	Code:         554,
	EnhancedCode: EnhancedCode{5, 6, 0},
	Message:      "Message has a line longer than 64 KiB",
}

// receive serves the reversed session with package smtpserver, which
// hands each message to c.Sink. Every goroutine it started has ended
// when it returns.
func (c *Customer) receive(ctx context.Context, conn *idleConn, res *FetchResult, progress func(fetchCounts), log *slog.Logger) error {
	rcv := &receiver{
		ctx:      ctx,
		conn:     conn,
		host:     c.hostname(),
		trace:    !c.NoReceivedHeader,
		sink:     c.Sink,
		log:      log,
		prefix:   strconv.FormatInt(time.Now().UnixNano(), 36),
		maxSize:  c.MaxMessageSize,
		progress: progress,
	}
	rcv.accept, _ = AcceptedDomainsFromContext(ctx)
	rcv.routing, _ = ctx.Value(routedLocalPartsKey{}).(bool)
	var prober DSNProber
	if ss, ok := c.Sink.(SessionSink); ok {
		local, err := ss.Begin(ctx)
		if err != nil {
			log.Warn("odmr: could not begin the local session; refusing this fetch's mail, which stays queued", "err", err)
			rcv.beginErr = err
		} else {
			rcv.local = local
			defer func() {
				if err := local.Close(); err != nil {
					log.Debug("odmr: closing the local session", "err", err)
				}
			}()
			prober, _ = local.(DSNProber)
		}
	}
	smtpserver.Serve(ctx, conn, smtpserver.Config{
		Domain:          c.hostname(),
		MaxMessageBytes: c.MaxMessageSize,
		MaxLineLength:   maxLineLength,
		SMTPUTF8:        true,
		DSN:             rcv.beginErr == nil && c.offerDSN(ctx, log, prober),
		TransferWait:    conn.idle,
		ChunkTooLarge:   rcv.chunkRefused,
		Logger:          log,
	}, rcv)

	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	rcv.addTo(res)
	return rcv.outcome(res)
}

// offerDSN reports whether to offer DSN to the provider: when the sink
// passes DSN requests on, and, if it can tell, its target honours them.
// p, when not nil, is asked rather than the sink: the fetch's SinkSession.
func (c *Customer) offerDSN(ctx context.Context, log *slog.Logger, p DSNProber) bool {
	ds, ok := c.Sink.(DSNSink)
	if !ok || !ds.PassesDSN() {
		return false
	}
	if p == nil {
		if p, ok = c.Sink.(DSNProber); !ok {
			return true
		}
	}
	pctx, cancel := context.WithTimeout(ctx, dsnProbeTimeout)
	offered, err := p.ProbeDSN(pctx)
	cancel()
	switch {
	case err != nil:
		log.Warn("odmr: could not ask the local server whether it offers DSN; not offering DSN to the provider", "err", err)
	case !offered:
		log.Info("odmr: the local server does not offer DSN; not offering it to the provider, which answers the requests")
	}
	return offered && err == nil
}

// outcome is how the reversed session ended: nil when the provider left
// with no message cut, or why not. r.mu is held.
func (r *receiver) outcome(res *FetchResult) error {
	connErr := r.conn.err()
	var ne net.Error
	switch {
	case r.ctx.Err() != nil:
		return r.ctx.Err()
	case r.cut != nil:
		return fmt.Errorf("odmr: connection to the provider lost during a message (it stays queued): %w", r.cut)
	case r.openTx && connErr != nil && !errors.Is(connErr, net.ErrClosed):
		return fmt.Errorf("odmr: connection to the provider lost during a transaction: %w", connErr)
	case errors.As(connErr, &ne) && ne.Timeout():
		return fmt.Errorf("odmr: the provider sent nothing for %v", r.conn.idle)
	}
	if r.mails == 0 {
		// 250 to ATRN, then QUIT or a closed connection before any
		// MAIL: RFC 2645 section 5.2.1 allows it, Exim does it.
		res.NoMail = true
	}
	if connErr != nil && !errors.Is(connErr, io.EOF) && !errors.Is(connErr, net.ErrClosed) {
		r.log.Debug("odmr: provider left without QUIT", "err", connErr)
	}
	return nil
}

// receiver is the smtpserver backend of one reversed session.
type receiver struct {
	ctx   context.Context
	conn  *idleConn
	host  string // the customer's name, for Received:
	trace bool   // prepend Received:
	sink  MessageSink
	// local is the fetch's session of a SessionSink, which then takes
	// each step of each transaction in place of the sink; beginErr is
	// why Begin failed, and every transaction is refused.
	local    SinkSession
	beginErr error
	log      *slog.Logger
	prefix   string // of message IDs
	maxSize  int64  // 0 for no limit
	// progress reports the counts after each message taken; nil: none.
	progress func(fetchCounts)

	accept  []string // the domains recipients may be in, canonical
	routing bool     // Customer.AllowRoutedLocalParts

	mu      sync.Mutex
	session *recvSession // the session, once EHLO has made it
	mails   int          // MAIL commands accepted
	openTx  bool         // a transaction was open when the session ended
	cut     error        // the connection failed in the middle of a message
	fetchCounts
}

// NewSession is called at the provider's first EHLO or HELO.
func (r *receiver) NewSession(c *smtpserver.Conn) (smtpserver.Session, error) {
	if len(c.Hostname()) > maxDomainLength {
		return nil, serverError(&Error{Code: 501, EnhancedCode: EnhancedCode{5, 5, 2}, Message: "Domain name too long"})
	}
	s := &recvSession{r: r, conn: c, peer: c.Hostname(), addr: c.RemoteAddr()}
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

// chunkRefused counts a message that the SMTP server refused for its
// size in the middle of a BDAT transfer. The same reply to MAIL FROM
// with a SIZE over the limit comes before the session sees the MAIL: it
// is not a message refused, and no transaction is open then.
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

// reply turns a sink's error into the reply for the provider. An error
// that carries a 4xx or 5xx reply is sent as it is; anything else is
// logged and answered 451, never echoed to the peer.
func (r *receiver) reply(err error, what string, attrs ...any) *smtpserver.Error {
	if e := AsError(err); e != nil && e.Code >= 400 && e.Code < 600 {
		return serverError(e)
	}
	if nospace.Is(err) {
		// RFC 5321's reply for it, and RFC 3463's "mail system full":
		// the provider keeps the message and tries again later, as after
		// a 451, but its log says why.
		r.log.Error("odmr: sink out of space; answering 452", append(attrs, "in", what, "err", err)...)
		return serverError(errNoStorage)
	}
	r.log.Error("odmr: sink failed; answering 451", append(attrs, "in", what, "err", err)...)
	return serverError(errLocalError)
}

// serverError is e as package smtpserver takes a reply; a zero enhanced
// code is sent as X.0.0.
func serverError(e *Error) *smtpserver.Error {
	return &smtpserver.Error{Code: e.Code, EnhancedCode: [3]int(e.EnhancedCode), Message: oneLine(e.Message)}
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

// recvSession is the session of the reversed state: one SMTP
// transaction at a time.
type recvSession struct {
	r    *receiver
	conn *smtpserver.Conn
	peer string   // the provider's EHLO name
	addr net.Addr // the provider's address
	mu   sync.Mutex
	env  Envelope
	inTx bool
	// mailErr is the local session's error for the MAIL of the open
	// transaction: each RCPT is refused with it.
	mailErr error
	tx      *txEnd // how the open transaction ended, once it has
	n       int
}

// txEnd tells a BDAT transfer that the SMTP server abandoned why it was:
// an RSET (or QUIT) from the provider, or a connection that failed. The
// server ends the transfer's data and then calls Reset or Logout, in its
// own goroutine; the sink reads the data in another, so the connection's
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
	s.env, s.inTx, s.tx, s.mailErr = Envelope{}, false, nil, nil
	s.mu.Unlock()
	if tx != nil {
		tx.end(s.r.conn.err())
	}
}

// Reset ends the transaction (RSET, or the end of DATA).
func (s *recvSession) Reset() {
	s.endTx()
	s.resetLocal()
}

// resetLocal abandons the local session's open transaction, if any.
func (s *recvSession) resetLocal() {
	if s.r.local == nil {
		return
	}
	if err := s.r.local.Reset(s.r.ctx); err != nil {
		s.r.log.Debug("odmr: local session: RSET failed", "err", err)
	}
}

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
func (s *recvSession) Mail(from string, opts smtpserver.MailOptions) error {
	from, ok := mailbox.Quote(from)
	if !ok {
		return serverError(errBadAddress)
	}
	// A second MAIL without RSET ends the transaction before it.
	s.endTx()
	s.mu.Lock()
	s.peer = s.conn.Hostname() // the name of the latest EHLO or HELO
	s.mu.Unlock()
	env := Envelope{From: from, DSN: dsnFromMail(opts), Size: opts.Size, Body: BodyType(opts.Body), UTF8: opts.UTF8}
	if s.r.maxSize > 0 && env.Size > s.r.maxSize {
		return serverError(errMessageTooLarge)
	}
	mailErr := s.mailLocal(env)
	s.mu.Lock()
	s.env, s.inTx, s.tx, s.mailErr = env, true, newTxEnd(), mailErr
	s.mu.Unlock()
	s.r.mu.Lock()
	s.r.mails++
	s.r.mu.Unlock()
	return nil
}

// mailLocal starts the transaction of env in the fetch's local session,
// if there is one, and returns its error. The provider's MAIL is accepted
// whatever it is, and each RCPT refused with it: the refusal is then
// counted, and told, recipient by recipient, as with a RecipientChecker.
func (s *recvSession) mailLocal(env Envelope) error {
	switch {
	case s.r.beginErr != nil:
		return s.r.beginErr
	case s.r.local == nil:
		return nil
	}
	return s.r.local.Mail(s.sinkContext(), env)
}

// errBadAddress refuses an address that cannot be written back on the
// wire: a control character in its local part.
var errBadAddress = &Error{Code: 553, EnhancedCode: EnhancedCode{5, 1, 3}, Message: "Bad address syntax"}

// Rcpt adds a recipient of the customer's domains, asking the sink first
// if it is a RecipientChecker. The address reaches the sink with its
// local part quoted as the provider sent it (see mailbox.Quote).
func (s *recvSession) Rcpt(to string, opts smtpserver.RcptOptions) error {
	to, ok := mailbox.Quote(to)
	if !ok {
		s.refusedRcpt()
		return serverError(errBadAddress)
	}
	if why := recipientRefusal(to, s.r.accept, s.r.routing); why != "" {
		s.refusedRcpt()
		s.r.log.Warn("odmr: recipient outside the customer's domains refused", "to", logValue(to))
		return serverError(&Error{Code: 550, EnhancedCode: EnhancedCode{5, 7, 1}, Message: why})
	}
	s.mu.Lock()
	dsn := s.env.DSN.Clone()
	s.mu.Unlock()
	addRcptDSN(&dsn, to, opts)
	if s.r.local != nil || s.r.beginErr != nil {
		s.mu.Lock()
		env := s.env
		env.To = append([]string(nil), s.env.To...)
		err := s.mailErr
		s.mu.Unlock()
		env.DSN = dsn.Clone()
		if err == nil {
			err = s.r.local.Rcpt(s.sinkContext(), env, to)
		}
		if err != nil {
			s.refusedRcpt()
			s.localRefused(err)
			s.r.log.Info("odmr: recipient refused", "from", env.From, "to", to, "err", err)
			return s.r.reply(err, "local RCPT", "to", to)
		}
	} else if rc, ok := s.r.sink.(RecipientChecker); ok {
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
	env, tx := s.message()
	if tx == nil {
		// A BDAT transfer that was abandoned before its Data started:
		// nothing to deliver.
		return smtpserver.ErrDataReset
	}
	body := &bodyReader{r: r, max: s.r.maxSize}
	err := s.deliver(env, body)
	return s.dataReply(env, tx, body, err)
}

// message returns the envelope of the open transaction, with the
// message's ID and time of arrival, and how the transaction ends; a nil
// txEnd when no transaction is open.
func (s *recvSession) message() (Envelope, *txEnd) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	env := s.env
	env.To = append([]string(nil), s.env.To...)
	env.DSN = s.env.DSN.Clone()
	env.ID = s.r.prefix + "-" + strconv.Itoa(s.n)
	env.Received = time.Now()
	return env, s.tx
}

// deliver gives the message to the sink, behind the Received: field, and
// returns the sink's error.
func (s *recvSession) deliver(env Envelope, body *bodyReader) error {
	var msg io.Reader = body
	if s.r.trace {
		msg = &prefixReader{prefix: s.received(env), r: body}
	}
	var err error
	if s.r.local != nil {
		err = s.r.local.Data(s.sinkContext(), env, msg)
	} else {
		err = s.r.sink.Deliver(s.sinkContext(), env, msg)
	}
	if err == nil && body.err == nil && !body.eof {
		// The sink must read the message to its end. A sink that returns
		// early may have stored a truncated message: refuse it.
		if n, _ := io.Copy(io.Discard, body); n > 0 {
			err = fmt.Errorf("odmr: sink returned with %d bytes of the message unread", n)
		}
	}
	return err
}

// dataReply counts the message as received or refused and returns the
// reply to its data, given the sink's error and how reading it ended.
func (s *recvSession) dataReply(env Envelope, tx *txEnd, body *bodyReader, err error) error {
	var se *Error
	switch {
	case body.err == nil && err == nil:
		s.r.mu.Lock()
		s.r.messages++
		s.r.recipients += len(env.To)
		s.r.bytes += body.n
		fc := s.r.fetchCounts
		s.r.mu.Unlock()
		s.r.log.Debug("odmr: message received", "id", env.ID, "from", env.From, "rcpts", len(env.To), "bytes", body.n)
		if s.r.progress != nil {
			s.r.progress(fc)
		}
		return nil
	case body.err == nil:
		s.refused()
		s.localRefused(err)
		return s.r.reply(err, "Deliver", "id", env.ID, "from", env.From)
	case errors.As(body.err, &se):
		// Too large, or a bare line ending: a reply of its own.
		s.refused()
		s.r.log.Info("odmr: message refused", "id", env.ID, "from", env.From, "reply", se.Code, "err", se.Message)
		return serverError(se)
	case errors.Is(body.err, smtpserver.ErrLineTooLong):
		s.refused()
		return serverError(errLineTooLongData)
	case errors.Is(body.err, smtpserver.ErrDataReset) && s.abandoned(tx):
		// RSET or QUIT from the provider (RFC 3030 section 3).
		return body.err
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
	return serverError(errLostConnection)
}

// abandoned waits until the transaction of a BDAT transfer that the
// server abandoned has ended, and reports whether the provider ended it
// (RSET or QUIT) rather than a failed connection.
func (s *recvSession) abandoned(tx *txEnd) bool {
	select {
	case <-tx.done:
		return tx.connErr == nil
	case <-s.r.ctx.Done():
		return false
	}
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
	helo := s.conn.HELO()
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
	s.r.mu.Unlock()
}

// prefixReader reads prefix, then r: the Received: field, then the
// message. Unlike io.MultiReader it has no WriteTo method, which would
// allocate a 32 KiB buffer per message; io.Copy lends it the
// destination's ReadFrom or a buffer of its own instead.
type prefixReader struct {
	prefix string
	r      io.Reader
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.r.Read(b)
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
	if err == smtpserver.ErrDataTooLarge {
		// The server's own limit, one byte over MaxMessageSize.
		err = errMessageTooLarge
	}
	if b.max > 0 && b.n+int64(n) > b.max {
		n = int(b.max - b.n)
		err = errMessageTooLarge
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
