package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/spool"
)

func TestFlags(t *testing.T) {
	_, err := parseFlags(nil)
	assert.ErrorContains(t, err, "-accounts FILE is required")
	_, err = parseFlags([]string{"-accounts", "x", "stray"})
	assert.ErrorContains(t, err, `unexpected argument "stray"`)
	c, err := parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	assert.Equal(t, ":366", c.listen)
	assert.Equal(t, ":25", c.smtpAddr)
	assert.Equal(t, defaults.ATRNBurst, c.limits.atrnBurst)
	assert.Equal(t, defaults.ATRNInterval, c.limits.atrnInterval)
	c, err = parseFlags([]string{"-accounts", "x", "-atrn-burst", "100", "-atrn-interval", "-1s"})
	require.NoError(t, err)
	assert.Equal(t, 100, c.limits.atrnBurst)
	assert.Equal(t, -time.Second, c.limits.atrnInterval)

	// Values the queues would quietly take for their defaults, or for no
	// limit, are refused with the flag's name.
	for _, bad := range [][]string{{"-max-age", "0"}, {"-max-age", "-1h"}, {"-quota-bytes", "-5"}, {"-quota-messages", "-1"},
		{"-max-message-size", "-1"}} {
		_, err := parseFlags(append([]string{"-accounts", "x", "-spool", "s"}, bad...))
		assert.ErrorContains(t, err, bad[0], "%v", bad)
	}
	c, err = parseFlags([]string{"-accounts", "x", "-max-message-size", "0", "-max-age", "1h"})
	require.NoError(t, err)
	assert.Zero(t, c.maxMessageBytes, "0: no limit")
}

func TestMalformedAccountsFileFailsClearly(t *testing.T) {
	p := filepath.Join(t.TempDir(), "accounts")
	require.NoError(t, os.WriteFile(p, []byte("# ok\nalice secret\n"), 0o600))
	err := run([]string{"-accounts", p, "-listen", "127.0.0.1:0", "-smtp", ""})
	assert.ErrorContains(t, err, "-accounts: "+p+":2: want NAME SECRET DOMAIN")
	err = run([]string{"-accounts", filepath.Join(t.TempDir(), "nope"), "-listen", "127.0.0.1:0", "-smtp", ""})
	assert.ErrorContains(t, err, "-accounts: open ")
	assert.NotContains(t, err.Error(), "odmr:")
}

// TestProviderProcess runs the program as a user would: it queues mail over
// SMTP, refuses to relay, answers ODMR, and stops cleanly on SIGTERM.
func TestProviderProcess(t *testing.T) {
	bin, accts := buildProvider(t)
	cmd := exec.Command(bin, "-accounts", accts, "-listen", "127.0.0.1:0", "-smtp", "127.0.0.1:0", "-hostname", "prov.test")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer cmd.Process.Kill()
	logs := bufio.NewScanner(stderr)
	var odmrAddr, smtpAddr string
	for (odmrAddr == "" || smtpAddr == "") && logs.Scan() {
		switch l := logs.Text(); {
		case strings.Contains(l, "ODMR listening"):
			odmrAddr = listenAddr(t, l)
		case strings.Contains(l, "SMTP intake listening"):
			smtpAddr = listenAddr(t, l)
		}
	}
	require.NotEmpty(t, smtpAddr, "the program exited before listening")

	c, err := smtp.Dial(smtpAddr)
	require.NoError(t, err)
	require.NoError(t, c.Mail("s@x.test", nil))
	err = c.Rcpt("someone@elsewhere.test", nil)
	var se *smtp.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 550, se.Code)
	assert.Equal(t, smtp.EnhancedCode{5, 7, 1}, se.EnhancedCode)
	require.NoError(t, c.Rcpt("u@example.org", nil))
	w, err := c.Data()
	require.NoError(t, err)
	_, err = w.Write([]byte("Subject: hi\r\n\r\nqueued\r\n"))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, c.Quit())

	conn, err := net.DialTimeout("tcp", odmrAddr, 5*time.Second)
	require.NoError(t, err)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	greeting, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "220 prov.test on-demand mail relay server ready\r\n", greeting)
	conn.Close()

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	var rest strings.Builder
	for logs.Scan() {
		rest.WriteString(logs.Text() + "\n")
	}
	require.NoError(t, cmd.Wait())
	assert.Contains(t, rest.String(), "stopped")
}

func TestTLSFlagsGoTogether(t *testing.T) {
	_, err := parseFlags([]string{"-accounts", "x", "-tls-cert", "c.pem"})
	assert.ErrorContains(t, err, "-tls-cert and -tls-key go together")
	_, err = parseFlags([]string{"-accounts", "x", "-require-tls"})
	assert.ErrorContains(t, err, "need -tls-cert")
	err = run([]string{"-accounts", "x", "-tls-cert", "/nonexistent.pem", "-tls-key", "/nonexistent.key"})
	assert.Error(t, err)
}

