package odmr_test

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtrace"
	"github.com/go-odmr/odmr/spool"
)

// events records what a ProviderTrace is told.
type events struct {
	mu         sync.Mutex
	started    int
	ended      []odmrtrace.SessionEnd
	auth       []odmrtrace.AuthEvent
	atrn       []odmrtrace.ATRNEvent
	deliveries []odmrtrace.DeliveryEvent
	endedc     chan odmrtrace.SessionEnd
}

func newEvents() *events { return &events{endedc: make(chan odmrtrace.SessionEnd, 16)} }

func (e *events) observer() *odmrtrace.ProviderTrace {
	return &odmrtrace.ProviderTrace{
		SessionStarted: func(odmrtrace.SessionStart) { e.mu.Lock(); e.started++; e.mu.Unlock() },
		SessionEnded: func(ev odmrtrace.SessionEnd) {
			e.mu.Lock()
			e.ended = append(e.ended, ev)
			e.mu.Unlock()
			e.endedc <- ev
		},
		Auth:     func(ev odmrtrace.AuthEvent) { e.mu.Lock(); e.auth = append(e.auth, ev); e.mu.Unlock() },
		ATRN:     func(ev odmrtrace.ATRNEvent) { e.mu.Lock(); e.atrn = append(e.atrn, ev); e.mu.Unlock() },
		Delivery: func(ev odmrtrace.DeliveryEvent) { e.mu.Lock(); e.deliveries = append(e.deliveries, ev); e.mu.Unlock() },
	}
}

// waitEnd waits for the next session to end. The bound is a safety net
// so that a hanging session fails the test, not a measure.
func (e *events) waitEnd(t *testing.T) odmrtrace.SessionEnd {
	t.Helper()
	select {
	case ev := <-e.endedc:
		return ev
	case <-time.After(time.Minute):
		t.Fatal("no session ended")
		return odmrtrace.SessionEnd{}
	}
}

// obsSecrets are the accounts of the observer tests: alice owns
// example.org, bob example.net.
var obsSecrets = map[string]string{"alice": "alice-secret", "bob": "bob-secret"}
var obsDomains = map[string][]string{"alice": {"example.org"}, "bob": {"example.net"}}

// obsProvider starts a provider with a Trace on loopback, over a
// spool in a temporary directory.
func obsProvider(t *testing.T, opts ...func(*odmr.Provider)) (*odmr.Provider, *spool.Spool, *events, string) {
	t.Helper()
	q, err := spool.Open(t.TempDir(), spool.Options{Logger: slog.New(slog.DiscardHandler),
		Bouncer: spool.BouncerFunc(func(context.Context, odmr.Envelope, io.Reader) error { return nil })})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ev := newEvents()
	p := &odmr.Provider{
		Hostname: "provider.test",
		Authenticator: odmr.AuthenticatorFunc(func(_ context.Context, user string) ([]byte, error) {
			if s, ok := obsSecrets[user]; ok {
				return []byte(s), nil
			}
			return nil, odmr.ErrUnknownUser
		}),
		Authorizer: odmr.DomainAuthorizerFunc(func(_ context.Context, id string) ([]string, error) {
			return obsDomains[id], nil
		}),
		Queue:  q,
		Logger: slog.New(slog.DiscardHandler),
		Trace:  ev.observer(),
	}
	for _, o := range opts {
		o(p)
	}
	return p, q, ev, serveLoopback(t, p)
}

// refusingSink accepts mail except from "bounce@" (550) and "defer@" (451).
type refusingSink struct{}

func (refusingSink) Deliver(_ context.Context, env odmr.Envelope, body io.Reader) error {
	io.Copy(io.Discard, body)
	switch {
	case strings.HasPrefix(env.From, "bounce@"):
		return &odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "No such user"}
	case strings.HasPrefix(env.From, "defer@"):
		return &odmr.Error{Code: 451, EnhancedCode: odmr.EnhancedCode{4, 3, 0}, Message: "Try later"}
	}
	return nil
}

