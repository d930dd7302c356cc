// Package smtptest stops the go-smtp servers that tests run, without
// racing a transfer that is still under way.
package smtptest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// ShutdownTimeout is how long Shutdown waits for the server's connections
// to end. It is a safety net for a test that left a connection open, not a
// measure of anything: a connection that ends normally ends long before.
const ShutdownTimeout = time.Minute

// Shutdown stops srv the way the library's customer does: it closes the
// listeners and waits for every connection to end. Server.Close instead
// closes connections under a transfer, and go-smtp v0.25 then races
// (Conn.handleBdat writes bdatPipe without the lock Conn.Close reads it
// under) and may dereference nil; the race detector blames whichever test
// runs next. A connection still open after ShutdownTimeout fails tb, and
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
