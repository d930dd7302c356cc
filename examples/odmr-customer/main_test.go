package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/testcert"
	"github.com/go-odmr/odmr/memqueue"
)

func TestCustomerCommandUsageErrorsExit5(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"-provider", "p", "-user", "u"}, // no target
		{"-provider", "p", "-user", "u", "-maildir", "d", "-relay", "r:25"}, // two targets
		{"-user", "u", "-maildir", "d"},                                     // no provider
		{"-provider", "p", "-user", "u", "-maildir", "d", "stray"},
		{"-no-such-flag"},
	} {
		var stderr bytes.Buffer
		assert.Equal(t, exitUsage, run(args, &stderr), "%q", args)
		assert.Contains(t, stderr.String(), "odmr-customer", "%q", args)
	}
	// A malformed domain list is a usage error naming its flag, found
	// before any connection: with -every a failed fetch would be retried
	// for ever.
	for _, tt := range [][2]string{{"-domains", "a.test,,b.test"}, {"-accept-domains", "a.test,"}, {"-domains", "exa_mple.test"}} {
		var stderr bytes.Buffer
		args := []string{"-provider", "127.0.0.1:1", "-user", "u", "-maildir", t.TempDir(), tt[0], tt[1]}
		assert.Equal(t, exitUsage, run(args, &stderr), "%q", args)
		assert.Contains(t, stderr.String(), "odmr-customer: "+tt[0]+": ", "%q", args)
		assert.NotContains(t, stderr.String(), "ATRN argument", "%q", args)
	}
	// So are a local target that cannot be, found before the provider
	// has mail for it.
	for _, args := range [][]string{{"-smtp", "localhost"}, {"-relay", "127.0.0.1:"}, {"-maildir", "/proc/no/such/dir"},
		{"-max-message-size", "-1", "-maildir", t.TempDir()}} {
		var stderr bytes.Buffer
		t.Setenv("ODMR_SECRET", "x")
		assert.Equal(t, exitUsage, run(append([]string{"-provider", "127.0.0.1:1", "-user", "u", "-domains", "a.test"}, args...), &stderr), "%q", args)
		assert.Contains(t, stderr.String(), "odmr-customer: "+args[0], "%q", args)
		assert.NotContains(t, stderr.String(), "odmr: maildir", "%q", args)
	}
	var stderr bytes.Buffer
	run([]string{"-provider", "p", "-user", "u", "-maildir", "d", "-domains", "a.test,,b.test"}, &stderr)
	assert.Contains(t, stderr.String(), `-domains: empty domain 2 of 3 in "a.test,,b.test" (two commas in a row, or one at an end)`)

	// No secret anywhere.
	t.Setenv("ODMR_SECRET", "")
	stderr.Reset()
	assert.Equal(t, exitUsage, run([]string{"-provider", "p", "-user", "u", "-maildir", t.TempDir()}, &stderr))
	assert.Contains(t, stderr.String(), "ODMR_SECRET")
}

func TestCustomerCommandHelpDocumentsTheExitStatus(t *testing.T) {
	var stderr bytes.Buffer
	assert.Equal(t, 0, run([]string{"-h"}, &stderr))
	for _, s := range []string{"Exit status", "-maildir", "-relay", "-lmtp", "-smtp", "ODMR_SECRET", "  8  temporary",
		"-tls", "-starttls", "-no-tls", "STARTTLS whenever the provider offers it", "-ca FILE", "-cert FILE -key FILE",
		"-debug", "EXTERNAL", "  6  the local target", "130, 143", "-every DURATION", "-max-backoff"} {
		assert.Contains(t, stderr.String(), s)
	}
}

