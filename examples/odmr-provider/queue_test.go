package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/spool"
)

// queueTool runs the program's queue tool given by args, as the command
// line would, and returns what it printed.
func queueTool(t *testing.T, stdin string, now time.Time, args ...string) (string, error) {
	t.Helper()
	cfg, err := parseFlags(args)
	if err != nil {
		return "", err
	}
	require.NotEmpty(t, cfg.queue.cmd, "no queue tool in %q", args)
	var out strings.Builder
	err = runQueueTool(cfg, strings.NewReader(stdin), &out, now, slog.New(slog.DiscardHandler))
	return out.String(), err
}

// TestQueueToolFlags: the tools need -spool, come one at a time, and say
// which flag is wrong.
func TestQueueToolFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-queue-list"}, "-queue-list needs -spool DIR"},
		{[]string{"-queue-delete", "X"}, "-queue-delete needs -spool DIR"},
		{[]string{"-spool", "d", "-queue-list", "-queue-hold", "X"}, "-queue-list, -queue-hold: one queue tool at a time"},
		{[]string{"-spool", "d", "-list", "-queue-show", "X"}, "-list and -queue-show: one at a time"},
		{[]string{"-spool", "d", "-queue-list", "X"}, `-queue-list: unexpected argument "X"`},
		{[]string{"-spool", "d", "-queue-show", "X", "Y"}, `-queue-show: unexpected argument "Y"`},
		{[]string{"-spool", "d", "-queue-bounce", "-", "Y"}, "-queue-bounce -: IDs come from standard input"},
	} {
		_, err := parseFlags(tc.args)
		assert.ErrorContains(t, err, tc.want, "%q", tc.args)
	}
	// No -accounts needed, and further IDs are arguments.
	c, err := parseFlags([]string{"-spool", "d", "-queue-release", "A", "B", "C"})
	require.NoError(t, err)
	assert.Equal(t, []string{"A", "B", "C"}, c.queue.ids)
	assert.True(t, c.queue.write)
}

// queueFixture is a spool with three messages of known ages: a 19 s old
// one to two domains, a 3 m old one whose delivery failed once, and a
// 2 h old one from the null sender.
type queueFixture struct {
	dir     string
	now     time.Time
	a, b, c string
}

func newQueueFixture(t *testing.T) *queueFixture {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1, Hostname: "prov.test", Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer s.Close()
	f := &queueFixture{dir: dir, now: time.Now()}
	enqueue := func(age time.Duration, from string, to ...string) string {
		id, err := s.Enqueue(context.Background(), odmr.Envelope{From: from, To: to, Received: f.now.Add(-age)},
			strings.NewReader("Subject: queued\r\nX-Evil: \x1b[31mred\r\n\r\nbody\r\n"))
		require.NoError(t, err)
		return id
	}
	f.c = enqueue(2*time.Hour, "", "z@c.example")
	f.b = enqueue(3*time.Minute, "s@x.test", "b@b.example")
	batch, err := s.Claim(context.Background(), []string{"b.example"})
	require.NoError(t, err)
	m, err := batch.Next(context.Background())
	require.NoError(t, err)
	require.Equal(t, f.b, m.Envelope().ID)
	require.NoError(t, m.Complete(context.Background(), []odmr.RecipientResult{
		{Recipient: "b@b.example", Err: &odmr.Error{Code: 452, EnhancedCode: odmr.EnhancedCode{4, 2, 2}, Message: "mailbox full"}},
	}))
	require.NoError(t, batch.Close())
	f.a = enqueue(19*time.Second, "s@x.test", "a@a.example", "a2@b.example")
	return f
}

// TestQueueListAndShow: -queue-list lists every message with its
// recipients, attempts and last error, oldest first; -queue-show prints
// one's envelope and headers; neither changes the spool.
func TestQueueListAndShow(t *testing.T) {
	// A fake clock, so that the ages printed are those of the fixture.
	synctest.Test(t, testQueueListAndShow)
}

