package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

// Two Spools on one directory, as two provider processes would have, and
// many concurrent sessions per domain, some for several domains at once,
// while messages keep arriving through both: every recipient is delivered
// exactly once, some after temporary failures, and none is lost.
func TestConcurrentSessionsOnSharedSpool(t *testing.T) {
	messages, workersPerDomain := 200, 4
	if testing.Short() {
		messages, workersPerDomain = 60, 3
	}
	f := newFixture(t)
	spools := []*Spool{f.s, f.open()}
	domains := []string{"a.test", "b.test", "c.test"}
	ctx := context.Background()

	var (
		mu        sync.Mutex
		queued    = map[string]bool{} // "id rcpt" of accepted messages
		delivered = map[string]int{}  // "id rcpt" -> deliveries
		failures  atomic.Int64        // temporary failures reported
		enqDone   atomic.Bool
	)
	var enq sync.WaitGroup
	for w := range 2 {
		enq.Add(1)
		go func() {
			defer enq.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range messages / 2 {
				var to []string
				for _, d := range domains {
					if rng.IntN(2) == 0 || len(to) == 0 && d == "c.test" {
						to = append(to, fmt.Sprintf("u%d-%d@%s", w, i, d))
					}
				}
				body := checksummed(fmt.Sprintf("%d-%d", w, i), []byte(strings.Repeat("data\r\n", rng.IntN(500))))
				id, err := spools[w].Enqueue(ctx, odmr.Envelope{From: "s@origin.test", To: to}, strings.NewReader(body))
				if !assert.NoError(t, err) {
					return
				}
				mu.Lock()
				for _, r := range to {
					queued[id+" "+r] = true
				}
				mu.Unlock()
			}
		}()
	}
	go func() { enq.Wait(); enqDone.Store(true) }()

	deadline := time.Now().Add(2 * time.Minute)
	worker := func(n int, claim []string) {
		rng := rand.New(rand.NewPCG(uint64(n), 2))
		s := spools[n%2]
		for time.Now().Before(deadline) {
			done := enqDone.Load()
			b, err := s.Claim(ctx, claim)
			if !assert.NoError(t, err) {
				return
			}
			for {
				m, err := b.Next(ctx)
				if errors.Is(err, io.EOF) {
					break
				}
				if !assert.NoError(t, err) {
					return
				}
				env := m.Envelope()
				rc, err := m.Open()
				require.NoError(t, err)
				data, err := io.ReadAll(rc)
				rc.Close()
				require.NoError(t, err)
				require.NoError(t, verifyChecksum(string(data)), env.ID)
				var res []odmr.RecipientResult
				var ok []string
				for _, r := range env.To {
					if !assert.Contains(t, claim, odmr.RecipientDomain(r), "recipient outside the batch's domains") {
						continue
					}
					if rng.IntN(8) == 0 {
						res = append(res, odmr.RecipientResult{Recipient: r, Err: errMailboxBusy})
						failures.Add(1)
						continue
					}
					res = append(res, odmr.RecipientResult{Recipient: r})
					ok = append(ok, r)
				}
				// Count the delivery before Complete, as a customer would
				// have the message: a second lease of these recipients
				// before Complete returns would show as a duplicate.
				mu.Lock()
				for _, r := range ok {
					delivered[env.ID+" "+r]++
				}
				mu.Unlock()
				require.NoError(t, m.Complete(ctx, res))
			}
			require.NoError(t, b.Close())
			if done {
				more := false
				for _, s := range spools {
					h, err := s.HasMail(ctx, claim)
					require.NoError(t, err)
					more = more || h
				}
				if !more {
					return
				}
			}
		}
		t.Error("the queue did not drain in time")
	}
	var wg sync.WaitGroup
	n := 0
	for _, d := range domains {
		for range workersPerDomain {
			n++
			id := n
			wg.Go(func() { worker(id, []string{d}) })
		}
	}
	two, all := n+1, n+2
	wg.Go(func() { worker(two, []string{"a.test", "b.test"}) })
	wg.Go(func() { worker(all, domains) })
	n += 2
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, queued, len(delivered), "every recipient delivered")
	dups := 0
	for k := range queued {
		if delivered[k] != 1 {
			dups++
			t.Errorf("%s delivered %d times", k, delivered[k])
		}
	}
	t.Logf("%d messages, %d recipients delivered exactly once by %d sessions over 2 Spools; %d temporary failures retried",
		messages, len(delivered), n, failures.Load())
	assertEmptySpool(t, f.dir)
}