func TestHashSecretMakesAccountsFileCredentials(t *testing.T) {
	var out strings.Builder
	require.NoError(t, hashSecret("alice", strings.NewReader("s3cret\n"), &out))
	accts, err := accounts.Parse(strings.NewReader("alice " + strings.TrimSpace(out.String()) + " example.org\n"))
	require.NoError(t, err)
	require.Len(t, accts["alice"].SCRAM, 2)
	assert.Empty(t, accts["alice"].Secret)
	assert.Error(t, hashSecret("alice", strings.NewReader(""), &out))
}

func TestListShowsWhatIsQueuedPerDomain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1})
	require.NoError(t, err)
	for _, to := range []string{"a@example.org", "b@example.org", "c@example.com"} {
		_, err := s.Enqueue(context.Background(), odmr.Envelope{From: "s@x.test", To: []string{to}}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
		require.NoError(t, err)
	}
	require.NoError(t, s.Close())
	var out strings.Builder
	require.NoError(t, listSpool(dir, &out, time.Now(), nil))
	assert.Regexp(t, `example\.com\s+1\s+\d+ B`, out.String())
	assert.Regexp(t, `example\.org\s+2\s+\d+ B`, out.String())
	assert.Contains(t, out.String(), "2 domains; 3 messages")
	assert.ErrorContains(t, listSpool(filepath.Join(dir, "missing"), &out, time.Now(), nil), "no such file")
	_, err = parseFlags([]string{"-list"})
	assert.ErrorContains(t, err, "-list needs -spool")
	_, err = parseFlags([]string{"-accounts", "x", "-smarthost", "h:25"})
	assert.ErrorContains(t, err, "need -spool")
}

// TestSpoolSurvivesRestart queues a message in one run of the program and
// collects it after a restart.
func TestSpoolSurvivesRestart(t *testing.T) {
	bin, accts := buildProvider(t)
	spoolDir := filepath.Join(t.TempDir(), "spool")

	p := startCrashProvider(t, bin, accts, spoolDir)
	require.NoError(t, sendPlain(p.smtpAddr, 7))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, p.cmd.Wait())

	p = startCrashProvider(t, bin, accts, spoolDir)
	defer func() { p.cmd.Process.Signal(syscall.SIGTERM); p.cmd.Wait() }()
	var got []byte
	var err error
	c := &odmr.Customer{Addr: p.odmrAddr, Username: "alice", Secret: "s3cret", Domains: []string{"example.org"}, Logger: discardLog(),
		Sink: odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
			got, err = io.ReadAll(body)
			return err
		})}
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages)
	n, err := checkMessage(got)
	require.NoError(t, err)
	assert.Equal(t, 7, n)
}

func TestNoChunkingFlag(t *testing.T) {
	c, err := parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	assert.False(t, c.noChunking, "BDAT is on by default")
	c, err = parseFlags([]string{"-accounts", "x", "-no-chunking"})
	require.NoError(t, err)
	assert.True(t, c.noChunking)
}

// TestHelpNamesEachValue: -h shows each flag's value by what it means
// (N, DURATION, FILE), never by its Go type ("-auth-backoff duration"),
// and says where the flags apply with -queue as with -spool.
func TestHelpNamesEachValue(t *testing.T) {
	bin, _ := buildProvider(t)
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	help := string(out)
	require.Contains(t, help, "Flags:")
	typeName := regexp.MustCompile(`(?m)^  -([a-z0-9-]+) (int|int64|uint|uint64|float|duration|string|value)$`)
	for _, m := range typeName.FindAllStringSubmatch(help, -1) {
		t.Errorf("-%s shows its value as %q", m[1], m[2])
	}
	for _, want := range []string{"-auth-backoff DURATION", "-auth-failures N", "-scram-cache-size N",
		"-metrics-read-timeout DURATION", "(default 10s)", "-metrics-write-timeout DURATION", "(default 1m0s)",
		"-metrics-idle-timeout DURATION", "(default 2m0s)", "-metrics-max-scrapes N", "(default 4)"} {
		assert.Contains(t, help, want)
	}
	assert.NotContains(t, help, "(with -spool)", "the queue flags apply with -queue too")
}

// TestHostnameFlag: -hostname must be a name a greeting and EHLO can
// carry; anything else is a usage error naming the flag, not a provider
// that greets with it (the library refuses to serve with a line break in
// it, and the customer would refuse the rest).
func TestHostnameFlag(t *testing.T) {
	for _, good := range []string{"mx.example.org", "mx-1.example.org.", "localhost", "[192.0.2.1]", "[IPv6:2001:db8::1]"} {
		_, err := parseFlags([]string{"-accounts", "x", "-hostname", good})
		assert.NoError(t, err, good)
	}
	for _, bad := range []string{"bad_host!", "two words", "a..b", "-a.example", "[192.0.2.1", "[2001:db8::1]", "[IPv6:192.0.2.1]", "x\r\ny", "192.0.2.1", "123",
		"a.example,b.example", " mx.example", "mx.example\t", strings.Repeat("a.", 127) + "example"} {
		_, err := parseFlags([]string{"-accounts", "x", "-hostname", bad})
		assert.ErrorContains(t, err, "-hostname", "%q", bad)
	}
}