// TestTraceDeliverySession: a session that delivers reports its start,
// AUTH, the ATRN's 250, each recipient with its result and size, and its
// end with the counts.
func TestTraceDeliverySession(t *testing.T) {
	_, q, ev, addr := obsProvider(t)
	enqueue := func(from string, to ...string) string {
		id, err := q.Enqueue(context.Background(), odmr.Envelope{From: from, To: to},
			strings.NewReader("Subject: hi\r\n\r\nHello.\r\n"))
		require.NoError(t, err)
		return id
	}
	ok := enqueue("ok@sender.test", "u1@example.org", "u2@example.org")
	enqueue("bounce@sender.test", "u3@example.org")
	enqueue("defer@sender.test", "u4@example.org")
	enqueue("other@sender.test", "b1@example.net")

	stats, err := q.QueueStats(context.Background())
	require.NoError(t, err)
	require.Len(t, stats, 2)
	assert.Equal(t, "example.net", stats[0].Domain)
	assert.Equal(t, "example.org", stats[1].Domain)
	assert.Equal(t, 3, stats[1].Messages)
	assert.Positive(t, stats[1].Bytes)
	assert.False(t, stats[1].Oldest.IsZero())

	c := &odmr.Customer{Addr: addr, Username: "alice", Secret: obsSecrets["alice"], Hostname: "customer.test",
		Domains: []string{"example.org"},
		Sink:    refusingSink{}, Logger: slog.New(slog.DiscardHandler)}
	_, err = c.Fetch(context.Background())
	require.NoError(t, err)
	end := ev.waitEnd(t)

	ev.mu.Lock()
	defer ev.mu.Unlock()
	assert.Equal(t, 1, ev.started)
	assert.Equal(t, []odmrtrace.AuthEvent{{Mechanism: odmr.SCRAMSHA256, Result: odmrtrace.AuthSuccess, User: "alice"}}, ev.auth)
	assert.Equal(t, []odmrtrace.ATRNEvent{{Identity: "alice", Code: 250}}, ev.atrn)
	byRcpt := map[string]odmrtrace.DeliveryEvent{}
	for _, d := range ev.deliveries {
		byRcpt[d.Recipient] = d
		assert.Equal(t, "example.org", d.Domain)
		assert.Positive(t, d.Bytes, "the size the queue gave")
		assert.NotZero(t, d.Latency, "the queue says when the message arrived")
	}
	require.Len(t, ev.deliveries, 4, "bob's recipient is not this session's")
	assert.Equal(t, odmrtrace.Delivered, byRcpt["u1@example.org"].Result)
	assert.Equal(t, ok, byRcpt["u1@example.org"].ID)
	assert.Equal(t, odmrtrace.Delivered, byRcpt["u2@example.org"].Result)
	assert.Nil(t, byRcpt["u2@example.org"].Err)
	assert.Equal(t, odmrtrace.Bounced, byRcpt["u3@example.org"].Result)
	assert.ErrorContains(t, byRcpt["u3@example.org"].Err, "550")
	assert.Equal(t, odmrtrace.Deferred, byRcpt["u4@example.org"].Result)

	assert.Equal(t, odmr.StateReversed.String(), end.State)
	assert.Equal(t, odmrtrace.OutcomeOK, end.Outcome)
	assert.NoError(t, end.Err)
	assert.Equal(t, "alice", end.Identity)
	assert.Equal(t, [4]int{3, 2, 1, 1}, [4]int{end.Messages, end.Delivered, end.Deferred, end.Bounced})

	stats, err = q.QueueStats(context.Background())
	require.NoError(t, err)
	require.Len(t, stats, 2)
	assert.Equal(t, 1, stats[1].Messages, "the deferred message stays queued")
}

// obsDial connects a scripted customer and reads the greeting.
func obsDial(t *testing.T, addr string) *textproto.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	tp := textproto.NewConn(conn)
	t.Cleanup(func() { tp.Close() })
	_, _, err = tp.ReadResponse(220)
	require.NoError(t, err)
	return tp
}

func obsCmd(t *testing.T, tp *textproto.Conn, code int, line string) {
	t.Helper()
	require.NoError(t, tp.PrintfLine("%s", line))
	got, msg, err := tp.ReadResponse(code)
	require.NoError(t, err, "%s: %d %s", line, got, msg)
}