func TestCustomerCommandExitCode(t *testing.T) {
	reply := func(code int) error { return fmt.Errorf("odmr: x: %w", &odmr.Error{Code: code}) }
	for _, tc := range []struct {
		res  odmr.FetchResult
		err  error
		want int
	}{
		{odmr.FetchResult{Messages: 1}, nil, exitMail},
		{odmr.FetchResult{NoMail: true}, nil, exitNoMail},
		{odmr.FetchResult{}, reply(535), exitAuth},
		{odmr.FetchResult{}, reply(530), exitAuth},
		{odmr.FetchResult{}, reply(538), exitAuth},
		{odmr.FetchResult{}, odmr.ErrNoAuthMechanism, exitAuth},
		{odmr.FetchResult{}, reply(450), exitRefused},
		{odmr.FetchResult{}, reply(502), exitRefused},
		{odmr.FetchResult{}, odmr.ErrNoATRN, exitRefused},
		{odmr.FetchResult{}, reply(451), exitTemporary},
		{odmr.FetchResult{}, reply(421), exitTemporary},
		{odmr.FetchResult{}, reply(454), exitTemporary},
		{odmr.FetchResult{}, odmr.ErrProtocol, exitFailure},
		{odmr.FetchResult{}, errors.New("odmr: connecting: refused"), exitFailure},
		{odmr.FetchResult{}, reply(554), exitFailure},
		{odmr.FetchResult{Messages: 1, LocalRefused: 1}, nil, exitLocal},
		{odmr.FetchResult{LocalRefused: 1}, nil, exitLocal},
		{odmr.FetchResult{}, fmt.Errorf("odmr: relay: x: %w", odmr.ErrLocalDelivery), exitLocal},
	} {
		assert.Equal(t, tc.want, exitCode(&tc.res, tc.err), "%v", tc.err)
	}
}

// startProvider serves alice (example.org, example.com) and bob
// (example.net) with q on loopback.
func startProvider(t *testing.T, q *memqueue.Queue) string {
	t.Helper()
	accts := accounts.Map{
		"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org", "example.com"}},
		"bob":   {Name: "bob", Secret: "b0b", Domains: []string{"example.net"}},
	}
	p := &odmr.Provider{Hostname: "provider.test", Authenticator: accts, Authorizer: accts, Queue: q,
		Logger: slog.New(slog.DiscardHandler)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serveProvider(t, p, l)
	return l.Addr().String()
}

// serveProvider runs p on l until the test ends.
func serveProvider(t *testing.T, p *odmr.Provider, l net.Listener) {
	done := make(chan error, 1)
	go func() { done <- p.ServeListener(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
		p.Close()
		<-done
	})
}

