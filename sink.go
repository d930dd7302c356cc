package odmr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/emersion/go-smtp"
)

// DefaultSinkTimeout bounds each command of an [SMTPSink]; the reply to
// the end of a message may take twice as long.
const DefaultSinkTimeout = 5 * time.Minute

// SMTPSink is a [MessageSink] that passes each message, envelope intact,
// to a local SMTP (RFC 5321) or LMTP (RFC 2033) server with go-smtp's
// client: one connection per message, MAIL FROM with the sender, one RCPT
// TO per recipient, and the body streamed.
//
// It is also a [RecipientChecker]: at each RCPT from the provider it asks
// the local server, with a transaction that it abandons, whether it takes
// the recipient, so that a refusal (an unknown user) reaches the provider
// for that recipient alone.
//
// A message with a single reply is accepted or refused as a whole. When
// the local server takes a message for some recipients but not others (a
// recipient refused at RCPT after it passed the check, or an LMTP server's
// per-recipient replies after the data), the provider can only be told
// one thing: without OnPartialDelivery the sink answers 451 so that the
// provider sends the message again later, which never loses mail but may
// duplicate it for the recipients that had it; with OnPartialDelivery the
// message is acknowledged and the function takes over the failures.
type SMTPSink struct {
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
	// take twice as long. 0 means DefaultSinkTimeout.
	Timeout time.Duration
	// OnPartialDelivery, if set, is called when the local server took a
	// message for some recipients and refused it for others, with the
	// refused ones; the message is then acknowledged to the provider. nil
	// means the message is refused with 451 (see [SMTPSink]).
	OnPartialDelivery func(env Envelope, failed []RecipientResult)
	// NoDSN stops the sink from passing delivery status notification
	// requests on (RFC 3461), and so the customer from offering DSN to
	// the provider. Without it the sink asks the local server, once per
	// fetch (see [DSNProber]), and the customer offers DSN only when the
	// server's EHLO or LHLO reply lists it: its client would otherwise
	// drop the requests, and a NOTIFY=SUCCESS would go unanswered;
	// without DSN, the provider answers it. Set NoDSN to skip the probe.
	NoDSN bool
}

// NewSMTPSink returns a sink that delivers to the SMTP server at addr.
func NewSMTPSink(addr string) *SMTPSink { return &SMTPSink{Addr: addr} }

// NewLMTPSink returns a sink that delivers to the LMTP server at addr,
// "host:port" or a Unix socket path.
func NewLMTPSink(addr string) *SMTPSink { return &SMTPSink{Addr: addr, LMTP: true} }

var (
	_ MessageSink      = (*SMTPSink)(nil)
	_ RecipientChecker = (*SMTPSink)(nil)
	_ DSNSink          = (*SMTPSink)(nil)
	_ DSNProber        = (*SMTPSink)(nil)
)

// ProbeDSN connects to the local server and reports whether its EHLO or
// LHLO reply offers DSN.
func (s *SMTPSink) ProbeDSN(ctx context.Context) (bool, error) {
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
func (s *SMTPSink) PassesDSN() bool { return !s.NoDSN }

// errPartialDelivery is the reply for a message the local server took for
// only some of its recipients.
var errPartialDelivery = &Error{Code: 451, EnhancedCode: EnhancedCode{4, 3, 0},
	Message: "Local delivery failed for some recipients; try again later"}

// connect opens a client session with the local server, greeted and
// introduced. Every read and write of the connection fails once ctx is
// done, whatever deadline go-smtp sets.
func (s *SMTPSink) connect(ctx context.Context) (*smtp.Client, error) {
	network, address := splitAddr(s.Addr)
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
	var c *smtp.Client
	if s.LMTP {
		c = smtp.NewClientLMTP(cc)
	} else {
		c = smtp.NewClient(cc)
	}
	c.CommandTimeout = orDefault(s.Timeout, DefaultSinkTimeout)
	c.SubmissionTimeout = 2 * c.CommandTimeout
	name := s.LocalName
	if name == "" {
		name = "localhost"
	}
	if err := c.Hello(name); err != nil {
		c.Close()
		return nil, s.fail("greeting", err)
	}
	return c, nil
}

// fail describes an error of the local server: a reply comes back as an
// *Error to pass on to the provider, anything else as a local failure.
func (s *SMTPSink) fail(what string, err error) error {
	if e := AsError(err); e != nil {
		return e
	}
	return fmt.Errorf("odmr: local delivery: %s: %w", what, err)
}

func (s *SMTPSink) mailOptions(env Envelope) *smtp.MailOptions {
	if s.NoDSN {
		env.DSN = nil
	}
	return dsnMailOptions(&smtp.MailOptions{Size: env.Size, UTF8: env.UTF8, Body: smtp.BodyType(env.Body)}, env)
}

// CheckRecipient asks the local server whether it takes rcpt, with MAIL
// FROM and RCPT TO in a transaction that is then abandoned.
func (s *SMTPSink) CheckRecipient(ctx context.Context, env Envelope, rcpt string) error {
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
func (s *SMTPSink) Deliver(ctx context.Context, env Envelope, body io.Reader) error {
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Mail(env.From, s.mailOptions(env)); err != nil {
		return s.fail("MAIL", err)
	}
	var accepted []string
	var failed []RecipientResult
	for _, rcpt := range env.To {
		err := c.Rcpt(rcpt, s.rcptOptions(env, rcpt))
		if e := AsError(err); e != nil {
			failed = append(failed, RecipientResult{Recipient: rcpt, Err: e})
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
		return &Error{Code: 554, EnhancedCode: EnhancedCode{5, 5, 1}, Message: "No valid recipients"}
	}
	w, err := c.Data()
	if err != nil {
		return s.fail("DATA", err)
	}
	src := &trackedReader{r: body}
	if _, err := io.Copy(w, src); err != nil {
		// Never end the data after a short copy: closing the connection
		// without the final dot makes the local server drop the message.
		if src.err != nil {
			return src.err
		}
		return s.fail("data", err)
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
				failed = append(failed, RecipientResult{Recipient: rcpt, Err: AsError(lerr[rcpt])})
			default:
				failed = append(failed, RecipientResult{Recipient: rcpt, Err: s.fail("end of data", err)})
			}
		}
		if ok == 0 {
			return firstError(failed)
		}
	} else if err := w.Close(); err != nil {
		return s.fail("end of data", err)
	}
	c.Quit()
	if len(failed) > 0 {
		if s.OnPartialDelivery == nil {
			return errPartialDelivery
		}
		s.OnPartialDelivery(env, failed)
	}
	return nil
}

// firstError returns the error for a message that failed for everyone: a
// temporary one if there is any, so that nothing is bounced that could
// still be delivered.
func firstError(failed []RecipientResult) error {
	for _, f := range failed {
		if !Permanent(f.Err) {
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

func (s *SMTPSink) rcptOptions(env Envelope, rcpt string) *smtp.RcptOptions {
	if s.NoDSN {
		return nil
	}
	return dsnRcptOptions(env, rcpt)
}
