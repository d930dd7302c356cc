package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/logfmt"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/memqueue"
	"github.com/go-odmr/odmr/spool"
)

func TestLogFormatFlag(t *testing.T) {
	c, err := parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	assert.Equal(t, "text", c.logFormat)
	c, err = parseFlags([]string{"-accounts", "x", "-log-format", "json"})
	require.NoError(t, err)
	assert.Equal(t, "json", c.logFormat)
	_, err = parseFlags([]string{"-accounts", "x", "-log-format", "xml"})
	assert.ErrorContains(t, err, "-log-format")
}

// TestIntakeQueuedLogIsOneJSONLine: with -log-format json, each queued
// message is one JSON object a line, at INFO, with the queue's ID, the
// sender, the recipients, the size queued and the client.
func TestIntakeQueuedLogIsOneJSONLine(t *testing.T) {
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	q := &memqueue.Queue{}
	logs := &strings.Builder{}
	srv := smtp.NewServer(&intake{accounts: accts, hostname: "prov.test", log: logfmt.New(logs, "json", slog.LevelInfo),
		enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
			return q.Enqueue(env, body)
		}})
	srv.Domain = "prov.test"
	addr := smtptest.Serve(t, srv)
	c, err := smtp.Dial(addr)
	require.NoError(t, err)
	require.NoError(t, c.Hello("client.test"))
	require.NoError(t, c.SendMail("s@x.test", []string{"u@example.org", "v@example.org"}, strings.NewReader("Subject: two\r\n\r\nhi\r\n")))
	c.Quit()
	smtptest.Shutdown(t, srv)

	var queued []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "line %q", line)
		if rec["msg"] == "odmr-provider: queued" {
			queued = append(queued, rec)
		}
	}
	require.Len(t, queued, 1)
	r := queued[0]
	assert.Equal(t, "INFO", r["level"])
	assert.Equal(t, "1", r["id"])
	assert.Equal(t, "s@x.test", r["from"])
	assert.Equal(t, []any{"u@example.org", "v@example.org"}, r["to"])
	assert.Contains(t, r["client"], "127.0.0.1:")
	assert.Regexp(t, `^[0-9a-f]{28}$`, r["received-id"], "the in-memory queue names its messages: the Received field's ID is logged too")
	require.Len(t, q.Messages(), 1)
	assert.EqualValues(t, q.Messages()[0].Size, r["size"])
}

// TestRefusalLoggedOnce: a recipient the customer refuses is logged once,
// with the reply, by the provider; with the in-memory queue the program
// adds only that no bounce is sent.
func TestRefusalLoggedOnce(t *testing.T) {
	for _, spoolDir := range []string{"", t.TempDir()} {
		logs := &strings.Builder{}
		log := slog.New(slog.NewTextHandler(logs, nil))
		q, enqueue, _, closeQueue, err := openQueue(&config{spoolDir: spoolDir, maxAge: spool.DefaultMaxAge}, log)
		require.NoError(t, err)
		id, err := enqueue(context.Background(), odmr.Envelope{From: "s@x.test", To: []string{"u@example.org"}}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
		require.NoError(t, err)
		accts := accounts.Map{"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org"}}}
		p := &odmr.Provider{Authenticator: accts, Authorizer: accts, Queue: q, AllowInsecureAuth: true, Logger: log}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go p.ServeListener(l)
		c := &odmr.Customer{Addr: l.Addr().String(), Username: "alice", Secret: "s3cret", Domains: []string{"example.org"}, Logger: discardLog(),
			Sink: odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
				io.Copy(io.Discard, body)
				return &odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "no such user"}
			})}
		_, err = c.Fetch(context.Background())
		require.NoError(t, err)
		require.NoError(t, p.Shutdown(context.Background()))
		closeQueue()

		assert.Equal(t, 1, strings.Count(logs.String(), "550 5.1.1 no such user"), "spool %q:\n%s", spoolDir, logs)
		assert.Contains(t, logs.String(), `msg="odmr: bounced"`)
		if spoolDir == "" {
			assert.Contains(t, logs.String(), `msg="odmr-provider: no bounce sent: the in-memory queue sends none" id=`+id)
		}
	}
}