func TestCustomerCommandFetchIntoAMaildir(t *testing.T) {
	q := &memqueue.Queue{}
	_, err := q.Enqueue(odmr.Envelope{From: "x@sender.test", To: []string{"u@example.org"}},
		strings.NewReader("Subject: hi\r\n\r\nHello.\r\n"))
	require.NoError(t, err)
	addr := startProvider(t, q)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	require.NoError(t, os.WriteFile(secret, []byte("s3cret\n"), 0o600))
	md := filepath.Join(dir, "Maildir")
	args := []string{"-provider", addr, "-user", "alice", "-secret-file", secret,
		"-domains", "example.org", "-maildir", md, "-hostname", "customer.test"}

	var stderr bytes.Buffer
	require.Equal(t, exitMail, run(args, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "received 1 message(s)")
	assert.NotContains(t, stderr.String(), "s3cret")
	entries, err := os.ReadDir(filepath.Join(md, "new"))
	require.NoError(t, err)
	require.Len(t, entries, 1)
	b, err := os.ReadFile(filepath.Join(md, "new", entries[0].Name()))
	require.NoError(t, err)
	assert.Regexp(t, `^Return-Path: <x@sender.test>\nDelivered-To: u@example.org\n`+
		`Received: from provider.test \(\[127.0.0.1\]\)\n\tby customer.test with ESMTP id [a-z0-9-]+\n\tfor <u@example.org>; [^\n]+\n`+
		`Subject: hi\n\nHello.\n$`, string(b))

	stderr.Reset()
	assert.Equal(t, exitNoMail, run(args, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "no mail waiting")

	// The secret from the environment, a wrong one.
	t.Setenv("ODMR_SECRET", "wrong")
	stderr.Reset()
	assert.Equal(t, exitAuth, run([]string{"-provider", addr, "-user", "alice", "-domains", "example.org", "-maildir", md}, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "535")

	// A domain of another account.
	t.Setenv("ODMR_SECRET", "s3cret")
	stderr.Reset()
	assert.Equal(t, exitRefused, run([]string{"-provider", addr, "-user", "alice", "-domains", "example.net", "-maildir", md}, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "450")
}

func TestCustomerCommandConnectionRefusedExits2(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	t.Setenv("ODMR_SECRET", "s")
	var stderr bytes.Buffer
	assert.Equal(t, exitFailure, run([]string{"-provider", addr, "-user", "u", "-domains", "example.org", "-maildir", t.TempDir()}, &stderr))
	assert.Contains(t, stderr.String(), "connecting to "+addr)
}

// testPKI is a CA, with a provider certificate for 127.0.0.1 and
// localhost and a client certificate for alice, written as PEM files.
type testPKI struct {
	dir                       string
	pool                      *x509.CertPool
	server                    tls.Certificate
	caFile, certFile, keyFile string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	ca := testcert.NewCA(t, "odmr-customer test CA")
	p := &testPKI{dir: t.TempDir(), pool: ca.Pool, server: ca.Server(t, "provider.test", "localhost", "127.0.0.1")}
	certPEM, keyPEM := testcert.PEM(t, ca.Client(t, "alice"))
	write := func(name string, data []byte) string {
		f := filepath.Join(p.dir, name)
		require.NoError(t, os.WriteFile(f, data, 0o600))
		return f
	}
	p.caFile = write("ca.pem", ca.PEM())
	p.certFile = write("alice.pem", certPEM)
	p.keyFile = write("alice.key", keyPEM)
	return p
}

// startTLSProvider is startProvider with TLS: implicit TLS, or STARTTLS
// offered. A client certificate whose CN names an account authenticates
// it with EXTERNAL.
func startTLSProvider(t *testing.T, q *memqueue.Queue, pki *testPKI, implicit bool) string {
	t.Helper()
	accts := accounts.Map{
		"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org", "example.com"}},
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pki.server}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pki.pool}
	p := &odmr.Provider{Hostname: "provider.test", Authenticator: accts, Authorizer: accts, Queue: q,
		TLSConfig: cfg, Logger: slog.New(slog.DiscardHandler),
		ExternalAuth: func(ctx context.Context, cs tls.ConnectionState) (string, error) {
			if cn := cs.PeerCertificates[0].Subject.CommonName; accts[cn].Name != "" {
				return cn, nil
			}
			return "", errors.New("unknown certificate")
		}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	if implicit {
		l = tls.NewListener(l, cfg)
	}
	serveProvider(t, p, l)
	return addr
}

func enqueueOne(t *testing.T, q *memqueue.Queue) {
	t.Helper()
	_, err := q.Enqueue(odmr.Envelope{From: "x@sender.test", To: []string{"u@example.org"}},
		strings.NewReader("Subject: hi\r\n\r\nHello over TLS.\r\n"))
	require.NoError(t, err)
}

func maildirCount(t *testing.T, md string) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(md, "new"))
	require.NoError(t, err)
	return len(entries)
}

func TestCustomerCommandImplicitTLSWithAClientCertificate(t *testing.T) {
	pki := newTestPKI(t)
	q := &memqueue.Queue{}
	enqueueOne(t, q)
	addr := startTLSProvider(t, q, pki, true)
	t.Setenv("ODMR_SECRET", "")
	md := filepath.Join(t.TempDir(), "Maildir")
	// No -user and no secret: the certificate is the credential.
	args := []string{"-provider", addr, "-tls", "-ca", pki.caFile, "-cert", pki.certFile, "-key", pki.keyFile,
		"-domains", "example.org", "-maildir", md, "-hostname", "customer.test", "-debug"}
	var stderr bytes.Buffer
	require.Equal(t, exitMail, run(args, &stderr), stderr.String())
	out := stderr.String()
	assert.Contains(t, out, "received 1 message(s) for 1 recipient(s)")
	assert.Contains(t, out, "(EXTERNAL, TLS 1.")
	for _, want := range []string{
		addr + " C: EHLO customer.test",
		addr + " C: AUTH EXTERNAL <redacted>",
		addr + " P: 235 ",
		addr + " C: ATRN example.org",
		addr + " C: 220 customer.test ",
		addr + " P: MAIL FROM:<x@sender.test>",
		addr + " P: Hello over TLS.",
	} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, "STARTTLS")
	assert.Equal(t, 1, maildirCount(t, md))
	assert.Zero(t, q.Len())
}

