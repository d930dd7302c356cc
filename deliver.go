package odmr

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/crlf"
	"github.com/go-odmr/odmr/internal/pipeline"
)

// deliver runs the reversed state: the provider is now the SMTP client.
func (s *session) deliver(ctx context.Context, rc net.Conn, domains []string) error {
	if s.p.Debug != nil {
		rc = &transcriptConn{Conn: rc, in: "C: ", out: "P: ", emit: s.debug}
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
	if ok, _ := c.Extension("DSN"); !ok {
		s.noDSN = true
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

// deliverEach is the plain delivery loop, one command at a time.
func (s *session) deliverEach(ctx context.Context, c *smtp.Client, batch Batch, domains []string) error {
	for !s.draining() {
		msg, err := batch.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.log.Warn("odmr: queue failed during delivery", "err", err)
			break
		}
		if err := s.deliverOne(ctx, c, msg, domains); err != nil {
			return err
		}
		if s.stopOnRecordErr() {
			break
		}
	}
	if err := c.Quit(); err != nil {
		s.log.Debug("odmr: QUIT not answered cleanly", "err", err)
	}
	return nil
}

// draining reports whether the provider is shutting down, and if so says
// so once: the delivery loops then take no further message from the batch,
// finish the ones in flight and say QUIT, and the rest stays queued.
func (s *session) draining() bool {
	if !s.p.shutdown.Load() {
		return false
	}
	s.log.Info("odmr: provider shutting down; ending the delivery after the message in flight")
	return true
}

// deliverOne sends one message. It returns an error only when the
// connection can no longer be used.
func (s *session) deliverOne(ctx context.Context, c *smtp.Client, msg Message, domains []string) (connErr error) {
	env := msg.Envelope()
	rcpts, results := s.prepare(c, env, domains)
	set := func(list []string, err error) {
		for _, r := range list {
			results = append(results, RecipientResult{Recipient: r, Err: err})
		}
	}
	var reply string // the customer's final reply, when it accepted
	defer func() { s.complete(ctx, msg, env, results, reply) }()
	if len(rcpts) == 0 {
		return nil
	}

	// lost records a broken connection: every recipient not yet settled
	// stays queued.
	lost := func(list []string, err error) error {
		set(list, fmt.Errorf("%w: %v", errLostConnection, err))
		return err
	}
	opts := dsnMailOptions(&smtp.MailOptions{Size: env.Size, UTF8: env.UTF8}, env)
	if err := c.Mail(env.From, opts); err != nil {
		if e := AsError(err); e != nil {
			set(rcpts, e)
			return s.reset(c)
		}
		return lost(rcpts, err)
	}
	var accepted []string
	for i, r := range rcpts {
		err := c.Rcpt(r, dsnRcptOptions(env, r))
		if e := AsError(err); e != nil {
			results = append(results, RecipientResult{Recipient: r, Err: e})
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
	if _, err := io.Copy(w, normalizedBody(body)); err != nil {
		// Never send the final dot after a short copy: the customer would
		// take a truncated message. Dropping the connection makes it
		// discard what it has.
		s.log.Error("odmr: delivery interrupted mid-message", "id", env.ID, "err", err)
		return lost(accepted, err)
	}
	resp, err := w.CloseWithResponse()
	if e := AsError(err); e != nil {
		set(accepted, e)
		return nil
	} else if err != nil {
		return lost(accepted, err)
	}
	reply = "250 " + resp.StatusText
	set(accepted, nil)
	return nil
}

// normalizedBody is a queued message as it goes on the wire: every bare CR
// and bare LF made CRLF (RFC 5321 section 2.3.8), whatever the queue holds,
// so that no customer sees the line endings SMTP smuggling plays on, and
// "\r.\r\n" in a body is a dot line that the encoders stuff, not an end of
// data. The queue's Size may then be a few bytes short of what is sent.
func normalizedBody(body io.ReadCloser) io.ReadCloser {
	return struct {
		io.Reader
		io.Closer
	}{&crlf.Normalizer{R: body}, body}
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
			results = append(results, RecipientResult{Recipient: r, Err: errLocalError.withMessage("Recipient not in the session's domains")})
		case strings.ContainsAny(r, "\r\n"):
			// A queue that lets this through must not make it a command
			// injection, nor a message that blocks the rest of the queue.
			results = append(results, RecipientResult{Recipient: r, Err: &Error{Code: 553, EnhancedCode: EnhancedCode{5, 1, 3}, Message: "Recipient address contains CR or LF"}})
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
			results = append(results, RecipientResult{Recipient: r, Err: perm})
		}
		rcpts = nil
	}
	return rcpts, results
}

// complete counts a message's results, logs one record per recipient and
// hands the results to the queue. reply is the customer's final reply when
// it accepted the message.
func (s *session) complete(ctx context.Context, msg Message, env Envelope, results []RecipientResult, reply string) {
	for i, r := range results {
		switch {
		case r.Err == nil:
			results[i].NoDSN = s.noDSN
			s.delivered++
			s.log.Info("odmr: delivered", "id", env.ID, "to", r.Recipient, "reply", reply)
		case !inDomains(r.Recipient, s.domains):
			// Not this customer's: it stays queued for its own.
			s.log.Debug("odmr: recipient left for another customer", "id", env.ID, "to", r.Recipient)
			s.deferred++
		case Permanent(r.Err):
			s.failed++
			s.log.Warn("odmr: bounced", "id", env.ID, "to", r.Recipient, "reply", replyText(r.Err))
		default:
			s.deferred++
			s.log.Warn("odmr: deferred", "id", env.ID, "to", r.Recipient, "reply", replyText(r.Err))
		}
	}
	// Record outcomes even when the session is being cancelled: an
	// acknowledged message must not be delivered again.
	if err := msg.Complete(context.WithoutCancel(ctx), results); err != nil {
		s.log.Error("odmr: queue could not record delivery results", "id", env.ID, "err", err)
		if s.recordErr == nil {
			s.recordErr = err
		}
	}
}

// replyText is a recipient's failure as a log shows it: the reply, such as
// "550 5.1.1 No such user", without the "odmr: " of the error string.
func replyText(err error) string {
	return strings.TrimPrefix(err.Error(), "odmr: ")
}

// stopOnRecordErr reports whether the session must stop delivering
// because the queue could not record a message's results. Every message
// delivered after that would stay queued too, and be delivered again by
// the next session: a full disk would turn a whole batch into duplicates.
func (s *session) stopOnRecordErr() bool {
	if s.recordErr == nil {
		return false
	}
	s.log.Error("odmr: stopping delivery: the queue cannot record results; the rest stays queued", "err", s.recordErr)
	return true
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
