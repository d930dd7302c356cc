package pgqueue

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/pgtest"
	"github.com/go-odmr/odmr/odmrtrace"
	"github.com/go-odmr/odmr/spool"
)

// BenchmarkQueues measures pgqueue and, in the same run, the spool, each
// with mail already queued: the latency of Enqueue (10 KiB), of HasMail
// for a domain with mail and for one without, and of delivering one
// message (Claim, Next, reading the body, Complete, Close), one operation
// at a time, with the median and 99th percentile; and it logs how long
// QueueStats (the metrics gauges) takes.
//
// ODMR_BENCH_QUEUED sets how many messages each queue holds before it is
// measured (default 100,000, over a tenth as many domains; the issue's
// figure is 1,000,000). pgqueue is loaded in bulk with SQL; the spool
// through Enqueue from ODMR_BENCH_FILL_WORKERS goroutines (default 64),
// whose fsyncs the file system overlaps, since each message takes four.
// ODMR_BENCH_SPOOL_QUEUED, when set, gives the spool a number of its own.
//
//	ODMR_BENCH_QUEUED=1000000 go test -run='^$' -bench=Queues -benchtime=2000x -timeout 2h ./pgqueue
func BenchmarkQueues(b *testing.B) {
	pgN := envInt("ODMR_BENCH_QUEUED", 100000)
	spoolN := envInt("ODMR_BENCH_SPOOL_QUEUED", pgN)
	workers := envInt("ODMR_BENCH_FILL_WORKERS", 64)
	ctx := context.Background()

	b.Run("pgqueue", func(b *testing.B) {
		q, err := Open(ctx, pgtest.DSN(b), Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		defer q.Close()
		t0 := time.Now()
		if err := bulkLoad(ctx, q, pgN, max(pgN/10, 1)); err != nil {
			b.Fatal(err)
		}
		b.Logf("pgqueue: %d messages over %d domains loaded in %v", pgN, pgN/10, time.Since(t0).Round(time.Millisecond))
		benchOps(b, q, max(pgN/10, 1))
	})
	b.Run("spool", func(b *testing.B) {
		s, err := spool.Open(b.TempDir(), spool.Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		t0 := time.Now()
		domains := max(spoolN/10, 1)
		if err := parallelFill(ctx, s, spoolN, domains, workers); err != nil {
			b.Fatal(err)
		}
		b.Logf("spool: %d messages over %d domains loaded in %v", spoolN, domains, time.Since(t0).Round(time.Millisecond))
		benchOps(b, s, domains)
	})
}

var (
	smallBody = []byte("From: s@bench.test\r\nSubject: queued\r\n\r\nqueued before the benchmark\r\n")
	bigBody   = func() []byte {
		b := []byte("From: s@bench.test\r\nSubject: bench\r\n\r\n")
		for len(b) < 10<<10 {
			b = append(b, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"...)
		}
		return b
	}()
)

type enqueueQueue interface {
	odmr.QueueSource
	Enqueue(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error)
}

// parallelFill queues n small messages over domains d0.bench... through
// q.Enqueue, from workers goroutines.
func parallelFill(ctx context.Context, q enqueueQueue, n, domains, workers int) error {
	var next atomic.Int64
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				env := odmr.Envelope{From: "s@bench.test", To: []string{fmt.Sprintf("u%d@d%d.bench", i, i%int64(domains))}}
				if _, err := q.Enqueue(ctx, env, bytes.NewReader(smallBody)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// benchOps measures each operation on q, whose domains d0.bench to
// d<domains-1>.bench have mail.
func benchOps(b *testing.B, q enqueueQueue, domains int) {
	ctx := context.Background()
	if qs, ok := q.(odmrtrace.QueueStatser); ok {
		// A few calls, not b.N: each reads every domain.
		var ds []time.Duration
		var n int
		for range 5 {
			t0 := time.Now()
			st, err := qs.QueueStats(ctx)
			if err != nil {
				b.Fatal(err)
			}
			ds, n = append(ds, time.Since(t0)), len(st)
		}
		slices.Sort(ds)
		b.Logf("QueueStats: %d domains in %v (median of 5; slowest %v)", n, ds[2].Round(time.Microsecond), ds[4].Round(time.Microsecond))
	}
	b.Run("enqueue", func(b *testing.B) {
		i := 0
		timed(b, func() {
			env := odmr.Envelope{From: "s@bench.test", To: []string{fmt.Sprintf("n%d@d%d.bench", i, i%domains)}}
			i++
			if _, err := q.Enqueue(ctx, env, bytes.NewReader(bigBody)); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("hasmail-yes", func(b *testing.B) {
		i := 0
		timed(b, func() {
			i++
			if ok, err := q.HasMail(ctx, []string{fmt.Sprintf("d%d.bench", (i*7919)%domains)}); err != nil || !ok {
				b.Fatalf("HasMail = %v, %v", ok, err)
			}
		})
	})
	b.Run("hasmail-no", func(b *testing.B) {
		i := 0
		timed(b, func() {
			i++
			if ok, err := q.HasMail(ctx, []string{fmt.Sprintf("x%d.bench", i)}); err != nil || ok {
				b.Fatalf("HasMail = %v, %v", ok, err)
			}
		})
	})
	b.Run("deliver", func(b *testing.B) {
		i := 0
		timed(b, func() {
			d := fmt.Sprintf("d%d.bench", (i*7919)%domains)
			i++
			batch, err := q.Claim(ctx, []string{d})
			if err != nil {
				b.Fatal(err)
			}
			defer batch.Close()
			m, err := batch.Next(ctx)
			if err != nil {
				b.Fatalf("Next(%s): %v", d, err)
			}
			rc, err := m.Open()
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, rc)
			rc.Close()
			var rs []odmr.RecipientResult
			for _, r := range m.Envelope().To {
				rs = append(rs, odmr.RecipientResult{Recipient: r})
			}
			if err := m.Complete(ctx, rs); err != nil {
				b.Fatal(err)
			}
		})
	})
}

// timed runs op b.N times and reports the median and 99th percentile.
func timed(b *testing.B, op func()) {
	var ds []time.Duration
	for b.Loop() {
		t0 := time.Now()
		op()
		ds = append(ds, time.Since(t0))
	}
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(ds[len(ds)*99/100].Microseconds()), "p99-µs")
}

// bulkLoad queues n small messages over domains d0.bench... with SQL, the
// way a restore would, rather than n Enqueue calls.
func bulkLoad(ctx context.Context, q *Queue, n, domains int) error {
	domains = max(domains, 1)
	for _, st := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO odmr_messages (id, sender, received, size) SELECT g, 's@bench.test', now(), $2 FROM generate_series(1, $1::int) g`, []any{n, len(smallBody)}},
		{`INSERT INTO odmr_recipients (message_id, n, addr, domain) SELECT g, 0, 'u' || g || '@d' || (g % $2::int) || '.bench', 'd' || (g % $2::int) || '.bench' FROM generate_series(1, $1::int) g`, []any{n, domains}},
		{`INSERT INTO odmr_pending (domain, message_id) SELECT 'd' || (g % $2::int) || '.bench', g FROM generate_series(1, $1::int) g`, []any{n, domains}},
		{`INSERT INTO odmr_body (message_id, n, data) SELECT g, 0, $2 FROM generate_series(1, $1::int) g`, []any{n, smallBody}},
		{`SELECT setval(pg_get_serial_sequence('odmr_messages', 'id'), $1::int)`, []any{n}},
	} {
		if _, err := q.pool.Exec(ctx, st.sql, st.args...); err != nil {
			return fmt.Errorf("bulk load: %w", err)
		}
	}
	// The counts the trigger wrote, one row a message, added up, and
	// their dead rows vacuumed, as autovacuum would before long.
	if err := q.compactStats(ctx); err != nil {
		return err
	}
	if _, err := q.pool.Exec(ctx, "VACUUM ANALYZE"); err != nil {
		return fmt.Errorf("bulk load: %w", err)
	}
	return nil
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
