package main

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/crlf"
	"github.com/go-odmr/odmr/internal/lograte"
	"github.com/go-odmr/odmr/internal/mailbox"
	"github.com/go-odmr/odmr/internal/nospace"
	"github.com/go-odmr/odmr/internal/smtpserver"
	"github.com/go-odmr/odmr/internal/sockaddr"
	"github.com/go-odmr/odmr/spool"
)

// enqueuer stores an accepted message and returns its queue ID; it returns
// only once the message is safely queued. The spool queues the message
// under env.ID, which the intake has stamped in the Received field; the
// in-memory queue names it itself.
type enqueuer func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error)

// intake is the SMTP server that accepts mail for the customers' domains:
// it is the MX the customers' domains point at. It relays nothing: a
// recipient outside the accounts' domains gets 550 5.7.1.
type intake struct {
	// accounts names the domains served: accounts.Map, or the
	// program's accountStore, which SIGHUP reloads.
	accounts interface {
		Owner(domain string) (accounts.Account, bool)
	}
	enqueue enqueuer
	// checkQuota, if set, refuses a recipient whose domain is over quota
	// (452) before the data is sent.
	checkQuota func(rcpt string) error
	log        *slog.Logger
	// hostname names the intake in the Received field it stamps; ""
	// means "localhost".
	hostname string
	// metrics counts the messages queued; nil means no -metrics.
	metrics *providerMetrics
	// maxConns caps the connections served at once (-smtp-max-conns);
	// further ones are answered 421 and closed, so that a flood of idle
	// clients cannot take the file descriptors that the ODMR listener,
	// the queue and the accepted sessions need. 0 or less means no cap.
	maxConns int
	// maxConnsPerNet caps the connections from one network at once
	// (-smtp-max-conns-per-network), as v4Prefix and v6Prefix size a
	// network, so that one client cannot take every place maxConns
	// leaves. 0 or less means no cap.
	maxConnsPerNet     int
	v4Prefix, v6Prefix int

	// The connections, for stop and closeAll: go-smtp's Shutdown waits
	// for idle clients, even those that never said EHLO, and its Close
	// does nothing after a Shutdown.
	mu       sync.Mutex
	conns    map[*intakeConn]bool
	perNet   map[string]int
	stopping bool
	// refusals keeps the log of refused connections to a record a
	// second.
	refusals lograte.Limiter
}

// defaultIntakeMaxConns is the default of -smtp-max-conns: as many
// connections as ODMR sessions (-max-sessions).
const defaultIntakeMaxConns = 1000

// defaultIntakeMaxConnsPerNet is the default of
// -smtp-max-conns-per-network, Postfix's smtpd_client_connection_count_limit:
// a large sender opens several connections, not hundreds.
const defaultIntakeMaxConnsPerNet = 50

func (in *intake) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &intakeSession{in: in, conn: c, remote: c.Conn().RemoteAddr().String()}, nil
}

type intakeSession struct {
	in     *intake
	conn   *smtp.Conn
	remote string
	env    odmr.Envelope
}

// newIntakeServer returns the SMTP server of the intake in. Its log is
// in's: go-smtp's own would write a line to standard error, outside
// -log-format and unlimited, for each client that resets its connection
// or times out, and a flood of them would flood it.
func newIntakeServer(in *intake, maxMessageBytes int64, tlsConfig *tls.Config) *smtp.Server {
	srv := smtp.NewServer(in)
	srv.Domain = in.hostname
	srv.MaxMessageBytes = maxMessageBytes
	srv.MaxRecipients = 100
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = time.Minute
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.TLSConfig = tlsConfig
	srv.ErrorLog = smtpserver.ErrorLog(in.log)
	return srv
}

// listen wraps the intake's listener so that stop and closeAll reach
// every connection.
func (in *intake) listen(l net.Listener) net.Listener { return &intakeListener{l, in} }

type intakeListener struct {
	net.Listener
	in *intake
}

func (l *intakeListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ic := l.in.admit(c); ic != nil {
			return ic, nil
		}
	}
}

