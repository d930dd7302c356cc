package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/logfmt"
	"github.com/go-odmr/odmr/internal/smtptest"
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
	accounts := odmr.Accounts{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	q := &odmr.MemoryQueue{}
	logs := &strings.Builder{}
	srv := smtp.NewServer(&intake{accounts: accounts, hostname: "prov.test", log: logfmt.New(logs, "json", slog.LevelInfo),
		enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
			return q.Enqueue(env, body)
		}})
	srv.Domain = "prov.test"
	addr := serveIntake(t, srv)
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
	assert.Contains(t, r["remote"], "127.0.0.1:")
	require.Len(t, q.Messages(), 1)
	assert.EqualValues(t, q.Messages()[0].Size, r["size"])
}
