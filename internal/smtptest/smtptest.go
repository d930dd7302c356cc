// Package smtptest holds the go-smtp servers that several packages' tests
// deliver to (a receiving MTA that refuses by address and content, a
// smarthost that wants TLS and AUTH, a scripted peer), serves a test's
// own go-smtp server on loopback, and stops go-smtp servers without
// racing a transfer that is still under way.
package smtptest

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/oneconn"
)

// Serve serves srv on a loopback TCP port until the test ends, when
// Shutdown stops it, and returns the address.
func Serve(t testing.TB, srv *smtp.Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, srv, l)
	return l.Addr().String()
}

// serve serves srv on l until the test ends.
func serve(t testing.TB, srv *smtp.Server, l net.Listener) {
	go srv.Serve(l)
	t.Cleanup(func() { Shutdown(t, srv) })
}

// Dial has srv serve one connection, over net.Pipe or, when tcp is set,
// loopback TCP, and returns the client's end. The test's cleanup closes
// it and shuts srv down.
func Dial(t testing.TB, srv *smtp.Server, tcp bool) net.Conn {
	t.Helper()
	if !tcp {
		c, s := net.Pipe()
		serve(t, srv, oneconn.New(s))
		t.Cleanup(func() { c.Close() }) // before Shutdown, which waits for it
		return c
	}
	c, err := net.Dial("tcp", Serve(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ShutdownTimeout is how long Shutdown waits for the server's connections
// to end. It is a safety net for a test that left a connection open, not a
// measure of anything: a connection that ends normally ends long before.
const ShutdownTimeout = time.Minute

// Shutdown stops srv the way the library's customer does: it closes the
// listeners and waits for every connection to end. Server.Close instead
// closes connections under a transfer, and go-smtp then races and may
// dereference nil (internal/smtpserver/UPSTREAM.md); the race detector
// blames whichever test runs next. A connection still open after ShutdownTimeout fails tb, and
// the server is closed after all.
func Shutdown(tb testing.TB, srv *smtp.Server) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(ctx)
	switch {
	case err == nil, errors.Is(err, smtp.ErrServerClosed):
	case errors.Is(err, context.DeadlineExceeded):
		tb.Errorf("smtptest: a connection to the go-smtp server was still open %v after Shutdown", ShutdownTimeout)
		srv.Close()
	default:
		// A listener that was already closed (a one-connection
		// listener, say) is no reason to fail.
		tb.Logf("smtptest: shutdown: %v", err)
	}
}
