package odmr_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"net"
	"net/textproto"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/memqueue"
	"github.com/go-odmr/odmr/smtpsink"
)

// localMTA is a go-smtp server standing in for the customer's own mail
// server. It refuses the recipients in refuse at RCPT and, over LMTP,
// fails those in dataFail after the data.
type localMTA struct {
	refuse   map[string]*smtp.SMTPError
	dataFail map[string]*smtp.SMTPError

	mu   sync.Mutex
	msgs []gotMessage
}

func (b *localMTA) NewSession(*smtp.Conn) (smtp.Session, error) { return &localSession{b: b}, nil }

func (b *localMTA) received() []gotMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]gotMessage(nil), b.msgs...)
}

type localSession struct {
	b    *localMTA
	from string
	to   []string
	dsn  *odmr.DSN
}

func (s *localSession) Reset()        { s.from, s.to, s.dsn = "", nil, nil }
func (s *localSession) Logout() error { return nil }

func (s *localSession) Mail(from string, opts *smtp.MailOptions) error {
	s.from = from
	if opts != nil && (opts.Return != "" || opts.EnvelopeID != "") {
		s.dsn = &odmr.DSN{Return: odmr.DSNReturn(opts.Return), EnvID: opts.EnvelopeID}
	}
	return nil
}

func (s *localSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if e := s.b.refuse[to]; e != nil {
		return e
	}
	s.to = append(s.to, to)
	if opts != nil && opts.Notify != nil {
		if s.dsn == nil {
			s.dsn = &odmr.DSN{}
		}
		if s.dsn.Recipients == nil {
			s.dsn.Recipients = map[string]odmr.RecipientDSN{}
		}
		r := odmr.RecipientDSN{ORcptType: string(opts.OriginalRecipientType), ORcpt: opts.OriginalRecipient}
		for _, n := range opts.Notify {
			r.Notify = append(r.Notify, odmr.DSNNotify(n))
		}
		s.dsn.Recipients[to] = r
	}
	return nil
}

func (s *localSession) Data(r io.Reader) error {
	return s.LMTPData(r, nil)
}

func (s *localSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	var ok []string
	for _, to := range s.to {
		if e := s.b.dataFail[to]; e != nil && status != nil {
			status.SetStatus(to, e)
			continue
		}
		if status != nil {
			status.SetStatus(to, nil)
		}
		ok = append(ok, to)
	}
	s.b.mu.Lock()
	br := bufio.NewReader(bytes.NewReader(b))
	trace, _ := cutReceived(br)
	rest, _ := io.ReadAll(br)
	s.b.msgs = append(s.b.msgs, gotMessage{odmr.Envelope{From: s.from, To: ok, DSN: s.dsn}, string(rest), trace, odmr.ReversedSession{}})
	s.b.mu.Unlock()
	return nil
}

// startLocalMTA serves mta on network ("tcp" or "unix") and returns the
// address to give a sink or relay.
func startLocalMTA(t *testing.T, mta *localMTA, lmtp bool, network string) string {
	t.Helper()
	srv := smtp.NewServer(mta)
	srv.Domain = "local.example.org"
	srv.LMTP = lmtp
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ErrorLog = log.New(io.Discard, "", 0)
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "lmtp.sock")
	}
	l, err := net.Listen(network, addr)
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		smtptest.Shutdown(t, srv)
		<-done
	})
	return l.Addr().String()
}

func TestRelayPassesTheSessionToALocalServer(t *testing.T) {
	custNoLeaks(t)
	q := &memqueue.Queue{}
	b1 := "Subject: one\r\n\r\n.dot line\r\nFirst.\r\n"
	b2 := "Subject: two\r\n\r\n8-bit \xc3\xa9\r\n"
	custEnqueue(t, q, "a@sender.test", b1, "u1@example.org")
	custEnqueue(t, q, "b@sender.test", b2, "u2@example.com", "u3@example.com")
	addr := custProvider(t, q)
	mta := &localMTA{}
	local := startLocalMTA(t, mta, false, "tcp")

	c := custCustomer(addr, nil, "example.org", "example.com")
	c.Handler = odmr.Relay(local)
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.False(t, res.NoMail)
	// The relay counts what the local server took.
	assert.Equal(t, 2, res.Messages)
	assert.Equal(t, 3, res.Recipients)
	assert.Equal(t, int64(len(b1)+len(b2)), res.Bytes)
	assert.Zero(t, res.LocalRefused)

	got := mta.received()
	require.Len(t, got, 2)
	assert.Equal(t, odmr.Envelope{From: "a@sender.test", To: []string{"u1@example.org"}}, got[0].env)
	assert.Equal(t, b1, got[0].body)
	assert.Equal(t, odmr.Envelope{From: "b@sender.test", To: []string{"u2@example.com", "u3@example.com"}}, got[1].env)
	assert.Equal(t, b2, got[1].body)
	assert.Zero(t, q.Len())
}

