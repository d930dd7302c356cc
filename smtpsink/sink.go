// Package smtpsink is an [odmr.MessageSink] that passes each message a
// customer fetches to a local SMTP or LMTP server, with go-smtp's client.
package smtpsink

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/dsnparam"
	"github.com/go-odmr/odmr/internal/sockaddr"
)

// defaultTimeout bounds each command of a [Sink] by default.
const defaultTimeout = 5 * time.Minute

// Sink is an [odmr.MessageSink] that passes each message, envelope intact,
// to a local SMTP (RFC 5321) or LMTP (RFC 2033) server with go-smtp's
// client: MAIL FROM with the sender, one RCPT TO per recipient, and the
// body streamed.
//
// A [odmr.Customer] uses it as an [odmr.SessionSink] (see [Sink.Begin]):
// one connection to the local server carries the whole fetch, and each
// MAIL and RCPT of the provider is passed on as it arrives, so that a
// refusal (an unknown user) reaches the provider for that recipient
// alone. Called as a plain MessageSink, Deliver opens a connection per
// message, and CheckRecipient one per recipient, with a transaction that
// it abandons.
//
// A message with a single reply is accepted or refused as a whole. When
// the local server takes a message for some recipients but not others (a
// recipient refused at RCPT after it passed the check, or an LMTP server's
// per-recipient replies after the data), the provider can only be told
// one thing: without OnPartialDelivery the sink answers 451 so that the
// provider sends the message again later, which never loses mail but may
// duplicate it for the recipients that had it; with OnPartialDelivery the
// message is acknowledged and the function takes over the failures.
type Sink struct {
	// Addr is the server: "host:port", or the path of a Unix domain
	// socket ("/path" or "unix:/path"), as LMTP servers often listen.
	Addr string
	// LMTP speaks LMTP instead of SMTP: LHLO, and a reply per recipient at
	// the end of each message.
	LMTP bool
	// LocalName is the name given in EHLO or LHLO. "" means "localhost".
	LocalName string
	// Dial opens connections to Addr. nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds each command; the reply to the end of the data may
	// take twice as long. 0 means 5 minutes.
	Timeout time.Duration
	// OnPartialDelivery, if set, is called when the local server took a
	// message for some recipients and refused it for others, with the
	// refused ones; the message is then acknowledged to the provider. nil
	// means the message is refused with 451 (see [Sink]).
	OnPartialDelivery func(env odmr.Envelope, failed []odmr.RecipientResult)
	// NoDSN stops the sink from passing delivery status notification
	// requests on (RFC 3461), and so the customer from offering DSN to
	// the provider. Without it the sink asks the local server, once per
	// fetch (see [odmr.DSNProber]), and the customer offers DSN only when the
	// server's EHLO or LHLO reply lists it: its client would otherwise
	// drop the requests, and a NOTIFY=SUCCESS would go unanswered;
	// without DSN, the provider answers it. Set NoDSN to skip the probe.
	NoDSN bool
	// TLS, if set, protects the connection with TLS: with STARTTLS, which
	// the server must offer and which is given before anything else is
	// sent, or from the first byte with ImplicitTLS. A config without a
	// ServerName gets the host of Addr. nil means no TLS, unless
	// ImplicitTLS is set.
	TLS *tls.Config
	// ImplicitTLS speaks TLS from the first byte (submissions, port 465)
	// instead of STARTTLS, with TLS or, if nil, the system's roots.
	// false means STARTTLS when TLS is set, none otherwise.
	ImplicitTLS bool
	// Auth, if set, authenticates each connection after EHLO (and TLS).
	// It is refused over a connection without TLS unless
	// AllowInsecureAuth is set. nil means no AUTH.
	Auth sasl.Client
	// AllowInsecureAuth lets Auth run over a connection without TLS, for
	// a server on the same host or a trusted network. false refuses it.
	AllowInsecureAuth bool
}

// New returns a sink that delivers to the SMTP server at addr.
func New(addr string) *Sink { return &Sink{Addr: addr} }

// NewLMTP returns a sink that delivers to the LMTP server at addr,
// "host:port" or a Unix socket path.
func NewLMTP(addr string) *Sink { return &Sink{Addr: addr, LMTP: true} }

var (
	_ odmr.MessageSink      = (*Sink)(nil)
	_ odmr.RecipientChecker = (*Sink)(nil)
	_ odmr.DSNSink          = (*Sink)(nil)
	_ odmr.DSNProber        = (*Sink)(nil)
)

