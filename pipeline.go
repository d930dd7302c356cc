package odmr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/go-odmr/odmr/internal/pipeline"
)

// sendMessage queues one message on snd, the delivery engine of deliver. Its
// results reach the queue once the customer's reply to its end has been
// read: with pipelining, possibly during the next message's Send. It
// returns an error only when the connection can no longer be used.
func (s *session) sendMessage(ctx context.Context, snd *pipeline.Sender, ext map[string]string, msg Message, domains []string) error {
	env := msg.Envelope()
	rcpts, results := s.prepare(ext, env, domains)
	if len(rcpts) == 0 {
		s.complete(ctx, msg, env, results, "")
		return nil
	}
	var rcptParams []string
	if _, ok := ext["DSN"]; ok && env.DSN != nil {
		// Raw UTF-8 in ORCPT only inside an SMTPUTF8 transaction.
		_, utf8 := ext["SMTPUTF8"]
		for _, r := range rcpts {
			rcptParams = append(rcptParams, dsnRcptParams(env, r, utf8 && env.UTF8))
		}
	}
	var m *pipeline.Mail
	m = &pipeline.Mail{
		From:       env.From,
		Params:     mailParams(ext, env),
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

// pipelineResult turns a pipeline outcome into the error the queue
// records: the customer's refusal as an *Error, errLocalError for a body
// that cannot be opened, and errLostConnection, which leaves the
// recipient queued, for everything else.
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

// mailParams are the MAIL parameters of env for a customer whose EHLO
// reply listed ext, each with a leading space. BODY=8BITMIME goes to
// every customer that offers 8BITMIME, as the provider has always sent
// it (the golden transcripts pin it): it is true of 7-bit mail too.
func mailParams(ext map[string]string, env Envelope) string {
	var b strings.Builder
	if _, ok := ext["8BITMIME"]; ok {
		b.WriteString(" BODY=8BITMIME")
	}
	if _, ok := ext["SIZE"]; ok && env.Size != 0 {
		b.WriteString(" SIZE=")
		b.WriteString(strconv.FormatInt(env.Size, 10))
	}
	if _, ok := ext["SMTPUTF8"]; ok && env.UTF8 {
		b.WriteString(" SMTPUTF8")
	}
	if _, ok := ext["DSN"]; ok {
		b.WriteString(dsnMailParams(env))
	}
	return b.String()
}

// recordCheckBody stops a body from being sent once the queue has failed to
// record an earlier message's results, which may happen while this one waits
// for its 354: the connection is cut before the final dot, so the customer
// discards it instead of receiving it once more after the next session.
// With the Sender's Overlap, results read in the same wait as a 354 are
// recorded only after that body is sent (the customer holds the 354 and
// waits for it): a failed record is then noticed one message later, so at
// most one more message goes out past it.
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