func TestRelayRefusalsOfTheLocalServerReachTheProvider(t *testing.T) {
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org", "nobody@example.org")
	addr := custProvider(t, q)
	mta := &localMTA{refuse: map[string]*smtp.SMTPError{
		"nobody@example.org": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"},
	}}
	c := custCustomer(addr, nil, "example.org")
	c.Handler = odmr.Relay(startLocalMTA(t, mta, false, "tcp"))
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	require.Len(t, mta.received(), 1)
	assert.Equal(t, 1, res.Messages)
	assert.Equal(t, 1, res.Recipients)
	assert.Equal(t, 1, res.RefusedRecipients)
	assert.Equal(t, 1, res.LocalRefused)
	assert.ErrorContains(t, res.LocalErr, "User unknown")
	failed := q.Failed()
	require.Len(t, failed, 1)
	assert.Equal(t, "nobody@example.org", failed[0].Recipient)
	assert.Contains(t, failed[0].Err.Error(), "User unknown")
}

func TestRelayToAnUnreachableServerLeavesMailQueued(t *testing.T) {
	custNoLeaks(t)
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org")
	addr := custProvider(t, q)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := l.Addr().String()
	l.Close()

	c := custCustomer(addr, nil, "example.org")
	c.Handler = odmr.Relay(closed)
	_, err = c.Fetch(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "relay")
	assert.ErrorIs(t, err, odmr.ErrLocalDelivery)
	assert.Equal(t, 1, q.Len())
	assert.Empty(t, q.Failed())
}

func TestSMTPSinkKeepsTheEnvelopeAndChecksRecipients(t *testing.T) {
	custNoLeaks(t)
	q := &memqueue.Queue{}
	body := "Subject: env\r\n\r\nHello.\r\n..\r\n"
	custEnqueue(t, q, "a@sender.test", body, "u1@example.org", "nobody@example.org", "u2@example.com")
	custEnqueue(t, q, "", "Subject: bounce\r\n\r\nA bounce.\r\n", "u3@example.org")
	addr := custProvider(t, q)
	mta := &localMTA{refuse: map[string]*smtp.SMTPError{
		"nobody@example.org": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"},
	}}
	sink := smtpsink.New(startLocalMTA(t, mta, false, "tcp"))
	res, err := custCustomer(addr, sink, "example.org", "example.com").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 2, res.Messages)
	assert.Equal(t, 1, res.RefusedRecipients)

	got := mta.received()
	require.Len(t, got, 2)
	assert.Equal(t, odmr.Envelope{From: "a@sender.test", To: []string{"u1@example.org", "u2@example.com"}}, got[0].env)
	assert.Equal(t, body, got[0].body)
	assert.Equal(t, "", got[1].env.From, "the null sender is kept")

	failed := q.Failed()
	require.Len(t, failed, 1, "the local server's RCPT refusal reaches the provider for that recipient")
	assert.Equal(t, "nobody@example.org", failed[0].Recipient)
	var e *odmr.Error
	require.ErrorAs(t, failed[0].Err, &e)
	assert.Equal(t, 550, e.Code)
	assert.Equal(t, "User unknown", e.Message)
	assert.Zero(t, q.Len())
}