// admit tracks c and returns it as an intakeConn, or, when maxConns
// connections are open, or maxConnsPerNet from c's network, answers it
// with 421 (RFC 5321 section 3.8), closes it and returns nil. The write
// goes to an empty socket buffer; the deadline bounds it anyway.
func (in *intake) admit(c net.Conn) *intakeConn {
	key := sockaddr.Network(c.RemoteAddr(), in.v4Prefix, in.v6Prefix)
	in.mu.Lock()
	full := in.maxConns > 0 && len(in.conns) >= in.maxConns
	netFull := in.maxConnsPerNet > 0 && in.perNet[key] >= in.maxConnsPerNet
	if full || netFull {
		now := time.Now()
		logIt, held := in.refusals.Allow(now)
		refused := held + 1
		in.mu.Unlock()
		reply, why := "421 4.7.0 Too many connections, try again later\r\n", "-smtp-max-conns are open"
		if !full {
			reply, why = "421 4.7.0 Too many connections from your network, try again later\r\n", "-smtp-max-conns-per-network are open from one network"
		}
		c.SetWriteDeadline(now.Add(time.Second))
		io.WriteString(c, reply)
		c.Close()
		if logIt {
			in.log.Warn("odmr-provider: SMTP connections refused: "+why,
				"max", in.maxConns, "max_per_network", in.maxConnsPerNet, "refused", refused,
				"remote", c.RemoteAddr().String(), "network", key)
		}
		return nil
	}
	defer in.mu.Unlock()
	ic := &intakeConn{Conn: c, in: in, network: key}
	if in.conns == nil {
		in.conns = make(map[*intakeConn]bool)
		in.perNet = make(map[string]int)
	}
	in.conns[ic] = true
	in.perNet[key]++
	if in.stopping {
		ic.stop()
	}
	return ic
}

// stop ends the connections as they finish the message in flight: an
// idle one, or one between commands, ends at once; one whose message is
// being received ends once the reply to it is written. Nothing a client
// was told is queued is lost, and no client can hold the stop.
func (in *intake) stop() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.stopping = true
	for c := range in.conns {
		c.stop()
	}
}

// closeAll closes every connection at once: a message being received is
// not queued, and its client sends it again.
func (in *intake) closeAll() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.stopping = true
	for c := range in.conns {
		c.Conn.Close()
	}
}

// intakeConn is a connection of the intake that stop can end between
// messages: once stopped, its reads fail (io.EOF) and go-smtp ends the
// session, after writing any reply under way.
type intakeConn struct {
	net.Conn
	in      *intake
	network string // what -smtp-max-conns-per-network counts it in

	mu       sync.Mutex
	inData   bool // a message is being received
	stopping bool // stop was called
	stopped  bool // reads fail
}

func (c *intakeConn) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopping = true
	if !c.inData {
		c.endReads()
	}
}

// endReads makes reads fail from now on, a blocked one included; c.mu
// is held.
func (c *intakeConn) endReads() {
	c.stopped = true
	c.Conn.SetReadDeadline(time.Unix(1, 0))
}

func (c *intakeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.mu.Lock()
		stopped := c.stopped
		c.mu.Unlock()
		if stopped {
			return n, io.EOF
		}
	}
	return n, err
}

// SetReadDeadline and SetDeadline keep the read deadline of a stopped
// connection in the past: go-smtp sets one before each command.
func (c *intakeConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *intakeConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

func (c *intakeConn) Close() error {
	c.in.mu.Lock()
	if c.in.conns[c] {
		delete(c.in.conns, c)
		if c.in.perNet[c.network]--; c.in.perNet[c.network] <= 0 {
			delete(c.in.perNet, c.network)
		}
	}
	c.in.mu.Unlock()
	return c.Conn.Close()
}

// dataStarts and dataEnds bracket a message being received, for stop.
func (c *intakeConn) dataStarts() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inData = true
}

func (c *intakeConn) dataEnds() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inData = false
	if c.stopping {
		c.endReads()
	}
}

// intakeConn returns the session's connection under TLS, or nil when the
// intake was served without listen.
func (s *intakeSession) intakeConn() *intakeConn {
	c := s.conn.Conn()
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	ic, _ := c.(*intakeConn)
	return ic
}

var (
	errRelayDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied: not a domain served here"}
	errBadSender   = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	errBadRcpt     = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	// errBareLineEnding refuses a message with a CR or LF outside a CRLF
	// pair (RFC 5321 section 2.3.8), as Postfix's
	// smtpd_forbid_bare_newline does: passed on, such a message is how
	// SMTP smuggling works. The same reply as the customer's.
	errBareLineEnding = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message contains a bare CR or LF; lines must end with CRLF"}
)

// Mail starts a transaction. go-smtp hands over addresses with a quoted
// local part unquoted ("a b"@x as a b@x): mailbox.Quote puts the quotes
// back, so the queue keeps the address as the sender meant it.
func (s *intakeSession) Mail(from string, opts *smtp.MailOptions) error {
	// An address that is not UTF-8 is no address (RFC 6531), and the
	// queue would store it altered (U+FFFD for each stray byte), to be
	// delivered to someone else than the sender named.
	from, ok := mailbox.Quote(from)
	if !ok || !utf8.ValidString(from) {
		return errBadSender
	}
	s.env = odmr.Envelope{From: from}
	if opts != nil {
		s.env.Size = opts.Size
		s.env.Body = odmr.BodyType(opts.Body)
		s.env.UTF8 = opts.UTF8
		if opts.Return != "" || opts.EnvelopeID != "" {
			s.env.DSN = &odmr.DSN{Return: odmr.DSNReturn(opts.Return), EnvID: opts.EnvelopeID}
		}
	}
	return nil
}