func TestCustomerCommandSTARTTLSWithACA(t *testing.T) {
	pki := newTestPKI(t)
	q := &memqueue.Queue{}
	enqueueOne(t, q)
	addr := startTLSProvider(t, q, pki, false)
	secret := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secret, []byte("s3cret\n"), 0o600))
	md := filepath.Join(t.TempDir(), "Maildir")
	args := []string{"-provider", addr, "-starttls", "-ca", pki.caFile, "-user", "alice", "-secret-file", secret,
		"-domains", "example.org", "-maildir", md, "-hostname", "customer.test", "-debug", "-v"}
	var stderr bytes.Buffer
	require.Equal(t, exitMail, run(args, &stderr), stderr.String())
	out := stderr.String()
	assert.Contains(t, out, "(SCRAM-SHA-256, TLS 1.")
	assert.Contains(t, out, addr+" C: STARTTLS\n")
	assert.Contains(t, out, addr+" C: AUTH SCRAM-SHA-256 <redacted>")
	assert.Contains(t, out, addr+" P: 334 <redacted>")
	assert.NotContains(t, out, "s3cret")
	assert.Equal(t, 1, maildirCount(t, md))

	// -cert with a user and a secret: EXTERNAL still comes first.
	enqueueOne(t, q)
	stderr.Reset()
	args = append(args, "-cert", pki.certFile, "-key", pki.keyFile)
	require.Equal(t, exitMail, run(args, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "(EXTERNAL, TLS 1.")
	assert.Equal(t, 2, maildirCount(t, md))
}

func TestCustomerCommandTLSVerifiesTheProvider(t *testing.T) {
	pki := newTestPKI(t)
	q := &memqueue.Queue{}
	enqueueOne(t, q)
	addr := startTLSProvider(t, q, pki, true)
	t.Setenv("ODMR_SECRET", "s3cret")
	md := filepath.Join(t.TempDir(), "Maildir")
	// The system's roots do not know the test CA.
	var stderr bytes.Buffer
	assert.Equal(t, exitFailure, run([]string{"-provider", addr, "-tls", "-user", "alice", "-domains", "example.org", "-maildir", md}, &stderr))
	assert.Contains(t, stderr.String(), "odmr-customer: TLS with 127.0.0.1: x509: ")
	// Nor does another CA.
	other := newTestPKI(t)
	stderr.Reset()
	assert.Equal(t, exitFailure, run([]string{"-provider", addr, "-tls", "-ca", other.caFile, "-user", "alice", "-domains", "example.org", "-maildir", md}, &stderr))
	assert.Contains(t, stderr.String(), "odmr-customer: TLS with 127.0.0.1: x509: certificate signed by unknown authority")
	assert.Equal(t, 1, q.Len())
}

func TestCustomerCommandTLSFlagErrorsExit5(t *testing.T) {
	pki := newTestPKI(t)
	t.Setenv("ODMR_SECRET", "s")
	md := t.TempDir()
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	require.NoError(t, os.WriteFile(notPEM, []byte("hello"), 0o600))
	base := []string{"-provider", "127.0.0.1:1", "-user", "u", "-domains", "example.org", "-maildir", md}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-tls", "-cert", pki.certFile}, "-cert FILE needs -key FILE"},
		{[]string{"-tls", "-key", pki.keyFile}, "-key FILE needs -cert FILE"},
		{[]string{"-tls", "-starttls"}, "-tls or -starttls, not both"},
		{[]string{"-no-tls", "-ca", pki.caFile}, "-ca contradicts -no-tls"},
		{[]string{"-no-tls", "-cert", pki.certFile, "-key", pki.keyFile}, "-cert contradicts -no-tls"},
		{[]string{"-no-tls", "-starttls"}, "-no-tls contradicts -tls and -starttls"},
		{[]string{"-no-tls", "-tls"}, "-no-tls contradicts -tls and -starttls"},
		{[]string{"-tls", "-ca", notPEM}, "no PEM certificate"},
		{[]string{"-tls", "-ca", filepath.Join(md, "missing.pem")}, "-ca: "},
		{[]string{"-tls", "-cert", pki.caFile, "-key", pki.keyFile}, "-cert " + pki.caFile},
	} {
		var stderr bytes.Buffer
		assert.Equal(t, exitUsage, run(append(append([]string(nil), base...), tc.args...), &stderr), "%q", tc.args)
		assert.Contains(t, stderr.String(), tc.want, "%q", tc.args)
	}
	// Without -cert, -user stays required.
	var stderr bytes.Buffer
	assert.Equal(t, exitUsage, run([]string{"-provider", "p", "-tls", "-maildir", md}, &stderr))
	assert.Contains(t, stderr.String(), "-user NAME is required")
}