func TestSMTPSinkLocalServerDownIsTemporary(t *testing.T) {
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org")
	addr := custProvider(t, q)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := l.Addr().String()
	l.Close()
	res, err := custCustomer(addr, smtpsink.New(down), "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.RefusedRecipients)
	assert.Equal(t, 1, res.LocalRefused, "a refusal of the local target")
	assert.ErrorContains(t, res.LocalErr, "connection refused")
	assert.Equal(t, 1, q.Len(), "the mail stays with the provider")
	assert.Empty(t, q.Failed())
}

func TestLMTPSinkPerRecipientResults(t *testing.T) {
	mta := func() *localMTA {
		return &localMTA{
			refuse: map[string]*smtp.SMTPError{
				"nobody@example.org": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"},
			},
			dataFail: map[string]*smtp.SMTPError{
				"full@example.org": {Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Mailbox full"},
			},
		}
	}
	enqueue := func(t *testing.T) *memqueue.Queue {
		q := &memqueue.Queue{}
		custEnqueue(t, q, "a@sender.test", "Subject: lmtp\r\n\r\nx\r\n", "ok@example.org", "nobody@example.org", "full@example.org")
		return q
	}

	t.Run("partial delivery handed to OnPartialDelivery", func(t *testing.T) {
		custNoLeaks(t)
		q := enqueue(t)
		addr := custProvider(t, q)
		local := mta()
		sink := smtpsink.NewLMTP(startLocalMTA(t, local, true, "unix"))
		var mu sync.Mutex
		var partial []odmr.RecipientResult
		sink.OnPartialDelivery = func(env odmr.Envelope, failed []odmr.RecipientResult) {
			mu.Lock()
			partial = append(partial, failed...)
			mu.Unlock()
		}
		res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, 1, res.Messages)

		got := local.received()
		require.Len(t, got, 1)
		assert.Equal(t, []string{"ok@example.org"}, got[0].env.To)
		mu.Lock()
		require.Len(t, partial, 1)
		assert.Equal(t, "full@example.org", partial[0].Recipient)
		var e *odmr.Error
		require.ErrorAs(t, partial[0].Err, &e)
		assert.Equal(t, 452, e.Code)
		mu.Unlock()

		failed := q.Failed()
		require.Len(t, failed, 1)
		assert.Equal(t, "nobody@example.org", failed[0].Recipient, "refused at RCPT, recipient by recipient")
		assert.Zero(t, q.Len())
	})

	t.Run("without OnPartialDelivery the message is retried", func(t *testing.T) {
		q := enqueue(t)
		addr := custProvider(t, q)
		local := mta()
		sink := smtpsink.NewLMTP("unix:" + startLocalMTA(t, local, true, "unix"))
		res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, 1, res.Refused)
		failed := q.Failed()
		require.Len(t, failed, 1)
		assert.Equal(t, "nobody@example.org", failed[0].Recipient)
		msgs := q.Messages()
		require.Len(t, msgs, 1)
		assert.Equal(t, []string{"ok@example.org", "full@example.org"}, msgs[0].To, "never lost: both stay queued")
	})

	t.Run("all recipients failing after the data", func(t *testing.T) {
		q := &memqueue.Queue{}
		custEnqueue(t, q, "a@sender.test", "Subject: lmtp\r\n\r\nx\r\n", "full@example.org")
		addr := custProvider(t, q)
		sink := smtpsink.NewLMTP(startLocalMTA(t, mta(), true, "tcp"))
		res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, 1, res.Refused)
		_, lastErr := q.LastError("1", "full@example.org")
		var e *odmr.Error
		require.ErrorAs(t, lastErr, &e)
		assert.Equal(t, 452, e.Code, "the LMTP server's reply is passed on")
		assert.Contains(t, e.Message, "Mailbox full")
	})
}

func TestSMTPSinkStopsOnCancel(t *testing.T) {
	// A local server that accepts the connection and never greets. The
	// context is cancelled once the sink is connected, waiting for the
	// greeting; the command timeout is far off, so only the
	// cancellation can end the wait.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, _ := smtptest.Script(t, func(_ *textproto.Conn, conn net.Conn) {
		cancel()
		io.Copy(io.Discard, conn)
	})
	sink := smtpsink.New(addr)
	sink.Timeout = time.Hour
	var err error
	done := make(chan error, 1)
	go func() {
		done <- sink.Deliver(ctx, odmr.Envelope{From: "a@b", To: []string{"c@d"}}, strings.NewReader("x\r\n"))
	}()
	select {
	case err = <-done:
	case <-time.After(custLeakWait): // a safety net, not a measure
		t.Fatalf("Deliver did not return within %v of the cancellation", custLeakWait)
	}
	// With the command timeout an hour away, only the cancellation could
	// have ended the wait, and the error says so.
	require.ErrorIs(t, err, context.Canceled)
}

func TestRelayEximPatternEndsCleanly(t *testing.T) {
	custNoLeaks(t)
	// QUIT right behind the 250, then a half-close: the relay passes both
	// on and the local server's replies come back.
	saw := make(chan []string, 1)
	addr := fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		if !fakeLogin(c) {
			return
		}
		c.ReadLine() // ATRN
		io.WriteString(raw, "250 ODMR provider turning line around\r\nQUIT\r\n")
		raw.(*net.TCPConn).CloseWrite()
		var lines []string
		for {
			l, err := c.ReadLine()
			if err != nil {
				break
			}
			lines = append(lines, l)
		}
		saw <- lines
	})
	mta := &localMTA{}
	c := custCustomer(addr, nil, "example.org")
	c.Handler = odmr.Relay(startLocalMTA(t, mta, false, "tcp"))
	_, err := c.Fetch(context.Background())
	require.NoError(t, err)
	lines := <-saw
	require.Len(t, lines, 2)
	assert.Equal(t, "220 local.example.org ESMTP Service Ready", lines[0], "the local server's greeting is the customer's")
	assert.True(t, strings.HasPrefix(lines[1], "221 "), lines[1])
}

