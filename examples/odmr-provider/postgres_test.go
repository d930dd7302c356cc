package main

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/pgtest"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/pgqueue"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestPostgresFlags checks how -queue, -accounts postgres:// and
// -load-accounts combine with the other flags. The program against a
// real database is tested by pgqueue's multi-node test.
func TestPostgresFlags(t *testing.T) {
	const url = "postgres://odmr@db/odmr"
	c, err := parseFlags([]string{"-accounts", url, "-queue", url, "-lease-ttl", "1m", "-queue-timeout", "2m", "-quota-messages", "5", "-smarthost", "mx:25"})
	require.NoError(t, err)
	assert.Equal(t, url, c.queueURL)
	assert.Equal(t, time.Minute, c.leaseTTL)
	assert.Equal(t, 2*time.Minute, c.queueTimeout)
	c, err = parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	assert.Equal(t, 15*time.Minute, c.leaseTTL)
	assert.Equal(t, time.Minute, c.queueTimeout)
	_, err = parseFlags([]string{"-accounts", "x", "-queue-timeout", "0"})
	assert.ErrorContains(t, err, "-queue-timeout")

	_, err = parseFlags([]string{"-accounts", "x", "-queue", url, "-spool", "/tmp/s"})
	assert.ErrorContains(t, err, "not with -spool")
	_, err = parseFlags([]string{"-accounts", "x", "-queue", "/var/spool/odmr"})
	assert.ErrorContains(t, err, "postgres:// URL")
	_, err = parseFlags([]string{"-accounts", "file", "-load-accounts", "file"})
	assert.ErrorContains(t, err, "-load-accounts needs -accounts postgres://")
	c, err = parseFlags([]string{"-accounts", url, "-load-accounts", "file"})
	require.NoError(t, err)
	assert.Equal(t, "file", c.loadAccountsFile)
	c, err = parseFlags([]string{"-queue", url, "-list"})
	require.NoError(t, err)
	assert.True(t, c.list)
	_, err = parseFlags([]string{"-list"})
	assert.ErrorContains(t, err, "-list needs -spool DIR or -queue URL")
	c, err = parseFlags([]string{"-queue", url, "-queue-hold", "1", "2"})
	require.NoError(t, err, "the queue tools on -queue")
	assert.Equal(t, []string{"1", "2"}, c.queue.ids)
	_, err = parseFlags([]string{"-queue", "/var/spool/odmr", "-queue-list"})
	assert.ErrorContains(t, err, "postgres:// URL")
	_, err = parseFlags([]string{"-queue", url, "-spool", "/tmp/s", "-queue-list"})
	assert.ErrorContains(t, err, "not with -spool")
	assert.True(t, isPostgresURL("postgresql://h/db"))
	assert.False(t, isPostgresURL("accounts.txt"))
}

// pgFixture is a queue in a new database with three messages: one to two
// domains, one whose delivery failed once, and one from the null sender.
type pgFixture struct {
	dsn     string
	q       *pgqueue.Queue
	a, b, c string
}