// ProbeDSN connects to the local server and reports whether its EHLO or
// LHLO reply offers DSN.
func (s *Sink) ProbeDSN(ctx context.Context) (bool, error) {
	c, err := s.connect(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	ok, _ := c.Extension("DSN")
	c.Quit()
	return ok, nil
}

// PassesDSN reports whether the sink passes DSN requests on: unless NoDSN
// is set.
func (s *Sink) PassesDSN() bool { return !s.NoDSN }

// errPartialDelivery is the reply for a message the local server took for
// only some of its recipients.
var errPartialDelivery = &odmr.Error{Code: 451, EnhancedCode: odmr.EnhancedCode{4, 3, 0},
	Message: "Local delivery failed for some recipients; try again later"}

// connect opens a client session with the local server, greeted and
// introduced. Every read and write of the connection fails once ctx is
// done, whatever deadline go-smtp sets.
func (s *Sink) connect(ctx context.Context) (*smtp.Client, error) {
	cc, err := s.dial(ctx)
	if err != nil {
		return nil, err
	}
	c, err := s.newClient(cc)
	if err != nil {
		return nil, err
	}
	c.CommandTimeout = cmp.Or(s.Timeout, defaultTimeout)
	c.SubmissionTimeout = 2 * c.CommandTimeout
	name := s.LocalName
	if name == "" {
		name = "localhost"
	}
	if err := c.Hello(name); err != nil {
		c.Close()
		return nil, s.fail("greeting", err)
	}
	if err := s.authenticate(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// dial connects to Addr. Every read and write of the connection fails
// once ctx is done, whatever deadline is set.
func (s *Sink) dial(ctx context.Context) (net.Conn, error) {
	network, address := sockaddr.Split(s.Addr)
	var conn net.Conn
	var err error
	if s.Dial != nil {
		conn, err = s.Dial(ctx, network, address)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, address)
	}
	if err != nil {
		return nil, fmt.Errorf("odmr: local delivery: %w", err)
	}
	cc := &ctxConn{Conn: conn, ctx: ctx}
	cc.stop = context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return s.implicitTLS(ctx, cc)
}

// fail describes an error of the local server, nil for none: a reply
// comes back as an *Error to pass on to the provider, anything else as a
// local failure. A 421 closes the local connection, not the provider's:
// that is a 451 for the provider.
func (s *Sink) fail(what string, err error) error {
	if err == nil {
		return nil
	}
	e := odmr.AsError(err)
	if e == nil {
		return fmt.Errorf("odmr: local delivery: %s: %w", what, err)
	}
	if e.Code != 421 {
		return e
	}
	code := e.EnhancedCode
	if code == (odmr.EnhancedCode{}) {
		code = odmr.EnhancedCode{4, 3, 0}
	}
	return &odmr.Error{Code: 451, EnhancedCode: code, Message: e.Message}
}

func (s *Sink) mailOptions(env odmr.Envelope) *smtp.MailOptions {
	if s.NoDSN {
		env.DSN = nil
	}
	return dsnMailOptions(&smtp.MailOptions{Size: env.Size, UTF8: env.UTF8, Body: smtp.BodyType(env.Body)}, env)
}

// CheckRecipient asks the local server whether it takes rcpt, with MAIL
// FROM and RCPT TO in a transaction that is then abandoned.
func (s *Sink) CheckRecipient(ctx context.Context, env odmr.Envelope, rcpt string) error {
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Mail(env.From, s.mailOptions(env)); err != nil {
		return s.fail("MAIL", err)
	}
	if err := c.Rcpt(rcpt, s.rcptOptions(env, rcpt)); err != nil {
		return s.fail("RCPT", err)
	}
	c.Quit()
	return nil
}

// Deliver passes one message on. It returns nil once the local server has
// taken it for every recipient (or, with OnPartialDelivery, for some).
func (s *Sink) Deliver(ctx context.Context, env odmr.Envelope, body io.Reader) error {
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Mail(env.From, s.mailOptions(env)); err != nil {
		return s.fail("MAIL", err)
	}
	var accepted []string
	var failed []odmr.RecipientResult
	for _, rcpt := range env.To {
		err := c.Rcpt(rcpt, s.rcptOptions(env, rcpt))
		if e := odmr.AsError(err); e != nil {
			failed = append(failed, odmr.RecipientResult{Recipient: rcpt, Err: s.fail("RCPT", e)})
			continue
		} else if err != nil {
			return s.fail("RCPT", err)
		}
		accepted = append(accepted, rcpt)
	}
	if len(accepted) == 0 {
		if len(failed) > 0 {
			return failed[0].Err
		}
		return &odmr.Error{Code: 554, EnhancedCode: odmr.EnhancedCode{5, 5, 1}, Message: "No valid recipients"}
	}
	if state, err := s.data(c, env, accepted, failed, body); state != txDone || err != nil && err != errPartialDelivery {
		return err
	}
	c.Quit()
	return nil
}

// txState is where the local transaction stands after Sink.data.
type txState int

const (
	txDone   txState = iota // ended, by the reply to the data
	txOpen                  // DATA was refused: still open, RSET ends it
	txBroken                // the connection can no longer be used
)

// data sends the message for the recipients the local server accepted,
// after DATA, and returns nil when it took it for all of them (or, with
// OnPartialDelivery, for some). failed holds the recipients it refused
// at RCPT. It also says where that leaves the local transaction.
func (s *Sink) data(c *smtp.Client, env odmr.Envelope, accepted []string, failed []odmr.RecipientResult, body io.Reader) (txState, error) {
	w, err := c.Data()
	if err != nil {
		return replyState(err, txOpen), s.fail("DATA", err)
	}
	src := &trackedReader{r: body}
	if _, err := io.Copy(w, src); err != nil {
		// Never end the data after a short copy: closing the connection
		// without the final dot makes the local server drop the message.
		if src.err != nil {
			return txBroken, src.err
		}
		return txBroken, s.fail("data", err)
	}
	if s.LMTP {
		// One reply per accepted recipient; a recipient without one (the
		// connection broke) stays undelivered, temporarily.
		resp, err := w.CloseWithLMTPResponse()
		var lerr smtp.LMTPDataError
		errors.As(err, &lerr)
		ok := 0
		for _, rcpt := range accepted {
			switch {
			case resp[rcpt] != nil:
				ok++
			case lerr[rcpt] != nil:
				failed = append(failed, odmr.RecipientResult{Recipient: rcpt, Err: s.fail("end of data", lerr[rcpt])})
			default:
				failed = append(failed, odmr.RecipientResult{Recipient: rcpt, Err: s.fail("end of data", err)})
			}
		}
		state := txDone
		if ok+len(lerr) < len(accepted) {
			state = txBroken // a reply is missing
		}
		if ok == 0 {
			return state, firstError(failed)
		}
		if state != txDone {
			return state, s.partial(env, failed)
		}
	} else if err := w.Close(); err != nil {
		return replyState(err, txDone), s.fail("end of data", err)
	}
	return txDone, s.partial(env, failed)
}

// partial returns the outcome of a message the local server took, given
// the recipients it did not take it for.
func (s *Sink) partial(env odmr.Envelope, failed []odmr.RecipientResult) error {
	if len(failed) == 0 {
		return nil
	}
	if s.OnPartialDelivery == nil {
		return errPartialDelivery
	}
	s.OnPartialDelivery(env, failed)
	return nil
}

// replyState is the state of the local transaction after err: ok when
// err is a reply of the server other than 421, txBroken otherwise.
func replyState(err error, ok txState) txState {
	if e := odmr.AsError(err); e != nil && e.Code != 421 {
		return ok
	}
	return txBroken
}

// firstError returns the error for a message that failed for everyone: a
// temporary one if there is any, so that nothing is bounced that could
// still be delivered.
func firstError(failed []odmr.RecipientResult) error {
	for _, f := range failed {
		if !odmr.Permanent(f.Err) {
			return f.Err
		}
	}
	return failed[0].Err
}

// trackedReader remembers the error of the reader it wraps.
type trackedReader struct {
	r   io.Reader
	err error
}

func (r *trackedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// ctxConn fails every read and write once ctx is done, and sets a past
// deadline when it ends so that a blocked call returns. Looking at ctx
// inside Read and Write, after go-smtp has set its own deadline, closes
// the window in which a cancellation could be overwritten.
type ctxConn struct {
	net.Conn
	ctx  context.Context
	stop func() bool
}

func (c *ctxConn) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if err != nil && c.ctx.Err() != nil {
		// The past deadline set at cancellation: say why.
		err = c.ctx.Err()
	}
	return n, err
}

func (c *ctxConn) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if err != nil && c.ctx.Err() != nil {
		err = c.ctx.Err()
	}
	return n, err
}

func (c *ctxConn) Close() error {
	c.stop()
	return c.Conn.Close()
}

func (s *Sink) rcptOptions(env odmr.Envelope, rcpt string) *smtp.RcptOptions {
	if s.NoDSN {
		return nil
	}
	return dsnRcptOptions(env, rcpt)
}

// dsnMailOptions adds env's RET and ENVID to opts. go-smtp's client sends
// them only to a server that offers DSN.
func dsnMailOptions(opts *smtp.MailOptions, env odmr.Envelope) *smtp.MailOptions {
	if env.DSN != nil {
		opts.Return = smtp.DSNReturn(dsnparam.Return(env.DSN.Return))
		if dsnparam.SendableEnvID(env.DSN.EnvID) {
			opts.EnvelopeID = env.DSN.EnvID
		}
	}
	return opts
}

// dsnRcptOptions returns rcpt's NOTIFY and ORCPT as go-smtp options, nil
// when there are none. go-smtp's client sends them only to a server that
// offers DSN.
func dsnRcptOptions(env odmr.Envelope, rcpt string) *smtp.RcptOptions {
	if env.DSN == nil {
		return nil
	}
	r, ok := env.DSN.Recipients[rcpt]
	if !ok {
		return nil
	}
	opts := &smtp.RcptOptions{}
	if dsnparam.ValidNotify(r.Notify) {
		for _, n := range r.Notify {
			opts.Notify = append(opts.Notify, smtp.DSNNotify(n))
		}
	}
	if t := dsnparam.ORcptType(r.ORcptType, r.ORcpt); t != "" && len(dsnparam.ORcptValue(t, r.ORcpt, false)) <= dsnparam.MaxORcpt {
		opts.OriginalRecipientType, opts.OriginalRecipient = smtp.DSNAddressType(t), r.ORcpt
	}
	return opts
}
