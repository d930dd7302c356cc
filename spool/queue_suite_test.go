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
//
// Its concurrent sessions run on three Spools opened on one directory, as
// by three processes sharing it.
func TestQueueSuite(t *testing.T) {
	open := func(t *testing.T, dir string) *Spool {
		s, err := Open(dir, Options{Bouncer: BouncerFunc(discardBounce), Hostname: "mx.test"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	queuetest.Run(t, queuetest.Config{
		New: func(t *testing.T) queuetest.Queue { return open(t, t.TempDir()) },
		Reopen: func(t *testing.T, q queuetest.Queue) queuetest.Queue {
			return open(t, q.(*Spool).dir)
		},
	})
}

var discardBounce = func(_ context.Context, _ odmr.Envelope, dsn io.Reader) error {
	_, err := io.Copy(io.Discard, dsn)
	return err
}