func newPGFixture(t *testing.T) *pgFixture {
	t.Helper()
	f := &pgFixture{dsn: pgtest.DSN(t)}
	q, err := pgqueue.Open(t.Context(), f.dsn, pgqueue.Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	f.q = q
	enqueue := func(from string, to ...string) string {
		id, err := q.Enqueue(t.Context(), odmr.Envelope{From: from, To: to},
			strings.NewReader("Subject: queued\r\nX-Evil: \x1b[31mred\r\n\r\nbody\r\n"))
		require.NoError(t, err)
		return id
	}
	f.c = enqueue("", "z@c.example")
	f.b = enqueue("s@x.test", "b@b.example")
	batch, err := q.Claim(t.Context(), []string{"b.example"})
	require.NoError(t, err)
	m, err := batch.Next(t.Context())
	require.NoError(t, err)
	require.NoError(t, m.Complete(t.Context(), []odmr.RecipientResult{
		{Recipient: "b@b.example", Err: &odmr.Error{Code: 452, EnhancedCode: odmr.EnhancedCode{4, 2, 2}, Message: "mailbox full"}},
	}))
	require.NoError(t, batch.Close())
	f.a = enqueue("s@x.test", "a@a.example", "a2@b.example")
	return f
}

// TestPostgresQueueTools drives every queue tool on a queue in
// PostgreSQL: list, show, hold and release (by argument and standard
// input), delete, a refusal while a session delivers, and bounce, whose
// DSN waits in the database for a node to send.
func TestPostgresQueueTools(t *testing.T) {
	f := newPGFixture(t)
	now := time.Now()
	out, err := queueTool(t, "", now, "-queue", f.dsn, "-queue-list")
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, 9, "%s", out)
	assert.Regexp(t, `^`+f.c+`\s+\d+ B\s+\S+ \(just now\)\s+<>$`, lines[1])
	assert.Regexp(t, `^  <b@b\.example>\s+1 attempt, last just now: odmr: 452 4\.2\.2 mailbox full$`, lines[4])
	assert.Regexp(t, `^  <a2@b\.example>\s+not tried yet$`, lines[7])
	assert.Regexp(t, `^3 messages, \d+ B in all$`, lines[8])

	out, err = queueTool(t, "", now, "-queue", f.dsn, "-queue-show", f.b)
	require.NoError(t, err)
	assert.Contains(t, out, "id: "+f.b+"\n")
	assert.Contains(t, out, "to: <b@b.example> 1 attempt")
	assert.Contains(t, out, "\n\nSubject: queued\nX-Evil: ?[31mred\n")
	_, err = queueTool(t, "", now, "-queue", f.dsn, "-queue-show", "0123")
	assert.EqualError(t, err, "-queue-show 0123: no such message in the queue")

	out, err = queueTool(t, "", now, "-queue", f.dsn, "-queue-hold", f.a, f.b)
	require.NoError(t, err)
	assert.Equal(t, "2 messages held\n", out)
	out, err = queueTool(t, "", now, "-queue", f.dsn, "-queue-list")
	require.NoError(t, err)
	assert.Regexp(t, f.a+`.*<s@x\.test>\s+\(held\)\n`, out)
	assert.Contains(t, out, "; 2 held\n")
	has, err := f.q.HasMail(t.Context(), []string{"a.example", "b.example"})
	require.NoError(t, err)
	assert.False(t, has, "held mail offered")
	var list strings.Builder
	require.NoError(t, listPG(f.dsn, &list, now))
	assert.Contains(t, list.String(), "1 domain; 1 message, ")
	assert.Contains(t, list.String(), "\n2 messages held, not counted above; see -queue-list\n", "-list")
	out, err = queueTool(t, f.a+"\n\n"+f.b+"\n", now, "-queue", f.dsn, "-queue-release", "-")
	require.NoError(t, err)
	assert.Equal(t, "2 messages released\n", out)

	// A session delivering c.example's message keeps it from being deleted.
	batch, err := f.q.Claim(t.Context(), []string{"c.example"})
	require.NoError(t, err)
	_, err = batch.Next(t.Context())
	require.NoError(t, err)
	out, err = queueTool(t, "", now, "-queue", f.dsn, "-queue-delete", f.c, "nope")
	assert.ErrorContains(t, err, "-queue-delete "+f.c+": odmr: message "+f.c+" is being delivered; try again when the session is over")
	assert.ErrorContains(t, err, "-queue-delete nope: no such message in the queue")
	assert.Equal(t, "0 messages deleted\n", out)
	require.NoError(t, batch.Close())
	out, err = queueTool(t, "", now, "-queue", f.dsn, "-queue-delete", f.c)
	require.NoError(t, err)
	assert.Equal(t, "1 message deleted\n", out)

	out, err = queueTool(t, "", now, "-queue", f.dsn, "-queue-bounce", "ALL")
	require.NoError(t, err)
	assert.Contains(t, out, "2 messages bounced\n")
	assert.Contains(t, out, "wait in the database")
	pending, _, err := f.q.PendingBounces(t.Context())
	require.NoError(t, err)
	assert.Equal(t, 2, pending, "a DSN per bounced message")
	out, err = queueTool(t, "", now, "-queue", f.dsn, "-queue-list")
	require.NoError(t, err)
	assert.Equal(t, "ID  SIZE  ARRIVED  SENDER\n0 messages, 0 B in all\n", out)
}

