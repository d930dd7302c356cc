package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/spool"
)

var (
	queueSizes   = flag.String("queue-sizes", "0,1000,10000", "queue: messages queued in the spool, comma-separated")
	queuePerDom  = flag.Int("queue-per-domain", 10, "queue: messages per domain")
	queueWorkers = flag.Int("queue-workers", 32, "queue: parallel Enqueue calls while filling")
	queueDir     = flag.String("queue-dir", "", "queue: directory for the spools (default: a temporary directory)")
)

// queueResult is what the queue-spool child measures.
type queueResult struct {
	OpenMS     float64 // Open returned: the provider can listen
	IndexedMS  float64 // the spool's index is complete (WaitIndexed)
	RSS, Heap  int64   // growth after Open and the index, settled
	HasMailP50 float64 // µs, ATRN's question to the queue, domains with mail
	HasMailP99 float64
	SessionMS  float64 // one ATRN session over loopback TCP, benchDomain's mail
	Delivered  int
}

// queueScaling measures the spool with *queueSizes messages queued, each
// size filled through spool.Enqueue and measured in a fresh process, and
// compares each with the empty spool. spool's TestQueueScaling measures
// the same with a million messages, which it writes directly in the
// spool's format: through Enqueue, four fsyncs a message, that takes
// hours.
func queueScaling() ([]row, error) {
	base := *queueDir
	if base == "" {
		d, err := os.MkdirTemp("", "odmr-bench-queue")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		base = d
	}
	var rows []row
	var empty *queueResult
	for _, f := range strings.Split(*queueSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return rows, err
		}
		dir := filepath.Join(base, fmt.Sprintf("spool-%d", n))
		fillStart := time.Now()
		if err := fillQueue(dir, n); err != nil {
			return rows, err
		}
		fill := time.Since(fillStart)
		c, err := startChild("queue-spool", "-addr", dir, "-queue-per-domain", strconv.Itoa(*queuePerDom))
		if err != nil {
			return rows, err
		}
		var r queueResult
		err = c.result(&r)
		if werr := c.wait(); err == nil {
			err = werr
		}
		os.RemoveAll(dir)
		if err != nil {
			return rows, err
		}
		if r.Delivered != *queuePerDom {
			return rows, fmt.Errorf("%d queued: the session delivered %d messages, want %d", n, r.Delivered, *queuePerDom)
		}
		if empty == nil {
			e := r
			empty = &e
		}
		rows = append(rows, queueRows(n, &r, empty, fill)...)
	}
	return rows, nil
}

func queueRows(n int, r, empty *queueResult, fill time.Duration) []row {
	ms := func(v float64) string { return fmt.Sprintf("%.1f ms", v) }
	us := func(v float64) string { return fmt.Sprintf("%.0f µs", v) }
	ratio := func(a, b float64) float64 {
		if n == 0 || b == 0 {
			return 0
		}
		return a / b
	}
	perMsg := "-"
	if n > 0 {
		perMsg = fmt.Sprintf("%d B RSS, %d B heap", r.RSS/int64(n), r.Heap/int64(n))
	}
	q := fmt.Sprintf("%d queued: ", n)
	return []row{
		{figure: q + "Open returns (listening)", odmr: ms(r.OpenMS), baseline: ms(empty.OpenMS), ratio: ratio(r.OpenMS, empty.OpenMS),
			note: fmt.Sprintf("filled through Enqueue in %v", fill.Round(time.Millisecond))},
		{figure: q + "index complete (WaitIndexed)", odmr: ms(r.IndexedMS), baseline: ms(empty.IndexedMS), ratio: ratio(r.IndexedMS, empty.IndexedMS)},
		{figure: q + "memory per queued message", odmr: perMsg, note: "after GC"},
		{figure: q + "HasMail, median / p99", odmr: us(r.HasMailP50) + " / " + us(r.HasMailP99), baseline: us(empty.HasMailP50) + " / " + us(empty.HasMailP99),
			ratio: ratio(r.HasMailP50, empty.HasMailP50)},
		{figure: q + fmt.Sprintf("one ATRN session, %d messages", r.Delivered), odmr: ms(r.SessionMS), baseline: ms(empty.SessionMS), ratio: ratio(r.SessionMS, empty.SessionMS)},
	}
}

// queueDomain is the domain of the i-th message filling the spool; the
// customer's own domain gets its *queuePerDom messages last.
func queueDomain(i int) string { return fmt.Sprintf("d%d.queue.bench", i / *queuePerDom) }

// fillQueue queues n messages for other domains, and *queuePerDom for
// benchDomain, in a new spool in dir.
func fillQueue(dir string, n int) error {
	s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1, Logger: discardLogger})
	if err != nil {
		return err
	}
	defer s.Close()
	body := messageBody(1<<10, 0)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, *queueWorkers)
	total := n + *queuePerDom
	for range *queueWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				to := "u@" + benchDomain
				if i < n {
					to = "u@" + queueDomain(i)
				}
				env := odmr.Envelope{From: "s@origin.bench", To: []string{to}}
				if _, err := s.Enqueue(context.Background(), env, bytes.NewReader(body)); err != nil {
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

// queueSpoolChild opens the spool in *childAddr and measures it.
func queueSpoolChild() error {
	dir := *childAddr
	names, err := os.ReadDir(filepath.Join(dir, "queue"))
	if err != nil {
		return err
	}
	n := len(names)/2 - *queuePerDom
	before := settledMemory()
	ctx := context.Background()
	var r queueResult
	t0 := time.Now()
	s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1, Logger: discardLogger})
	if err != nil {
		return err
	}
	defer s.Close()
	r.OpenMS = msSince(t0)
	if err := s.WaitIndexed(ctx); err != nil {
		return err
	}
	r.IndexedMS = msSince(t0)
	after := settledMemory()
	r.RSS, r.Heap = after.VmRSS-before.VmRSS, int64(after.HeapInuse)-int64(before.HeapInuse)

	rng := rand.New(rand.NewPCG(1, 2))
	lat := make([]float64, 1000)
	for i := range lat {
		d := benchDomain
		if n > 0 {
			d = queueDomain(rng.IntN(n))
		}
		t1 := time.Now()
		has, err := s.HasMail(ctx, []string{d})
		lat[i] = float64(time.Since(t1).Nanoseconds()) / 1000
		if err != nil {
			return err
		}
		if !has {
			return fmt.Errorf("HasMail(%s) = false", d)
		}
	}
	slices.Sort(lat)
	r.HasMailP50, r.HasMailP99 = lat[len(lat)/2], lat[len(lat)*99/100]

	p := newProvider(s)
	addr, err := serveProvider(p)
	if err != nil {
		return err
	}
	defer p.Close()
	sink := &countSink{}
	t1 := time.Now()
	res, err := newCustomer(addr, sink).Fetch(ctx)
	r.SessionMS = msSince(t1)
	if err != nil {
		return err
	}
	if res.NoMail {
		return errors.New("the provider had no mail")
	}
	r.Delivered = sink.n
	printResult(r)
	return nil
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }
