package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/testcert"
)

// tryLogin authenticates as user and pulls its domain, reporting whether
// the provider let it in.
func tryLogin(t *testing.T, addr, user, secret, domain string) bool {
	t.Helper()
	c := &odmr.Customer{Addr: addr, Username: user, Secret: secret, Domains: []string{domain}, Logger: discardLog(),
		Sink: odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
			_, err := io.Copy(io.Discard, body)
			return err
		})}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := c.Fetch(ctx)
	if e := odmr.AsError(err); e != nil && e.Code == 535 {
		return false
	}
	require.NoError(t, err)
	return true
}

// TestSIGHUPReloadsAccounts: SIGHUP replaces the accounts while the
// program runs (it used to kill it, losing the in-memory queue): the new
// account logs in and its domain is taken at the intake, the removed one
// is refused; a broken file keeps the accounts loaded before, and says
// why at ERROR; a file others may read is warned about.
func TestSIGHUPReloadsAccounts(t *testing.T) {
	bin, accts := buildProvider(t)
	cmd, odmrAddr, smtpAddr, log := startProviderCmd(t, bin, accts, "")
	require.True(t, tryLogin(t, odmrAddr, "alice", "s3cret", "example.org"))

	require.NoError(t, os.WriteFile(accts, []byte("bob b0bsecret example.net\n"), 0o600))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	line := log.wait(t, "accounts reloaded")
	assert.Contains(t, line, "added=[bob] removed=[alice] changed=[]")
	assert.NotContains(t, line, "b0bsecret")
	assert.True(t, tryLogin(t, odmrAddr, "bob", "b0bsecret", "example.net"))
	assert.False(t, tryLogin(t, odmrAddr, "alice", "s3cret", "example.org"))
	c, err := smtp.Dial(smtpAddr)
	require.NoError(t, err)
	require.NoError(t, c.Mail("s@x.test", nil))
	assert.NoError(t, c.Rcpt("u@example.net", nil), "the intake takes the new account's domain")
	assert.Error(t, c.Rcpt("u@example.org", nil), "and no longer the removed one's")
	c.Close()

	require.NoError(t, os.WriteFile(accts, []byte("bob\n"), 0o600))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	line = log.wait(t, "reload failed")
	assert.Contains(t, line, "level=ERROR")
	assert.Contains(t, line, "-accounts: "+accts+":1: want NAME SECRET DOMAIN")
	assert.True(t, tryLogin(t, odmrAddr, "bob", "b0bsecret", "example.net"), "the old accounts stay")

	require.NoError(t, os.WriteFile(accts, []byte("bob newsecret example.net\n"), 0o644))
	require.NoError(t, os.Chmod(accts, 0o644))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	assert.Contains(t, log.wait(t, "level=WARN", "others may read it"), "mode=-rw-r--r--")
	assert.Contains(t, log.wait(t, "accounts reloaded"), "changed=[bob]")
	assert.True(t, tryLogin(t, odmrAddr, "bob", "newsecret", "example.net"))
}

// writeSelfSigned writes a self-signed certificate for cn and its key.
func writeSelfSigned(t *testing.T, certFile, keyFile, cn string) {
	t.Helper()
	cert, _ := testcert.SelfSigned(t, cn)
	certPEM, keyPEM := testcert.PEM(t, cert)
	require.NoError(t, os.WriteFile(certFile, certPEM, 0o600))
	require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
}