func testQueueListAndShow(t *testing.T) {
	f := newQueueFixture(t)
	before := tree(t, f.dir)
	out, err := queueTool(t, "", f.now, "-spool", f.dir, "-queue-list")
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, 9, "%s", out)
	assert.Regexp(t, `^ID\s+SIZE\s+ARRIVED\s+SENDER$`, lines[0])
	assert.Regexp(t, `^`+f.c+`\s+\d+ B\s+\S+ \(2h ago\)\s+<>$`, lines[1])
	assert.Regexp(t, `^  <z@c\.example>\s+not tried yet$`, lines[2])
	assert.Regexp(t, `^`+f.b+`\s+\d+ B\s+\S+ \(3m ago\)\s+<s@x\.test>$`, lines[3])
	assert.Regexp(t, `^  <b@b\.example>\s+1 attempt, last just now: odmr: 452 4\.2\.2 mailbox full$`, lines[4])
	assert.Regexp(t, `^`+f.a+`\s+\d+ B\s+\S+ \(19s ago\)\s+<s@x\.test>$`, lines[5])
	assert.Regexp(t, `^  <a@a\.example>\s+not tried yet$`, lines[6])
	assert.Regexp(t, `^  <a2@b\.example>\s+not tried yet$`, lines[7])
	assert.Regexp(t, `^3 messages, \d+ B in all$`, lines[8])

	out, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-show", f.b)
	require.NoError(t, err)
	assert.Contains(t, out, "id: "+f.b+"\n")
	assert.Contains(t, out, "from: <s@x.test>\n")
	assert.Contains(t, out, "to: <b@b.example> 1 attempt")
	assert.Contains(t, out, "\n\nSubject: queued\nX-Evil: ?[31mred\n", "a blank line, then the headers")
	assert.NotContains(t, out, "body")
	assert.NotContains(t, out, "\x1b", "control characters reach the terminal")

	_, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-show", "0123")
	assert.EqualError(t, err, "-queue-show 0123: no such message in the queue")
	assert.Equal(t, before, tree(t, f.dir), "reading tools changed the spool")
}

// TestQueueListMarksDelivering: a message a session is delivering is
// listed with '*' after its ID, as postqueue -p marks the active queue,
// and -queue-show says so; the tools take no lock and change nothing, so
// the session goes on undisturbed.
func TestQueueListMarksDelivering(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("another process's leases are seen through /proc/locks")
	}
	f := newQueueFixture(t)
	s, err := spool.Open(f.dir, spool.Options{MaintenanceInterval: -1, Hostname: "prov.test", Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer s.Close()
	batch, err := s.Claim(context.Background(), []string{"a.example"})
	require.NoError(t, err)
	m, err := batch.Next(context.Background())
	require.NoError(t, err)
	require.Equal(t, f.a, m.Envelope().ID)
	before := tree(t, f.dir)

	out, err := queueTool(t, "", f.now, "-spool", f.dir, "-queue-list")
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, 9, "%s", out)
	assert.Regexp(t, `^`+f.c+`\s`, lines[1])
	assert.Regexp(t, `^`+f.b+`\s`, lines[3])
	assert.Regexp(t, `^`+f.a+`\*\s+\d+ B\s+\S+ \(\S+ ago\)\s+<s@x\.test>$`, lines[5])
	assert.Regexp(t, `^3 messages, \d+ B in all; 1 being delivered \(\*\)$`, lines[8])

	out, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-show", f.a)
	require.NoError(t, err)
	assert.Contains(t, out, "\ndelivering: yes\n")
	out, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-show", f.b)
	require.NoError(t, err)
	assert.NotContains(t, out, "delivering")
	assert.Equal(t, before, tree(t, f.dir), "reading tools changed the spool")

	// The session's lease held: it completes, and the mark goes.
	require.NoError(t, m.Complete(context.Background(), []odmr.RecipientResult{{Recipient: "a@a.example"}}))
	require.NoError(t, batch.Close())
	out, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-list")
	require.NoError(t, err)
	assert.NotContains(t, out, "*")
	assert.Contains(t, out, "<a2@b.example>")
}

// TestQueueToolsOnAnOrdinaryDirectory: no tool makes a spool where there
// is none.
func TestQueueToolsOnAnOrdinaryDirectory(t *testing.T) {
	for _, args := range [][]string{{"-queue-list"}, {"-queue-show", "X"}, {"-queue-delete", "X"}, {"-queue-hold", "ALL"}} {
		dir := t.TempDir()
		_, err := queueTool(t, "", time.Now(), append([]string{"-spool", dir}, args...)...)
		assert.ErrorIs(t, err, spool.ErrNotSpool)
		assert.ErrorContains(t, err, args[0]+" -spool "+dir+": ")
		names, _ := os.ReadDir(dir)
		assert.Empty(t, names, "%s created files", args[0])
	}
}

