package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
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
	// No secret anywhere.
	t.Setenv("ODMR_SECRET", "")
	var stderr bytes.Buffer
	assert.Equal(t, exitUsage, run([]string{"-provider", "p", "-user", "u", "-maildir", t.TempDir()}, &stderr))
	assert.Contains(t, stderr.String(), "ODMR_SECRET")
}

func TestCustomerCommandHelpDocumentsTheExitStatus(t *testing.T) {
	var stderr bytes.Buffer
	assert.Equal(t, 0, run([]string{"-h"}, &stderr))
	for _, s := range []string{"Exit status", "-maildir", "-relay", "-lmtp", "-smtp", "ODMR_SECRET", "  8  temporary"} {
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
	} {
		assert.Equal(t, tc.want, exitCode(&tc.res, tc.err), "%v", tc.err)
	}
}

// startProvider serves alice (example.org, example.com) and bob
// (example.net) with q on loopback.
func startProvider(t *testing.T, q *odmr.MemoryQueue) string {
	t.Helper()
	accts := odmr.Accounts{
		"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org", "example.com"}},
		"bob":   {Name: "bob", Secret: "b0b", Domains: []string{"example.net"}},
	}
	p := &odmr.Provider{Hostname: "provider.test", Authenticator: accts, Authorizer: accts, Queue: q,
		Logger: slog.New(slog.DiscardHandler)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- p.ServeListener(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
		p.Close()
		<-done
	})
	return l.Addr().String()
}

func TestCustomerCommandFetchIntoAMaildir(t *testing.T) {
	q := &odmr.MemoryQueue{}
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
	assert.Equal(t, "Return-Path: <x@sender.test>\nDelivered-To: u@example.org\nSubject: hi\n\nHello.\n", string(b))

	stderr.Reset()
	assert.Equal(t, exitNoMail, run(args, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "no mail waiting")

	// The secret from the environment, a wrong one.
	t.Setenv("ODMR_SECRET", "wrong")
	stderr.Reset()
	assert.Equal(t, exitAuth, run([]string{"-provider", addr, "-user", "alice", "-maildir", md}, &stderr), stderr.String())
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
	assert.Equal(t, exitFailure, run([]string{"-provider", addr, "-user", "u", "-maildir", t.TempDir()}, &stderr))
	assert.Contains(t, stderr.String(), "connecting to "+addr)
}
