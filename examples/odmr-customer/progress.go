package main

import (
	"log/slog"
	"math"
	"sync"
	"time"
)

// progress reports on a fetch that runs long: every interval while it
// runs, a line with the messages the local target took so far, their
// bytes and the rate. A fetch shorter than the interval prints none.
type progress struct {
	every time.Duration // 0: no report
	log   *slog.Logger

	mu       sync.Mutex
	start    time.Time
	messages int
	bytes    int64
}

// set sets the counts to those of the fetch so far, as
// odmr.Customer.Progress reports them.
func (p *progress) set(messages int, bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.messages, p.bytes = messages, bytes
}

// begin starts counting for a fetch, and reporting every p.every; the
// function it returns stops the reports and waits for them to end.
func (p *progress) begin() (end func()) {
	p.mu.Lock()
	p.start, p.messages, p.bytes = time.Now(), 0, 0
	p.mu.Unlock()
	if p.every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(p.every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.report()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// report logs the counts so far.
func (p *progress) report() {
	p.mu.Lock()
	elapsed, messages, bytes := time.Since(p.start), p.messages, p.bytes
	p.mu.Unlock()
	secs := max(elapsed.Seconds(), 1e-3)
	p.log.Info("odmr-customer: fetch in progress", "messages", messages, "bytes", bytes,
		"elapsed", elapsed.Round(max(p.every/10, time.Millisecond)),
		"msg_per_s", math.Round(float64(messages)/secs*10)/10, "bytes_per_s", int64(float64(bytes)/secs))
}
