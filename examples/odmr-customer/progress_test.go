package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/logfmt"
	"github.com/go-odmr/odmr/memqueue"
)

// pipeFetch fetches n queued messages over a net.Pipe from a real
// Provider, into a sink that takes perMessage of the bubble's clock for
// each, with progress reports every every; it returns the exit status and
// what the program wrote. It runs in a synctest bubble.
func pipeFetch(t *testing.T, n int, perMessage, every time.Duration) (int, string) {
	q := &memqueue.Queue{}
	enqueueTo(t, q, n)
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org"}}}
	p := &odmr.Provider{Hostname: "provider.test", Authenticator: accts, Authorizer: accts, Queue: q,
		Logger: slog.New(slog.DiscardHandler)}
	defer p.Close()
	var out bytes.Buffer
	w := &logfmt.LockedWriter{W: &out}
	log := slog.New(slog.NewTextHandler(w, nil))
	prog := &progress{every: every, log: log}
	slow := odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
		if _, err := io.Copy(io.Discard, body); err != nil {
			return err
		}
		time.Sleep(perMessage) // a slow local target, on the bubble's clock
		return nil
	})
	c := &odmr.Customer{
		Addr: "provider.test",
		Dial: func(context.Context, string, string) (net.Conn, error) {
			cli, srv := net.Pipe()
			go p.Serve(srv)
			return cli, nil
		},
		Username: "alice", Secret: "s3cret", Hostname: "customer.test", AllowInsecureAuth: true,
		Domains:  []string{"example.org"},
		Sink:     slow,
		Progress: func(r odmr.FetchResult) { prog.set(r.Messages, r.Bytes) },
		Logger:   log,
	}
	code := fetchOnce(context.Background(), c, &config{provider: "provider.test"}, prog, w, w)
	assert.Zero(t, q.Len(), "all the mail was taken")
	return code, out.String()
}

func TestProgressReportsALongFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 5 messages at 3s each (done at 3, 6, 9, 12 and 15s): one
		// report at 10s, after the third, counting bytes as received.
		code, out := pipeFetch(t, 5, 3*time.Second, 10*time.Second)
		assert.Equal(t, exitMail, code, out)
		require.Equal(t, 1, strings.Count(out, "fetch in progress"), out)
		assert.Contains(t, out, `msg="odmr-customer: fetch in progress" messages=3 bytes=66 elapsed=10s msg_per_s=0.3 bytes_per_s=6`+"\n")
		assert.Contains(t, out, "received 5 message(s)")
		assert.Less(t, strings.Index(out, "fetch in progress"), strings.Index(out, "received 5 message(s)"),
			"the reports stop before the outcome")
	})
}

func TestProgressReportsAgainAndAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Messages done at 7, 14, 21, 28 and 35s: reports at 10, 20 and
		// 30s, none at the same time as a message.
		code, out := pipeFetch(t, 5, 7*time.Second, 10*time.Second)
		assert.Equal(t, exitMail, code, out)
		assert.Equal(t, 3, strings.Count(out, "fetch in progress"), out)
		for _, s := range []string{"messages=1 bytes=22 ", "messages=2 bytes=44 ", "messages=4 bytes=88 ", "elapsed=30s"} {
			assert.Contains(t, out, s)
		}
	})
}

func TestProgressSilentOnAShortFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		code, out := pipeFetch(t, 3, 3*time.Second, 10*time.Second)
		assert.Equal(t, exitMail, code, out)
		assert.NotContains(t, out, "fetch in progress")
	})
}

func TestProgressZeroIsOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		code, out := pipeFetch(t, 5, 3*time.Second, 0)
		assert.Equal(t, exitMail, code, out)
		assert.NotContains(t, out, "fetch in progress")
	})
}

func TestProgramLogsEachMessageAtV(t *testing.T) {
	q := &memqueue.Queue{}
	addr := startProvider(t, q)
	mta, mtaBackend := startLocalMTA(t)
	for _, tc := range []struct {
		target, addr, line string
	}{
		{"-maildir", t.TempDir(), `msg="odmr: message received"`},
		{"-smtp", mta, `msg="odmr: message received"`},
		// The relay has the local server take the messages; it logs
		// them, with the local server's reply.
		{"-relay", mta, `msg="odmr: message relayed"`},
	} {
		enqueueTo(t, q, 3)
		code, stderr := runCustomer(t, "-provider", addr, "-user", "alice", "-domains", "example.org",
			tc.target, tc.addr, "-hostname", "customer.test", "-v")
		assert.Equal(t, exitMail, code, "%s: %s", tc.target, stderr)
		assert.Equal(t, 3, strings.Count(stderr, tc.line), "%s: %s", tc.target, stderr)
		if tc.target == "-relay" {
			assert.Contains(t, stderr, "reply=\"250 2.0.0 OK: queued\"", stderr)
			assert.Equal(t, 3, strings.Count(stderr, "from=x@sender.test rcpts=1 bytes="), stderr)
		}
		// Without -v, no line per message.
		enqueueTo(t, q, 1)
		code, stderr = runCustomer(t, "-provider", addr, "-user", "alice", "-domains", "example.org",
			tc.target, tc.addr, "-hostname", "customer.test")
		assert.Equal(t, exitMail, code, "%s: %s", tc.target, stderr)
		assert.NotContains(t, stderr, "message re", tc.target)
	}
	// -smtp took its 4 messages in one local session, -relay in one
	// session a fetch: the program hands the sink to the customer as it
	// is, so that the customer sees smtpsink's session per fetch.
	assert.Equal(t, int64(4), mtaBackend.sessions.Load(), "local SMTP sessions")
}

func TestProgressFlag(t *testing.T) {
	var stderr bytes.Buffer
	assert.Equal(t, exitUsage, run([]string{"-provider", "p", "-user", "u", "-maildir", "d", "-progress", "-1s"}, &stderr))
	assert.Contains(t, stderr.String(), "-progress must not be negative")
	cfg, err := parseFlags([]string{"-provider", "p", "-user", "u", "-maildir", "d"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 10*time.Second, cfg.progress, "on by default")
	stderr.Reset()
	run([]string{"-h"}, &stderr)
	assert.Contains(t, stderr.String(), "-progress DURATION every DURATION while a fetch runs (default 10s)")
	assert.Contains(t, stderr.String(), `"message relayed"`)
}
