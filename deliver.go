package odmr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/go-odmr/odmr/internal/crlf"
	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/pipeline"
	"github.com/go-odmr/odmr/internal/quickack"
)

// deliver runs the reversed state: the provider is now the SMTP client.
// One engine, internal/pipeline's Sender, serves every customer: with
// command pipelining (RFC 2920) for one whose EHLO reply lists
// PIPELINING, in lock-step otherwise, HELO-only customers included.
func (s *session) deliver(ctx context.Context, rc net.Conn, domains []string) error {
	// A customer that relays the session line by line without
	// TCP_NODELAY, as fetchmail does, sends each reply of a pipelined
	// group only once the one before it is acknowledged, and here,
	// waiting for the rest of the group's replies, nothing carries that
	// ACK: each reply after the first would wait for the delayed-ACK
	// timer (40 ms on Linux). The Sender asks for quick ACKs when it
	// waits for such replies.
	ack := quickack.Func(rc)
	if s.p.Debug != nil {
		rc = &transcriptConn{Conn: rc, in: "C: ", out: "P: ", emit: s.debug}
	}
	dc := &deadlineConn{Conn: rc, ctx: ctx, write: orDefault(s.p.WriteTimeout, defaults.WriteTimeout)}
	snd := pipeline.NewSender(ctx, dc, pipeline.Config{
		ReplyTimeout: orDefault(s.p.ReplyTimeout, defaults.ReplyTimeout),
		DataTimeout:  orDefault(s.p.DataTimeout, defaults.DataTimeout),
		Chunking:     !s.p.DisableChunking,
		QuickAck:     ack,
		// Between two Sends this loop only takes the next message from
		// the batch, which the customer, holding a 354, waits for; then
		// one write carries a body and the next message's commands.
		Overlap: true,
		// A message taken while the Sender waited for a reply is not
		// sent once the provider is shutting down: it stays queued.
		Stop: s.p.shutdown.Load,
	})
	// The session closes the connection; Close only stops the Sender.
	defer snd.Close()

	// Hello reads the customer's 220 greeting first.
	ext, err := snd.Hello(s.p.hostname())
	if err != nil {
		if AsError(err) != nil {
			// A 554 greeting (or a refused HELO): RFC 5321 section 3.1 has
			// the customer wait for our QUIT.
			snd.Quit()
		}
		return fmt.Errorf("odmr: customer greeting or EHLO failed: %w", err)
	}
	if _, ok := ext["DSN"]; !ok {
		s.noDSN = true
	}
	cctx, cancel := s.backendCtx(ctx)
	batch, err := s.p.Queue.Claim(cctx, domains)
	cancel()
	if err != nil {
		s.log.Warn("odmr: queue claim failed", "err", err)
		snd.Quit()
		return nil
	}
	defer batch.Close()
	s.log.Debug("odmr: delivering", "pipelining", !snd.Lockstep(), "chunking", snd.Chunking())
	for !s.draining() {
		nctx, cancel := s.backendCtx(ctx)
		msg, err := batch.Next(nctx)
		cancel()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.log.Warn("odmr: queue failed during delivery", "err", err)
			break
		}
		if err := s.sendMessage(ctx, snd, ext, msg, domains); errors.Is(err, pipeline.ErrStopped) {
			s.draining() // says so
			break
		} else if err != nil {
			s.stopOnRecordErr() // says why, if that is why
			return fmt.Errorf("odmr: delivery: %w", err)
		}
		// A message's results are recorded once its reply is read, which
		// with pipelining may be after the next message went out: at most
		// the messages in flight are delivered past a failed record.
		if s.stopOnRecordErr() {
			break
		}
	}
	if err := snd.Quit(); err != nil {
		s.log.Debug("odmr: QUIT not answered cleanly", "err", err)
	}
	return nil
}

// draining reports whether the provider is shutting down, and if so says
// so once: the delivery loop then takes no further message from the batch,
// finishes the ones in flight and says QUIT, and the rest stays queued.
func (s *session) draining() bool {
	if !s.p.shutdown.Load() {
		return false
	}
	s.log.Info("odmr: provider shutting down; ending the delivery after the message in flight")
	return true
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
func (s *session) prepare(ext map[string]string, env Envelope, domains []string) (rcpts []string, results []RecipientResult) {
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
			results = append(results, RecipientResult{Recipient: r, Err: errRcptCRLF})
		default:
			rcpts = append(rcpts, r)
		}
	}
	var perm error
	if strings.ContainsAny(env.From, "\r\n") {
		perm = errSenderCRLF
	} else if len(rcpts) > 0 {
		perm = unsendable(ext, env)
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
		s.observeDelivery(env, r)
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
			s.log.Warn("odmr: bounced", "id", env.ID, "to", r.Recipient, "reply", errText(r.Err))
		default:
			s.deferred++
			s.log.Warn("odmr: deferred", "id", env.ID, "to", r.Recipient, "reply", errText(r.Err))
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

// unsendable returns a permanent failure when the customer, whose EHLO
// reply listed ext, cannot take env.
func unsendable(ext map[string]string, env Envelope) error {
	if _, ok := ext["SMTPUTF8"]; env.UTF8 && !ok {
		return errNoSMTPUTF8
	}
	if _, ok := ext["8BITMIME"]; env.Body == Body8BitMIME && !ok {
		// RFC 6152 section 3: no 8-bit data to a receiver that did not
		// ask for it, and this provider does not downgrade.
		return errNo8BitMIME
	}
	if env.Body == BodyBinaryMIME {
		return errBinaryMIME
	}
	if limit, ok := maxMessageSize(ext); ok && limit > 0 && env.Size > limit {
		return errTooBigForPeer.withArgs(env.Size, limit)
	}
	return nil
}

// maxMessageSize is the limit of the customer's SIZE extension (RFC
// 1870); ok is false when it states none.
func maxMessageSize(ext map[string]string) (limit int64, ok bool) {
	v, has := ext["SIZE"]
	if !has || v == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