func TestSMTPSinkPassesDSNRequestsOn(t *testing.T) {
	custNoLeaks(t)
	q := &memqueue.Queue{}
	dsn := &odmr.DSN{Return: odmr.ReturnFull, EnvID: "env 42", Recipients: map[string]odmr.RecipientDSN{
		"u1@example.org": {Notify: []odmr.DSNNotify{odmr.NotifySuccess}, ORcptType: "RFC822", ORcpt: "first@example.org"},
	}}
	_, err := q.Enqueue(odmr.Envelope{From: "a@sender.test", To: []string{"u1@example.org", "u2@example.org"}, DSN: dsn},
		strings.NewReader("Subject: dsn\r\n\r\nHi.\r\n"))
	require.NoError(t, err)
	mta := &localMTA{}
	sink := smtpsink.New(startLocalMTA(t, mta, false, "tcp"))
	_, err = custCustomer(custProvider(t, q), sink, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	got := mta.received()
	require.Len(t, got, 1)
	assert.Equal(t, dsn, got[0].env.DSN, "provider -> customer -> local server, RET, ENVID, NOTIFY and ORCPT kept")

	// With NoDSN (a local server without DSN) the requests stop at the
	// provider, which the customer then does not offer DSN.
	_, err = q.Enqueue(odmr.Envelope{From: "a@sender.test", To: []string{"u1@example.org"}, DSN: dsn},
		strings.NewReader("Subject: dsn\r\n\r\nHi.\r\n"))
	require.NoError(t, err)
	sink.NoDSN = true
	_, err = custCustomer(custProvider(t, q), sink, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	got = mta.received()
	require.Len(t, got, 2)
	assert.Nil(t, got[1].env.DSN)
}

func TestSMTPSinkOffersDSNOnlyWhenTheLocalServerDoes(t *testing.T) {
	custNoLeaks(t)
	q := &memqueue.Queue{}
	dsn := &odmr.DSN{Return: odmr.ReturnHeaders, Recipients: map[string]odmr.RecipientDSN{
		"u1@example.org": {Notify: []odmr.DSNNotify{odmr.NotifySuccess}},
	}}
	_, err := q.Enqueue(odmr.Envelope{From: "a@sender.test", To: []string{"u1@example.org"}, DSN: dsn},
		strings.NewReader("Subject: dsn\r\n\r\nHi.\r\n"))
	require.NoError(t, err)
	// A local server without DSN, and a sink left at its defaults.
	mta := &localMTA{}
	srv := smtp.NewServer(mta)
	srv.Domain = "local.example.org"
	srv.ErrorLog = log.New(io.Discard, "", 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() { smtptest.Shutdown(t, srv); <-done })

	sink := smtpsink.New(l.Addr().String())
	ok, err := sink.ProbeDSN(context.Background())
	require.NoError(t, err)
	assert.False(t, ok)

	var logs lockedBuffer
	c := custCustomer(custProvider(t, q), sink, "example.org")
	c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages)
	got := mta.received()
	require.Len(t, got, 1)
	assert.Nil(t, got[0].env.DSN, "not offered to the provider, so not passed on")
	assert.Contains(t, logs.String(), "the local server does not offer DSN")

	// A server that does offer it.
	sink = smtpsink.New(startLocalMTA(t, &localMTA{}, true, "tcp"))
	sink.LMTP = true
	ok, err = sink.ProbeDSN(context.Background())
	require.NoError(t, err)
	assert.True(t, ok)
}

// TestSMTPSinkLocal421IsA451: a 421 of the local server closes the local
// connection, not the provider's: by the sink's session and its one-shot
// calls alike, the provider is told 451 with the same text, and keeps
// the mail for the next fetch.
func TestSMTPSinkLocal421IsA451(t *testing.T) {
	mta := &localMTA{refuse: map[string]*smtp.SMTPError{
		"busy@example.org": {Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Shutting down"},
	}}
	sink := smtpsink.New(startLocalMTA(t, mta, false, "tcp"))
	env := odmr.Envelope{From: "a@sender.test", To: []string{"busy@example.org"}}
	ctx := context.Background()
	want := func(what string, err error) {
		t.Helper()
		var e *odmr.Error
		require.ErrorAs(t, err, &e, what)
		assert.Equal(t, 451, e.Code, what)
		assert.Equal(t, odmr.EnhancedCode{4, 3, 2}, e.EnhancedCode, what)
		assert.Equal(t, "Shutting down", e.Message, what)
	}
	want("CheckRecipient", sink.CheckRecipient(ctx, env, "busy@example.org"))
	want("Deliver", sink.Deliver(ctx, env, strings.NewReader("Subject: x\r\n\r\nx\r\n")))

	ss, err := sink.Begin(ctx)
	require.NoError(t, err)
	defer ss.Close()
	require.NoError(t, ss.Mail(ctx, env))
	want("session RCPT", ss.Rcpt(ctx, env, "busy@example.org"))
	assert.Empty(t, mta.received())
}
