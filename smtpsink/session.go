package smtpsink

import (
	"cmp"
	"context"
	"errors"
	"io"
	"sync"

	"github.com/go-odmr/odmr"
)

var (
	_ odmr.SessionSink = (*Sink)(nil)
	_ odmr.DSNProber   = (*session)(nil)
)

// errLocalUnavailable answers the transactions of a fetch once the local
// server cannot be reached: the provider keeps the mail.
var errLocalUnavailable = &odmr.Error{Code: 451, EnhancedCode: odmr.EnhancedCode{4, 4, 1},
	Message: "Local mail server unavailable; try again later"}

// Begin opens the one connection to the local server that carries a
// whole fetch (see [odmr.SessionSink]): each MAIL, RCPT and message of
// the provider is passed on as it arrives, so a recipient the local
// server refuses is refused at the provider's RCPT, and the fetch costs
// one local session rather than two per message.
//
// Its client pipelines MAIL with the first RCPT when the server offers
// PIPELINING, and sends each message with BDAT when it offers CHUNKING:
// a message of up to 64 KiB then costs two round trips.
//
// Begin, and a dial again, wait at most 30 seconds (or Timeout, if
// shorter) for the server's greeting and its reply to EHLO.
//
// When the connection fails, the transaction under way is answered with
// a temporary error, and the next MAIL dials again, once: if that fails
// too, every later transaction of the fetch is answered 451 without
// trying again.
func (s *Sink) Begin(ctx context.Context) (odmr.SinkSession, error) {
	c, err := s.dialClient(ctx)
	if err != nil {
		return nil, err
	}
	return &session{s: s, ctx: ctx, c: c, dsn: c.has("DSN")}, nil
}

// session is a fetch's connection to the local server.
type session struct {
	s   *Sink
	ctx context.Context // the fetch's, for connections dialled again
	dsn bool            // the server offered DSN at the start

	mu   sync.Mutex // held by each call: Reset may come while Data runs
	c    *client
	down error // why dialling again failed: the fetch is over for the server
	tx   bool  // a transaction is open on c
	env  odmr.Envelope
}

// ProbeDSN reports whether the local server offered DSN when the session
// began.
func (t *session) ProbeDSN(context.Context) (bool, error) { return t.dsn, nil }

// Mail starts a transaction with the local server, dialling it again
// when the session's connection has failed or was closed. To a server
// that offers PIPELINING, MAIL goes out with the first RCPT.
func (t *session) Mail(ctx context.Context, env odmr.Envelope) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.reset(); err != nil {
		t.drop()
	}
	t.env = env
	return t.mail(false)
}

// mail sends t.env's MAIL, on a new connection if there is none. t.mu is
// held.
func (t *session) mail(redialled bool) error {
	for {
		if t.down != nil {
			return errLocalUnavailable
		}
		if t.c == nil {
			c, err := t.s.dialClient(t.ctx)
			if err != nil {
				t.down = err
				return t.s.fail("connection", err)
			}
			t.c, redialled = c, true
		}
		err := t.c.startMail(t.env, !t.s.NoDSN)
		if err == nil {
			t.tx = true
			return nil
		}
		if replyState(err, txOpen) == txOpen {
			return t.s.fail("MAIL", err)
		}
		// The connection failed, perhaps closed by the server while it
		// sat idle between messages: nothing was sent yet, dial again.
		t.drop()
		if redialled {
			t.down = err
			return t.s.fail("connection", err)
		}
	}
}

// Rcpt asks the local server to take rcpt.
func (t *session) Rcpt(ctx context.Context, env odmr.Envelope, rcpt string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.c == nil || !t.tx {
		return errLocalUnavailable
	}
	first := t.c.mail != ""
	err := t.c.rcpt(env, rcpt, !t.s.NoDSN)
	if err != nil && replyState(err, txOpen) == txBroken {
		t.drop()
		if first && odmr.AsError(err) == nil {
			// MAIL went out with this RCPT on a connection that the
			// server had closed: as for MAIL, dial again, once.
			if err := t.mail(false); err != nil {
				return err
			}
			err = t.c.rcpt(env, rcpt, !t.s.NoDSN)
			if err != nil && replyState(err, txOpen) == txBroken {
				t.drop()
			}
		}
	}
	return t.s.fail("RCPT", err)
}

// Data passes the message on to the recipients that Rcpt had the local
// server take: all of env.To.
func (t *session) Data(ctx context.Context, env odmr.Envelope, body io.Reader) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.c == nil || !t.tx {
		return errLocalUnavailable
	}
	timeout := cmp.Or(t.s.Timeout, defaultTimeout)
	replies, ended, err := t.c.data(body, 2*timeout)
	var be *errBodyRead
	switch {
	case errors.As(err, &be):
		// Never end the data after a short read: closing the connection
		// without the final dot or last chunk makes the local server drop
		// the message.
		t.drop()
		return be.err
	case !ended && err == nil:
		// DATA, or a chunk, refused: the transaction is still open.
		return t.s.fail("DATA", replyError(replies[0]))
	case !t.s.LMTP:
		t.tx = false
		if err != nil {
			t.drop()
			return t.s.fail("end of data", err)
		}
		if replies[0].Code == 421 {
			t.drop()
		}
		return t.s.fail("end of data", replyError(replies[0]))
	}
	// LMTP: one reply per recipient; a recipient without one (the
	// connection broke) stays undelivered, temporarily.
	t.tx = false
	if err != nil {
		t.drop()
	}
	var failed []odmr.RecipientResult
	for i, rcpt := range env.To {
		switch {
		case i >= len(replies):
			failed = append(failed, odmr.RecipientResult{Recipient: rcpt, Err: t.s.fail("end of data", cmp.Or(err, io.ErrUnexpectedEOF))})
		case replies[i].Code/100 != 2:
			failed = append(failed, odmr.RecipientResult{Recipient: rcpt, Err: t.s.fail("end of data", replyError(replies[i]))})
		}
	}
	if len(failed) == len(env.To) {
		return firstError(failed)
	}
	return t.s.partial(env, failed)
}

// Reset ends the open transaction, if any.
func (t *session) Reset(context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	err := t.reset()
	if err != nil {
		t.drop()
	}
	return err
}

// reset ends the open transaction, if any. t.mu is held.
func (t *session) reset() error {
	if t.c == nil || !t.tx {
		return nil
	}
	t.tx = false
	return t.c.reset()
}

// Close says QUIT and closes the connection.
func (t *session) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.c == nil {
		return nil
	}
	err := t.reset()
	if err == nil {
		err = t.c.quit()
	}
	t.drop()
	return err
}

// drop closes the connection. t.mu is held.
func (t *session) drop() {
	if t.c != nil {
		t.c.conn.Close()
		t.c, t.tx = nil, false
	}
}
