package pgqueue

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/pgtest"
)

// roundTrips counts the round trips to the server: a query, an Exec
// (BEGIN and COMMIT among them), or a whole batch.
type roundTrips struct {
	mu      sync.Mutex
	n       int
	inBatch bool
}

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.inBatch {
		r.n++
	}
	return ctx
}

func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	r.inBatch = true
	return ctx
}

func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inBatch = false
}

func (r *roundTrips) take() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.n
	r.n = 0
	return n
}

// TestDeliveryRoundTrips counts the round trips of delivering one message
// of one chunk to one recipient: Next, reading the body, Complete. Each
// is a wait on the database that every message of a session pays.
func TestDeliveryRoundTrips(t *testing.T) {
	cfg, err := pgxpool.ParseConfig(pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	var rt roundTrips
	cfg.ConnConfig.Tracer = &rt
	cfg.MaxConns = 1 // no concurrent connection setup among the counts
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	q, err := New(t.Context(), pool, Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	for _, to := range []string{"u@a.example", "v@a.example"} {
		if _, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{to}}, strings.NewReader(testBody)); err != nil {
			t.Fatal(err)
		}
	}
	b, err := q.Claim(t.Context(), []string{"a.example"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := range 2 {
		rt.take()
		m, err := b.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		next := rt.take()
		rc, _ := m.Open()
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		read := rt.take()
		var rs []odmr.RecipientResult
		for _, r := range m.Envelope().To {
			rs = append(rs, odmr.RecipientResult{Recipient: r})
		}
		if err := m.Complete(t.Context(), rs); err != nil {
			t.Fatal(err)
		}
		complete := rt.take()
		t.Logf("message %d: round trips: Next %d, body %d, Complete %d", i, next, read, complete)
		if next > 4 || read > 1 || complete > 5 {
			t.Errorf("round trips: Next %d (want 4), body %d (want 1), Complete %d (want 5)", next, read, complete)
		}
	}
}
