package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
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
	assert.Equal(t, odmr.DefaultATRNBurst, c.limits.atrnBurst)
	assert.Equal(t, odmr.DefaultATRNInterval, c.limits.atrnInterval)
	c, err = parseFlags([]string{"-accounts", "x", "-atrn-burst", "100", "-atrn-interval", "-1s"})
	require.NoError(t, err)
	assert.Equal(t, 100, c.limits.atrnBurst)
	assert.Equal(t, -time.Second, c.limits.atrnInterval)
}

func TestMalformedAccountsFileFailsClearly(t *testing.T) {
	p := filepath.Join(t.TempDir(), "accounts")
	require.NoError(t, os.WriteFile(p, []byte("# ok\nalice secret\n"), 0o600))
	err := run([]string{"-accounts", p, "-listen", "127.0.0.1:0", "-smtp", ""})
	assert.ErrorContains(t, err, "-accounts: accounts line 2")
	err = run([]string{"-accounts", filepath.Join(t.TempDir(), "nope"), "-listen", "127.0.0.1:0", "-smtp", ""})
	assert.ErrorContains(t, err, "-accounts: open ")
	assert.NotContains(t, err.Error(), "odmr:")
}

// TestProviderProcess runs the program as a user would: it queues mail over
// SMTP, refuses to relay, answers ODMR, and stops cleanly on SIGTERM.
func TestProviderProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the program")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "odmr-provider")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	accts := filepath.Join(dir, "accounts")
	require.NoError(t, os.WriteFile(accts, []byte("alice s3cret example.org\n"), 0o600))
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
	accts, err := odmr.ParseAccounts(strings.NewReader("alice " + strings.TrimSpace(out.String()) + " example.org\n"))
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
	if testing.Short() {
		t.Skip("builds and runs the program")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "odmr-provider")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	accts := filepath.Join(dir, "accounts")
	require.NoError(t, os.WriteFile(accts, []byte("alice s3cret example.org\n"), 0o600))
	spoolDir := filepath.Join(dir, "spool")

	p := startCrashProvider(t, bin, accts, spoolDir)
	require.NoError(t, sendPlain(p.smtpAddr, 7))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, p.cmd.Wait())

	p = startCrashProvider(t, bin, accts, spoolDir)
	defer func() { p.cmd.Process.Signal(syscall.SIGTERM); p.cmd.Wait() }()
	var got []byte
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