// TestPostgresMetrics: the program's queue gauges come from a queue in
// PostgreSQL, as from the spool.
func TestPostgresMetrics(t *testing.T) {
	f := newPGFixture(t)
	mf := defaultMetricsFlags()
	mf.maxDomains, mf.queueInterval = 10, time.Nanosecond
	m := newProviderMetrics(f.q, mf, slog.New(slog.DiscardHandler))
	families, err := m.registry.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, fam := range families {
		if !strings.HasPrefix(fam.GetName(), "odmr_provider_queue_") {
			continue
		}
		for _, s := range fam.GetMetric() {
			if len(s.GetLabel()) != 1 {
				continue
			}
			got[fam.GetName()+"/"+s.GetLabel()[0].GetValue()] = s.GetGauge().GetValue()
		}
	}
	assert.Equal(t, 1.0, got["odmr_provider_queue_messages/a.example"])
	assert.Equal(t, 2.0, got["odmr_provider_queue_messages/b.example"])
	assert.Equal(t, 1.0, got["odmr_provider_queue_messages/c.example"])
	assert.Positive(t, got["odmr_provider_queue_bytes/b.example"])
	assert.InDelta(t, float64(time.Now().Unix()), got["odmr_provider_queue_oldest_message_timestamp_seconds/c.example"], 300)
}

// TestQueueTempDirFlag: -queue-temp-dir defaults to $TMPDIR when it is
// set, else to /var/tmp, on disk, where there is one; the flag names
// another.
func TestQueueTempDirFlag(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	c, err := parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	assert.Equal(t, dir, c.queueTempDir)
	t.Setenv("TMPDIR", "")
	c, err = parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	if fi, err := os.Stat("/var/tmp"); err == nil && fi.IsDir() {
		assert.Equal(t, "/var/tmp", c.queueTempDir)
	}
	c, err = parseFlags([]string{"-accounts", "x", "-queue-temp-dir", "/srv/spill"})
	require.NoError(t, err)
	assert.Equal(t, "/srv/spill", c.queueTempDir)
}

// TestPostgresIntakeTakesAMessageUpToTheSizeLimit: with -queue, a
// message whose data is within -max-message-size is queued, although
// the Received field the intake puts before it takes the body past that
// size; one over the limit is still refused. The queue's own limit used
// to be -max-message-size itself, so the message was refused with 552
// 5.3.4 after the intake had accepted its SIZE and its data.
func TestPostgresIntakeTakesAMessageUpToTheSizeLimit(t *testing.T) {
	const limit = 4096
	cfg := &config{queueURL: pgtest.DSN(t), maxMessageBytes: limit, queueTempDir: t.TempDir(),
		leaseTTL: time.Minute, queueTimeout: time.Minute, maxAge: time.Hour}
	q, enqueue, _, closeQueue, err := openQueue(cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(closeQueue)
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	srv := newIntakeServer(&intake{accounts: accts, enqueue: enqueue, log: slog.New(slog.DiscardHandler), hostname: "prov.test"}, limit, nil)
	addr := smtptest.Serve(t, srv)

	// The data, ".\r\n" not counted, is the limit less a few bytes.
	line := strings.Repeat("x", 98) + "\r\n"
	data := "Subject: big\r\n\r\n" + strings.Repeat(line, (limit-16-8)/len(line))
	data += strings.Repeat("y", limit-8-len(data)-2) + "\r\n"
	require.Len(t, data, limit-8)
	c := dialRaw(t, addr)
	c.cmd(250, "MAIL FROM:<s@x.test>")
	c.cmd(250, "RCPT TO:<u@example.org>")
	c.cmd(354, "DATA")
	c.cmd(250, data+".")

	c.cmd(250, "MAIL FROM:<s@x.test>")
	c.cmd(250, "RCPT TO:<u@example.org>")
	c.cmd(354, "DATA")
	c.cmd(552, data+strings.Repeat("z", 100)+"\r\n.")

	b, err := q.Claim(t.Context(), []string{"example.org"})
	require.NoError(t, err)
	defer b.Close()
	m, err := b.Next(t.Context())
	require.NoError(t, err)
	assert.Greater(t, m.Envelope().Size, int64(limit), "the Received field counted in the size stored")
	_, err = b.Next(t.Context())
	assert.ErrorIs(t, err, io.EOF, "one message queued")
}

// TestQueueTempDirChecked: a -queue-temp-dir that is missing stops the
// program at the start, before any connection to the database, rather
// than refuse each large message with a 451 once it runs.
func TestQueueTempDirChecked(t *testing.T) {
	dir := t.TempDir()
	cfg := &config{queueURL: "postgres://odmr@127.0.0.1:1/none", queueTempDir: dir + "/missing",
		leaseTTL: time.Minute, queueTimeout: time.Minute, maxAge: time.Hour}
	_, _, _, _, err := openQueue(cfg, slog.New(slog.DiscardHandler))
	assert.ErrorContains(t, err, "-queue-temp-dir")
	assert.ErrorIs(t, err, os.ErrNotExist)
	// A directory that is there passes, and the check leaves nothing.
	require.NoError(t, checkTempDir(dir))
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, ents)
}
