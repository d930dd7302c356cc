package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

func TestReceivedFieldForm(t *testing.T) {
	now := time.Date(2026, 12, 7, 4, 56, 31, 0, time.FixedZone("", 3600))
	v4 := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 4000}
	assert.Equal(t, "Received: from client.test ([192.0.2.1])\r\n"+
		"\tby mx.example.net (odmr-provider) with ESMTP id ID1\r\n"+
		"\tfor <u@example.org>;\r\n"+
		"\tMon, 07 Dec 2026 04:56:31 +0100\r\n",
		receivedField("client.test", v4, "mx.example.net", "ID1", false, false, []string{"u@example.org"}, now))

	v6 := &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 4000}
	f := receivedField("bad name\r\nX-Injected: 1", v6, "mx.example.net", "ID2", true, true, []string{"a@example.org", "b@example.org"}, now)
	// Several recipients: none is named, so that none learns the others.
	assert.Equal(t, "Received: from bad?name??X-Injected:?1 ([IPv6:2001:db8::1])\r\n"+
		"\tby mx.example.net (odmr-provider) with UTF8SMTPS id ID2;\r\n"+
		"\tMon, 07 Dec 2026 04:56:31 +0100\r\n", f)
	assert.Contains(t, receivedField("", v4, "h", "ID3", true, false, nil, now), "from unknown ([192.0.2.1])\r\n\tby h (odmr-provider) with ESMTPS id ID3;")
	// A recipient too long for a line of at most 998 octets is left out.
	long := strings.Repeat("x", 980) + "@example.org"
	f = receivedField("client.test", v4, "mx.example.net", "ID4", false, false, []string{long}, now)
	assert.NotContains(t, f, "for <")
	for _, line := range strings.Split(f, "\r\n") {
		assert.LessOrEqual(t, len(line), 998)
	}
}

// TestIntakeStampsReceived: what the intake queues starts with a Received
// field naming the client's EHLO and address, the intake, the ID also
// logged with the queue's ID, and the one recipient.
func TestIntakeStampsReceived(t *testing.T) {
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	q := &memqueue.Queue{}
	logs := &strings.Builder{}
	srv := smtp.NewServer(&intake{accounts: accts, hostname: "prov.test", log: slog.New(slog.NewTextHandler(logs, nil)),
		enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
			return q.Enqueue(env, body)
		}})
	srv.Domain = "prov.test"
	addr := smtptest.Serve(t, srv)

	c, err := smtp.Dial(addr)
	require.NoError(t, err)
	require.NoError(t, c.Hello("client.test"))
	require.NoError(t, c.SendMail("s@x.test", []string{"u@example.org"}, strings.NewReader("Subject: one\r\n\r\nhi\r\n")))
	require.NoError(t, c.SendMail("s@x.test", []string{"u@example.org", "v@example.org"}, strings.NewReader("Subject: two\r\n\r\nhi\r\n")))
	c.Quit()
	smtptest.Shutdown(t, srv)

	var bodies []string
	batch, err := q.Claim(context.Background(), []string{"example.org"})
	require.NoError(t, err)
	for {
		m, err := batch.Next(context.Background())
		if err != nil {
			break
		}
		r, err := m.Open()
		require.NoError(t, err)
		b, _ := io.ReadAll(r)
		r.Close()
		bodies = append(bodies, string(b))
	}
	batch.Close()
	require.Len(t, bodies, 2)
	head, rest, _ := strings.Cut(bodies[0], ";\r\n\t")
	assert.Regexp(t, `^Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby prov\.test \(odmr-provider\) with ESMTP id [0-9a-f]{28}\r\n\tfor <u@example\.org>$`, head)
	assert.Regexp(t, `^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\nSubject: one\r\n`, rest)
	assert.NotContains(t, bodies[1], "for <")
	id := head[strings.Index(head, " id ")+4 : strings.Index(head, "\r\n\tfor")]
	assert.Contains(t, logs.String(), "id=1 client=127.0.0.1:")
	assert.Contains(t, logs.String(), "received-id="+id)
}

// TestIntakeReceivedIDIsQueueID: with the spool, the ID in the Received
// field is the queue ID, which the "queued" log record carries under id,
// with the client's address under client, so a message can be followed
// from its header to the log and the queue tools.
func TestIntakeReceivedIDIsQueueID(t *testing.T) {
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	s, err := spool.Open(filepath.Join(t.TempDir(), "spool"), spool.Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer s.Close()
	logs := &strings.Builder{}
	srv := smtp.NewServer(&intake{accounts: accts, hostname: "prov.test", log: logfmt.New(logs, "json", slog.LevelInfo),
		enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
			return s.Enqueue(ctx, env, body)
		}})
	srv.Domain = "prov.test"
	addr := smtptest.Serve(t, srv)
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	local := conn.LocalAddr().String()
	c := smtp.NewClient(conn)
	require.NoError(t, c.Hello("client.test"))
	require.NoError(t, c.SendMail("s@x.test", []string{"u@example.org"}, strings.NewReader("Subject: one\r\n\r\nhi\r\n")))
	c.Quit()
	smtptest.Shutdown(t, srv)

	msgs, err := s.Messages(context.Background())
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	qid := msgs[0].Envelope.ID
	body, err := s.OpenMessage(context.Background(), qid)
	require.NoError(t, err)
	head, err := textproto.NewReader(bufio.NewReader(body)).ReadMIMEHeader()
	body.Close()
	require.NoError(t, err)
	assert.Contains(t, head.Get("Received"), "with ESMTP id "+qid+" ")

	var rec map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		require.NoError(t, json.Unmarshal([]byte(line), &rec))
		if rec["msg"] == "odmr-provider: queued" {
			break
		}
	}
	assert.Equal(t, "odmr-provider: queued", rec["msg"])
	assert.Equal(t, qid, rec["id"])
	assert.Equal(t, local, rec["client"])
	assert.NotContains(t, rec, "received-id")
	assert.NotContains(t, rec, "remote")
}

// TestReceivedFieldBound: the longest field the names allow stays within
// maxReceivedField, the room the queue's size limit leaves for it.
func TestReceivedFieldBound(t *testing.T) {
	long := strings.Repeat("a", 1000)
	addr := &net.UnixAddr{Name: long, Net: "unix"}
	rcpt := strings.Repeat("r", 890) + "@example.org"
	require.Len(t, rcpt, 902)
	rcpt = rcpt[2:]
	f := receivedField(long, addr, long, spool.NewID(), true, true, []string{rcpt}, time.Now())
	assert.Contains(t, f, "for <"+rcpt+">")
	assert.LessOrEqual(t, len(f), maxReceivedField)
}
