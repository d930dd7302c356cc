package pgqueue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/pgtest"
)

// TestOverlappingBatchesLeaseEachRecipientOnce: sessions on three nodes
// whose domains overlap ({a,b}, {b,c}, {a,c}, ...) lease at once from one
// queue of messages to several of the domains; with no lease lapsing,
// every recipient is leased and delivered exactly once. It is what the
// lease's one statement (the first free row, the message's other free
// rows unless another transaction takes them, FOR UPDATE SKIP LOCKED)
// must give, whatever the interleaving.
func TestOverlappingBatchesLeaseEachRecipientOnce(t *testing.T) {
	dsn := pgtest.DSN(t)
	var nodes []*Queue
	for range 3 {
		q, err := Open(t.Context(), dsn, Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		nodes = append(nodes, q)
	}
	const messages = 150
	domains := []string{"a.example", "b.example", "c.example"}
	want := 0
	for i := range messages {
		var to []string
		for j, d := range domains {
			if (i>>j)&1 == 1 || (i%7 == 0) {
				to = append(to, fmt.Sprintf("u%d@%s", i, d))
			}
		}
		if len(to) == 0 {
			to = []string{fmt.Sprintf("u%d@%s", i, domains[i%3])}
		}
		want += len(to)
		if _, err := nodes[i%3].Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: to}, strings.NewReader(testBody)); err != nil {
			t.Fatal(err)
		}
	}
	sets := [][]string{
		{"a.example", "b.example"}, {"b.example", "c.example"}, {"a.example", "c.example"},
		{"a.example"}, {"b.example"}, {"c.example"}, domains,
	}
	var mu sync.Mutex
	leased := make(map[string]int)
	var wg sync.WaitGroup
	errc := make(chan error, len(sets))
	// The first error stops every session: a lease that went wrong
	// leaves rows leased for LeaseTTL, which the others would wait on.
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	fail := func(err error) {
		errc <- err
		stop()
	}
	for w, set := range sets {
		q := nodes[w%3]
		wg.Go(func() {
			for ctx.Err() == nil {
				has, err := q.HasMail(ctx, domains)
				if err != nil {
					fail(err)
					return
				}
				if !has {
					return
				}
				b, err := q.Claim(ctx, set)
				if err != nil {
					fail(err)
					return
				}
				for {
					m, err := b.Next(ctx)
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						b.Close()
						fail(err)
						return
					}
					var rs []odmr.RecipientResult
					mu.Lock()
					for _, r := range m.Envelope().To {
						leased[r]++
						rs = append(rs, odmr.RecipientResult{Recipient: r})
					}
					mu.Unlock()
					if err := m.Complete(ctx, rs); err != nil {
						b.Close()
						fail(err)
						return
					}
				}
				b.Close()
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	for r, n := range leased {
		if n != 1 {
			t.Errorf("%s leased %d times", r, n)
		}
	}
	if len(leased) != want {
		t.Errorf("%d recipients delivered, want %d", len(leased), want)
	}
	if n := count(t, nodes[0], "SELECT count(*) FROM odmr_recipients WHERE state = 'queued'"); n != 0 {
		t.Errorf("%d recipients left queued", n)
	}
}
