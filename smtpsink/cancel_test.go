package smtpsink_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/smtpsink"
)

// TestCancelEndsABlockedRead: a cancellation that comes while the sink
// already waits for the local server (here for a greeting that never
// comes, with the command timeout an hour away) ends the wait at once,
// and Deliver says it was cancelled, not that a read timed out.
func TestCancelEndsABlockedRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		client, server := net.Pipe()
		defer server.Close()
		sink := smtpsink.New("local.test:25")
		sink.Timeout = time.Hour
		sink.Dial = func(context.Context, string, string) (net.Conn, error) { return client, nil }
		done := make(chan error, 1)
		go func() {
			done <- sink.Deliver(ctx, odmr.Envelope{From: "a@b", To: []string{"c@d"}}, strings.NewReader("x\r\n"))
		}()
		synctest.Wait() // Deliver is blocked reading the greeting
		select {
		case err := <-done:
			t.Fatalf("Deliver returned before the cancellation: %v", err)
		default:
		}
		start := time.Now()
		cancel()
		err := <-done
		require.ErrorIs(t, err, context.Canceled)
		require.Zero(t, time.Since(start), "Deliver took fake time to notice the cancellation")
	})
}