// TestSIGHUPReloadsCertificate: a renewed certificate is served after
// SIGHUP without a restart; a broken one keeps the old.
func TestSIGHUPReloadsCertificate(t *testing.T) {
	bin, accts := buildProvider(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeSelfSigned(t, certFile, keyFile, "one.test")
	cmd, _, _, log := startProviderCmd(t, bin, accts, "", "-tls-cert", certFile, "-tls-key", keyFile, "-tls-listen", "127.0.0.1:0")
	// The implicit-TLS listener logs its address between the other two.
	tlsAddr := listenAddr(t, log.seen("ODMR listening with implicit TLS"))
	served := func() string {
		c, err := tls.Dial("tcp", tlsAddr, &tls.Config{InsecureSkipVerify: true})
		require.NoError(t, err)
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	assert.Equal(t, "one.test", served())

	writeSelfSigned(t, certFile, keyFile, "two.test")
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	line := log.wait(t, "TLS certificate reloaded")
	assert.Contains(t, line, "changed=true")
	assert.Contains(t, line, "CN=two.test")
	assert.Equal(t, "two.test", served())

	require.NoError(t, os.WriteFile(certFile, []byte("not a certificate\n"), 0o600))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	assert.Contains(t, log.wait(t, "reload failed", "certificate"), "level=ERROR")
	assert.Equal(t, "two.test", served())
}

// bigMessage is message n, large enough (200 KB) that BDAT's window holds
// few of them: the test sees the delivery stop mid-batch.
func bigMessage(n int) string {
	payload := strings.Repeat(fmt.Sprintf("line of message %d, padding it out to a good size......\r\n", n), 3500)
	sum := sha256.Sum256([]byte(payload))
	return fmt.Sprintf("X-Seq: %d\r\nX-Sum: %s\r\nSubject: big %d\r\n\r\n%s", n, hex.EncodeToString(sum[:]), n, payload)
}

// TestSIGTERMEndsDeliveryAfterMessageInFlight sends SIGTERM while the
// customer holds the reply to the first of ten messages: the program
// finishes what was in flight, says QUIT, exits 0, and keeps the rest in
// the spool for the next run (it used to deliver the whole batch first).
func TestSIGTERMEndsDeliveryAfterMessageInFlight(t *testing.T) {
	bin, accts := buildProvider(t)
	spoolDir := filepath.Join(t.TempDir(), "spool")
	cmd, odmrAddr, smtpAddr, log := startProviderCmd(t, bin, accts, "", "-spool", spoolDir)
	const total = 10
	for n := range total {
		c, err := smtp.Dial(smtpAddr)
		require.NoError(t, err)
		require.NoError(t, c.SendMail("s@x.test", []string{"u@example.org"}, strings.NewReader(bigMessage(n))))
		c.Quit()
	}

	seen := map[int]int{}
	first := make(chan struct{})
	release := make(chan struct{})
	sink := odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
		b, err := io.ReadAll(body)
		if err != nil {
			return err
		}
		n, err := checkMessage(b)
		if err != nil {
			return err
		}
		seen[n]++
		if len(seen) == 1 {
			close(first)
			<-release
		}
		return nil
	})
	c := &odmr.Customer{Addr: odmrAddr, Username: "alice", Secret: "s3cret", Domains: []string{"example.org"}, Logger: discardLog(), Sink: sink}
	fetched := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background())
		fetched <- err
	}()
	<-first
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	log.wait(t, "odmr-provider: stopping", "signal=SIGTERM")
	log.wait(t, "odmr: shutting down", "sessions=1")
	close(release)
	require.NoError(t, <-fetched)
	log.wait(t, "ending the delivery after the message in flight")
	log.wait(t, "odmr-provider: stopped")
	require.NoError(t, cmd.Wait(), "exit status 0")
	delivered := len(seen)
	assert.GreaterOrEqual(t, delivered, 1)
	assert.Less(t, delivered, total, "the delivery stopped mid-batch")
	t.Logf("%d of %d messages delivered before the stop", delivered, total)

	odmrAddr, _, _ = startProvider(t, bin, accts, "", "-spool", spoolDir)
	c.Addr = odmrAddr
	_, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Len(t, seen, total, "the rest was kept")
	for n, times := range seen {
		assert.Equal(t, 1, times, "message %d", n)
	}
}

// TestSecondSIGTERMClosesAtOnce: with a session stuck on the message in
// flight and a long -stop-timeout, a second SIGTERM ends the wait: the
// program closes the session and exits 0 without waiting for the
// customer, and a SIGHUP meanwhile changes nothing. The message the
// customer had not acknowledged stays in the spool.
func TestSecondSIGTERMClosesAtOnce(t *testing.T) {
	bin, accts := buildProvider(t)
	spoolDir := filepath.Join(t.TempDir(), "spool")
	cmd, odmrAddr, smtpAddr, log := startProviderCmd(t, bin, accts, "", "-spool", spoolDir, "-stop-timeout", "1h")
	c, err := smtp.Dial(smtpAddr)
	require.NoError(t, err)
	require.NoError(t, c.SendMail("s@x.test", []string{"u@example.org"}, strings.NewReader(bigMessage(0))))
	c.Quit()

	first := make(chan struct{})
	release := make(chan struct{})
	sink := odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
		io.Copy(io.Discard, body)
		close(first)
		<-release
		return errors.New("odmr: test: the session was closed under us")
	})
	cust := &odmr.Customer{Addr: odmrAddr, Username: "alice", Secret: "s3cret", Domains: []string{"example.org"}, Logger: discardLog(), Sink: sink}
	fetched := make(chan error, 1)
	go func() {
		_, err := cust.Fetch(context.Background())
		fetched <- err
	}()
	<-first
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	log.wait(t, "odmr: shutting down", "sessions=1")
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	log.wait(t, "SIGHUP while stopping")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	log.wait(t, "second signal: closing the sessions at once")
	log.wait(t, "odmr-provider: stopped")
	require.NoError(t, cmd.Wait(), "exit status 0")
	close(release)
	<-fetched

	odmrAddr, _, _ = startProvider(t, bin, accts, "", "-spool", spoolDir)
	var got int
	cust.Addr = odmrAddr
	cust.Sink = odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
		_, err := io.Copy(io.Discard, body)
		got++
		return err
	})
	_, err = cust.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, got, "the message not acknowledged stayed queued")
}