// TestTraceAuthAndATRN: AUTH failures, rate-limited attempts and
// successes are told apart by mechanism, and each ATRN reply is reported
// with its code.
func TestTraceAuthAndATRN(t *testing.T) {
	_, _, ev, addr := obsProvider(t, func(p *odmr.Provider) {
		p.AllowInsecureAuth = true
		// One guess per identity: the second wrong secret is refused
		// whatever it is.
		p.AuthGuessBurst = 1
		p.AuthGuessInterval = time.Hour
	})
	plain := func(user, pass string) string {
		return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))
	}
	tp := obsDial(t, addr)
	obsCmd(t, tp, 250, "EHLO customer.test")
	obsCmd(t, tp, 530, "ATRN")
	obsCmd(t, tp, 535, plain("alice", "wrong"))
	obsCmd(t, tp, 454, plain("alice", "wrong again"))
	obsCmd(t, tp, 235, plain("bob", obsSecrets["bob"]))
	obsCmd(t, tp, 450, "ATRN example.org")
	obsCmd(t, tp, 453, "ATRN example.net")
	obsCmd(t, tp, 221, "QUIT")
	end := ev.waitEnd(t)

	ev.mu.Lock()
	defer ev.mu.Unlock()
	assert.Equal(t, []odmrtrace.AuthEvent{
		{Mechanism: "PLAIN", Result: odmrtrace.AuthFailure, User: "alice"},
		{Mechanism: "PLAIN", Result: odmrtrace.AuthRateLimited, User: "alice"},
		{Mechanism: "PLAIN", Result: odmrtrace.AuthSuccess, User: "bob"},
	}, ev.auth)
	assert.Equal(t, []odmrtrace.ATRNEvent{{Code: 530}, {Identity: "bob", Code: 450}, {Identity: "bob", Code: 453}}, ev.atrn)
	assert.Equal(t, odmr.StateAuthenticated.String(), end.State)
	assert.Equal(t, odmrtrace.OutcomeOK, end.Outcome)
	assert.Empty(t, ev.deliveries)
}

// TestTraceSessionOutcomes: each way a session ends has its outcome.
func TestTraceSessionOutcomes(t *testing.T) {
	t.Run("refused and evicted", func(t *testing.T) {
		_, _, ev, addr := obsProvider(t, func(p *odmr.Provider) { p.MaxSessions = 1 })
		first := obsDial(t, addr)
		obsDial(t, addr) // makes the first give way
		_, _, err := first.ReadResponse(421)
		assert.NoError(t, err)
		end := ev.waitEnd(t)
		assert.Equal(t, odmrtrace.OutcomeEvicted, end.Outcome)
		assert.Equal(t, odmr.StateInitial.String(), end.State)

		_, _, ev2, addr2 := obsProvider(t, func(p *odmr.Provider) { p.MaxSessionsPerAddr = 1 })
		obsDial(t, addr2)
		conn, err := net.Dial("tcp", addr2)
		require.NoError(t, err)
		defer conn.Close()
		assert.Equal(t, odmrtrace.OutcomeRefused, ev2.waitEnd(t).Outcome)
	})
	t.Run("timeout", func(t *testing.T) {
		_, _, ev, addr := obsProvider(t, func(p *odmr.Provider) { p.CommandTimeout = 10 * time.Millisecond })
		tp := obsDial(t, addr)
		_, _, err := tp.ReadResponse(421)
		assert.NoError(t, err)
		assert.Equal(t, odmrtrace.OutcomeTimeout, ev.waitEnd(t).Outcome)
	})
	t.Run("rejected", func(t *testing.T) {
		_, _, ev, addr := obsProvider(t)
		tp := obsDial(t, addr)
		require.NoError(t, tp.PrintfLine("GET / HTTP/1.1"))
		assert.Equal(t, odmrtrace.OutcomeRejected, ev.waitEnd(t).Outcome)
	})
	t.Run("closed by the customer", func(t *testing.T) {
		_, _, ev, addr := obsProvider(t)
		tp := obsDial(t, addr)
		obsCmd(t, tp, 250, "EHLO customer.test")
		tp.Close()
		end := ev.waitEnd(t)
		assert.Equal(t, odmrtrace.OutcomeError, end.Outcome)
		assert.Error(t, end.Err)
	})
	t.Run("shutdown", func(t *testing.T) {
		p, _, ev, addr := obsProvider(t)
		tp := obsDial(t, addr)
		obsCmd(t, tp, 250, "EHLO customer.test")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, p.Shutdown(ctx))
		assert.Equal(t, odmrtrace.OutcomeShutdown, ev.waitEnd(t).Outcome)
	})
}