// addDSN keeps the DSN requests of one RCPT (RFC 3461) in the envelope.
func (s *intakeSession) addDSN(to string, opts *smtp.RcptOptions) {
	if opts == nil || (opts.Notify == nil && opts.OriginalRecipient == "") {
		return
	}
	if s.env.DSN == nil {
		s.env.DSN = &odmr.DSN{}
	}
	if s.env.DSN.Recipients == nil {
		s.env.DSN.Recipients = make(map[string]odmr.RecipientDSN)
	}
	r := odmr.RecipientDSN{ORcptType: string(opts.OriginalRecipientType), ORcpt: opts.OriginalRecipient}
	for _, n := range opts.Notify {
		r.Notify = append(r.Notify, odmr.DSNNotify(n))
	}
	s.env.DSN.Recipients[to] = r
}

// Rcpt adds a recipient of one of the accounts' domains, in either form
// of an internationalized domain (odmr.RecipientDomain maps both to one).
func (s *intakeSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	to, ok := mailbox.Quote(to)
	if !ok || !utf8.ValidString(to) {
		return errBadRcpt
	}
	if _, ok := s.in.accounts.Owner(odmr.RecipientDomain(to)); !ok {
		return errRelayDenied
	}
	if s.in.checkQuota != nil {
		if err := s.in.checkQuota(to); err != nil {
			return toSMTPError(s.in.log, err)
		}
	}
	s.env.To = append(s.env.To, to)
	s.addDSN(to, opts)
	return nil
}

// Data queues the message; by DATA or BDAT alike, a bare CR or LF in it
// refuses it with 554 5.6.0 and nothing is queued.
func (s *intakeSession) Data(r io.Reader) error {
	if c := s.intakeConn(); c != nil {
		c.dataStarts()
		defer c.dataEnds()
	}
	env := s.env
	env.Size = 0 // the queue measures what it stores
	now := time.Now()
	id := spool.NewID()
	env.ID = id
	_, isTLS := s.conn.TLSConnectionState()
	host := s.in.hostname
	if host == "" {
		host = "localhost"
	}
	trace := receivedField(s.conn.Hostname(), s.conn.Conn().RemoteAddr(), host, id, isTLS, env.UTF8, env.To, now)
	size := &countReader{R: io.MultiReader(strings.NewReader(trace), r)}
	body := &crlf.Checker{R: size}
	qid, err := s.in.enqueue(context.Background(), env, body)
	if err != nil {
		if body.Err() != nil {
			s.in.log.Warn("odmr-provider: message refused: bare CR or LF", "client", s.remote, "from", env.From)
			return errBareLineEnding
		}
		var se *smtp.SMTPError
		if size.Err != nil && !errors.As(size.Err, &se) {
			// The client went away or stalled in the middle of the
			// data: its doing, not the queue's, and anyone can do it.
			s.in.log.Info("odmr-provider: message not queued: the client's data broke off",
				"client", s.remote, "from", env.From, "err", size.Err)
			return errDataBrokeOff
		}
		return toSMTPError(s.in.log, err)
	}
	s.in.metrics.messageQueued(size.N)
	args := []any{"id", qid, "client", s.remote, "from", env.From, "to", env.To, "size", size.N}
	if qid != id {
		// A queue that names its messages itself: the Received field
		// holds the intake's ID.
		args = append(args, "received-id", id)
	}
	s.in.log.Info("odmr-provider: queued", args...)
	return nil
}

// countReader counts the bytes read through it, and keeps the error
// other than io.EOF that ended them.
type countReader struct {
	R   io.Reader
	N   int64
	Err error
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	if err != nil && err != io.EOF {
		c.Err = err
	}
	return n, err
}

// errDataBrokeOff answers a message whose data did not arrive whole, if
// the client is still there to read it.
var errDataBrokeOff = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Message not received whole, try again later"}

var errNoSpace = &smtp.SMTPError{Code: nospace.Code, EnhancedCode: nospace.Enhanced, Message: nospace.Message}

// toSMTPError turns a queue's refusal into a reply; other errors are
// logged and answered 451 without their text.
func toSMTPError(log *slog.Logger, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	if e := odmr.AsError(err); e != nil {
		ec := smtp.EnhancedCode(e.EnhancedCode)
		if e.EnhancedCode == (odmr.EnhancedCode{}) {
			ec = smtp.EnhancedCodeNotSet
		}
		return &smtp.SMTPError{Code: e.Code, EnhancedCode: ec, Message: e.Message}
	}
	if nospace.Is(err) {
		// RFC 3463: 4.3.1, mail system full; RFC 5321: 452, insufficient
		// system storage. The sender retries later, as with a 451.
		log.Error("odmr-provider: cannot queue message: no space left", "err", err)
		return errNoSpace
	}
	log.Error("odmr-provider: cannot queue message", "err", err)
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Local error, try again later"}
}

func (s *intakeSession) Reset()        { s.env = odmr.Envelope{} }
func (s *intakeSession) Logout() error { return nil }
