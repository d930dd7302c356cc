package spool

import (
	"context"
	"io"
	"testing"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtest/queuetest"
)

// TestQueueSuite runs the shared queue suite against the spool. Its lease
// expiry (idle leases taken back after LeaseTTL) is tested in
// lease_test.go, so the suite's lease expiry and fencing tests skip.
func TestQueueSuite(t *testing.T) {
	queuetest.Run(t, queuetest.Config{
		New: func(t *testing.T) queuetest.Queue {
			s, err := Open(t.TempDir(), Options{Bouncer: BouncerFunc(discardBounce), Hostname: "mx.test"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	})
}

var discardBounce = func(_ context.Context, _ odmr.Envelope, dsn io.Reader) error {
	_, err := io.Copy(io.Discard, dsn)
	return err
}