func TestCustomerCommandSTARTTLSWhenOffered(t *testing.T) {
	// Without -starttls the customer still upgrades when the provider
	// offers STARTTLS, verifying its certificate.
	pki := newTestPKI(t)
	q := &memqueue.Queue{}
	addr := startTLSProvider(t, q, pki, false)
	t.Setenv("ODMR_SECRET", "s3cret")
	md := filepath.Join(t.TempDir(), "Maildir")
	base := []string{"-provider", addr, "-user", "alice", "-domains", "example.org", "-maildir", md, "-debug"}

	enqueueOne(t, q)
	var stderr bytes.Buffer
	require.Equal(t, exitMail, run(append(base, "-ca", pki.caFile), &stderr), stderr.String())
	assert.Contains(t, stderr.String(), addr+" C: STARTTLS\n")
	assert.Contains(t, stderr.String(), "(SCRAM-SHA-256, TLS 1.")
	assert.Equal(t, 1, maildirCount(t, md))

	// A certificate that does not verify: a clear failure naming the
	// flags, never clear text.
	enqueueOne(t, q)
	stderr.Reset()
	assert.Equal(t, exitFailure, run(base, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "x509: ")
	assert.Contains(t, stderr.String(), "give -ca FILE")
	assert.Contains(t, stderr.String(), "or -no-tls")
	assert.NotContains(t, stderr.String(), "C: AUTH")
	assert.Equal(t, 1, q.Len())

	// -no-tls: clear text, though STARTTLS is offered.
	stderr.Reset()
	require.Equal(t, exitMail, run(append(base, "-no-tls"), &stderr), stderr.String())
	assert.NotContains(t, stderr.String(), "C: STARTTLS")
	assert.Contains(t, stderr.String(), "(SCRAM-SHA-256)")
	assert.Equal(t, 2, maildirCount(t, md))
}

func TestCustomerCommandClearTextWhenSTARTTLSIsNotOffered(t *testing.T) {
	q := &memqueue.Queue{}
	enqueueOne(t, q)
	addr := startProvider(t, q)
	t.Setenv("ODMR_SECRET", "s3cret")
	var stderr bytes.Buffer
	require.Equal(t, exitMail, run([]string{"-provider", addr, "-user", "alice", "-domains", "example.org",
		"-maildir", filepath.Join(t.TempDir(), "Maildir")}, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "level=WARN")
	assert.Contains(t, stderr.String(), "does not offer STARTTLS")
	// -starttls requires it.
	enqueueOne(t, q)
	stderr.Reset()
	assert.Equal(t, exitFailure, run([]string{"-provider", addr, "-user", "alice", "-domains", "example.org",
		"-maildir", filepath.Join(t.TempDir(), "Maildir"), "-starttls"}, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "does not offer STARTTLS")
}

// TestCustomerCommandHelpNamesEachValue: -h shows each flag's value by
// what it means, never by its Go type ("-timeout duration").
func TestCustomerCommandHelpNamesEachValue(t *testing.T) {
	var stderr bytes.Buffer
	assert.Equal(t, 0, run([]string{"-h"}, &stderr))
	require.Contains(t, stderr.String(), "Flags:")
	typeName := regexp.MustCompile(`(?m)^  -([a-z0-9-]+) (int|int64|uint|uint64|float|duration|string|value)$`)
	for _, m := range typeName.FindAllStringSubmatch(stderr.String(), -1) {
		t.Errorf("-%s shows its value as %q", m[1], m[2])
	}
	assert.Contains(t, stderr.String(), "-timeout DURATION")
	assert.Contains(t, stderr.String(), "-max-backoff DURATION")
}
