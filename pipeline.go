package odmr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/pipeline"
)

// deliverPipelined runs the deliveries of the reversed state with command
// pipelining (RFC 2920), for a customer whose EHLO reply lists
// PIPELINING: each message's MAIL, RCPTs and DATA go out as one group,
// and the next message's group right behind the final dot, so that a
// message costs one round trip instead of four. With CHUNKING, when
// Provider.DisableChunking is not set, it sends BDAT and waits for nothing. Each
// recipient gets the result the plain path (deliverOne) would give it for
// the same replies.
//
// c has read the customer's greeting and EHLO reply through lc; the
// connection is handed over to the pipelined sender, with any byte the
// customer sent ahead. c is used only for what the EHLO reply said.
func (s *session) deliverPipelined(ctx context.Context, c *smtp.Client, lc *pipeline.LineConn, batch Batch, domains []string) error {
	conn, clean := lc.Handoff()
	if !clean {
		// go-smtp may hold part of a line: it has to go on alone.
		s.log.Warn("odmr: cannot hand the connection to the pipelined sender; delivering without pipelining")
		return s.deliverEach(ctx, c, batch, domains)
	}
	chunking, _ := c.Extension("CHUNKING")
	chunking = chunking && !s.p.DisableChunking
	snd := pipeline.NewSender(ctx, conn, pipeline.Config{
		ReplyTimeout: orDefault(s.p.ReplyTimeout, DefaultReplyTimeout),
		DataTimeout:  orDefault(s.p.DataTimeout, DefaultDataTimeout),
		Chunking:     chunking,
	})
	defer snd.Close()
	s.log.Debug("odmr: delivering with pipelining", "chunking", chunking)
	for !s.draining() {
		msg, err := batch.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.log.Warn("odmr: queue failed during delivery", "err", err)
			break
		}
		if err := s.sendPipelined(ctx, snd, c, msg, domains); err != nil {
			s.stopOnRecordErr() // says why, if that is why
			return fmt.Errorf("odmr: pipelined delivery: %w", err)
		}
		// A message's results are recorded once its reply is read, which
		// may be after the next message went out: at most the messages in
		// flight are delivered past a failed record.
		if s.stopOnRecordErr() {
			break
		}
	}
	if err := snd.Quit(); err != nil {
		s.log.Debug("odmr: QUIT not answered cleanly", "err", err)
	}
	return nil
}

// sendPipelined queues one message on snd. Its results reach the queue
// once the customer's reply to its end has been read. It returns an error
// only when the connection can no longer be used.
func (s *session) sendPipelined(ctx context.Context, snd *pipeline.Sender, c *smtp.Client, msg Message, domains []string) error {
	env := msg.Envelope()
	rcpts, results := s.prepare(c, env, domains)
	if len(rcpts) == 0 {
		s.complete(ctx, msg, env, results, "")
		return nil
	}
	var rcptParams []string
	if ok, _ := c.Extension("DSN"); ok && env.DSN != nil {
		// Raw UTF-8 in ORCPT only inside an SMTPUTF8 transaction.
		utf8, _ := c.Extension("SMTPUTF8")
		for _, r := range rcpts {
			rcptParams = append(rcptParams, dsnRcptParams(env, r, utf8 && env.UTF8))
		}
	}
	var m *pipeline.Mail
	m = &pipeline.Mail{
		From:       env.From,
		Params:     mailParams(c, env),
		To:         rcpts,
		RcptParams: rcptParams,
		Open: func() (io.ReadCloser, error) {
			body, err := msg.Open()
			if err != nil {
				s.log.Error("odmr: cannot open queued message", "id", env.ID, "err", err)
				return nil, err
			}
			return recordCheckBody{normalizedBody(body), s}, nil
		},
		Done: func(errs []error) {
			for i, err := range errs {
				results = append(results, RecipientResult{Recipient: rcpts[i], Err: s.pipelineResult(env, err)})
			}
			reply := ""
			if m.Reply != nil {
				reply = strconv.Itoa(m.Reply.Code) + " " + m.Reply.Text
			}
			s.complete(ctx, msg, env, results, reply)
		},
	}
	return snd.Send(m)
}

// pipelineResult turns a pipeline outcome into the error deliverOne
// records for the same event.
func (s *session) pipelineResult(env Envelope, err error) error {
	if err == nil {
		return nil
	}
	var be *pipeline.BodyError
	var ce *pipeline.ConnError
	switch {
	case errors.As(err, &be) && be.Open:
		return errLocalError
	case errors.As(err, &be):
		s.log.Error("odmr: delivery interrupted mid-message", "id", env.ID, "err", be.Err)
		return fmt.Errorf("%w: %v", errLostConnection, be.Err)
	case errors.As(err, &ce):
		return fmt.Errorf("%w: %v", errLostConnection, ce.Err)
	}
	if e := AsError(err); e != nil {
		return e
	}
	return fmt.Errorf("%w: %v", errLostConnection, err)
}

// mailParams are the MAIL parameters go-smtp's Client.Mail sends for the
// options deliverOne gives it.
func mailParams(c *smtp.Client, env Envelope) string {
	var b strings.Builder
	if ok, _ := c.Extension("8BITMIME"); ok {
		b.WriteString(" BODY=8BITMIME")
	}
	if ok, _ := c.Extension("SIZE"); ok && env.Size != 0 {
		b.WriteString(" SIZE=")
		b.WriteString(strconv.FormatInt(env.Size, 10))
	}
	if ok, _ := c.Extension("SMTPUTF8"); ok && env.UTF8 {
		b.WriteString(" SMTPUTF8")
	}
	if ok, _ := c.Extension("DSN"); ok {
		b.WriteString(dsnMailParams(env))
	}
	return b.String()
}

// recordCheckBody stops a body from being sent once the queue has failed to
// record an earlier message's results, which may happen while this one waits
// for its 354: the connection is cut before the final dot, so the customer
// discards it instead of receiving it once more after the next session.
type recordCheckBody struct {
	io.ReadCloser
	s *session
}

func (b recordCheckBody) Read(p []byte) (int, error) {
	if b.s.recordErr != nil {
		return 0, fmt.Errorf("odmr: not sending: %w", b.s.recordErr)
	}
	return b.ReadCloser.Read(p)
}