// TestQueueHoldReleaseDeleteBounce drives the writing tools: hold and
// release, by argument, standard input and ALL; delete; bounce, whose DSN
// waits in the outbox for the provider.
func TestQueueHoldReleaseDeleteBounce(t *testing.T) {
	f := newQueueFixture(t)
	out, err := queueTool(t, "", f.now, "-spool", f.dir, "-queue-hold", f.a, f.b)
	require.NoError(t, err)
	assert.Equal(t, "2 messages held\n", out)
	out, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-list")
	require.NoError(t, err)
	assert.Regexp(t, f.a+`.*<s@x\.test>\s+\(held\)\n`, out)
	assert.Contains(t, out, "3 messages, ")
	assert.Contains(t, out, "; 2 held\n")
	var list strings.Builder
	require.NoError(t, listSpool(f.dir, &list, f.now, nil))
	assert.Contains(t, list.String(), "1 domain; 1 message, ")
	assert.Contains(t, list.String(), "\n2 messages held, not counted above; see -queue-list\n", "-list")
	s, err := spool.Open(f.dir, spool.Options{ReadOnly: true, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	has, err := s.HasMail(context.Background(), []string{"a.example", "b.example"})
	require.NoError(t, err)
	assert.False(t, has, "held mail offered")
	s.Close()

	out, err = queueTool(t, f.a+"\n\n"+f.b+"\n", f.now, "-spool", f.dir, "-queue-release", "-")
	require.NoError(t, err)
	assert.Equal(t, "2 messages released\n", out)
	out, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-list")
	require.NoError(t, err)
	assert.NotContains(t, out, "held")

	out, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-delete", f.c, "nope")
	assert.EqualError(t, err, "-queue-delete nope: no such message in the queue")
	assert.Equal(t, "1 message deleted\n", out)

	out, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-bounce", "ALL")
	require.NoError(t, err)
	assert.Contains(t, out, "2 messages bounced\n")
	assert.Contains(t, out, "the provider sends them")
	inv, err := spool.Inspect(f.dir, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	assert.Zero(t, inv.Messages)
	assert.Equal(t, 2, inv.PendingBounces)
	out, err = queueTool(t, "", f.now, "-spool", f.dir, "-queue-list")
	require.NoError(t, err)
	assert.Equal(t, "ID  SIZE  ARRIVED  SENDER\n0 messages, 0 B in all\n", out)
}

// TestQueueHoldWithProviderRunning: the tools act on the spool of a
// running provider: a held message is not delivered on ATRN, and is once
// released.
func TestQueueHoldWithProviderRunning(t *testing.T) {
	bin, accts := buildProvider(t)
	spoolDir := filepath.Join(t.TempDir(), "spool")
	p := startCrashProvider(t, bin, accts, spoolDir)
	defer func() { p.cmd.Process.Signal(syscall.SIGTERM); p.cmd.Wait() }()
	require.NoError(t, sendPlain(p.smtpAddr, 3))

	tool := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"-spool", spoolDir}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		require.NoError(t, err, "%s", stderr.String())
		return string(out)
	}
	id, _, _ := strings.Cut(strings.Split(tool("-queue-list"), "\n")[1], " ")
	assert.Equal(t, "1 message held\n", tool("-queue-hold", id))

	fetch := func() int {
		var n int
		c := &odmr.Customer{Addr: p.odmrAddr, Username: "alice", Secret: "s3cret", Domains: []string{"example.org"}, Logger: discardLog(),
			Sink: odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
				n++
				_, err := io.Copy(io.Discard, body)
				return err
			})}
		_, err := c.Fetch(context.Background())
		if err != nil {
			require.ErrorIs(t, err, odmr.ErrNoMail)
		}
		return n
	}
	assert.Zero(t, fetch(), "held mail delivered")
	assert.Equal(t, "1 message released\n", tool("-queue-release", id))
	assert.Equal(t, 1, fetch())
	assert.Contains(t, tool("-queue-list"), "0 messages")
}
