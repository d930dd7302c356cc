package pgqueue

import (
	"context"
	"log/slog"
	"testing"

	"github.com/go-odmr/odmr/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// openTest opens a queue on a fresh database, closed when t ends.
func openTest(t *testing.T, opts Options) *Queue {
	t.Helper()
	return openDSN(t, pgtest.DSN(t), opts)
}

// openDSN is openTest on the database dsn names.
func openDSN(t *testing.T, dsn string, opts Options) *Queue {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaintenanceInterval == 0 {
		opts.MaintenanceInterval = -1
	}
	q, err := Open(t.Context(), dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// lapseLeases makes every lease held in q lapse now, as if its holder had
// died LeaseTTL ago.
func lapseLeases(t *testing.T, q *Queue) {
	t.Helper()
	if _, err := q.pool.Exec(context.Background(),
		"UPDATE odmr_pending SET lease_until = now() - interval '1 second' WHERE lease_until IS NOT NULL"); err != nil {
		t.Fatal(err)
	}
}
