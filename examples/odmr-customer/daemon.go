package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"
)

// daemon runs fetches one after another, like fetchmail -d: every apart
// after a success, and further apart after failures in a row.
type daemon struct {
	every      time.Duration // the wait after a success
	maxBackoff time.Duration // the longest wait after failures; at least every
	out        io.Writer     // a line per run
	// wake, when it delivers (SIGHUP), ends the wait before the next
	// fetch, as fetchmail's SIGUSR1 does; one during a fetch brings the
	// next forward. nil: never.
	wake <-chan os.Signal
	// jitter returns a random duration in [0, d); nil means math/rand.
	jitter func(d time.Duration) time.Duration
}

// run fetches until ctx ends, or a fetch reports a usage error, and
// returns the exit status: 0 after a stop by ctx.
func (d *daemon) run(ctx context.Context, fetch func(context.Context) int) int {
	failures := 0
	for n := 1; ; n++ {
		code := fetch(ctx)
		if ctx.Err() != nil {
			return exitMail
		}
		if code == exitUsage {
			fmt.Fprintf(d.out, "odmr-customer: run %d: usage or configuration error; stopping\n", n)
			return code
		}
		if code == exitMail || code == exitNoMail {
			failures = 0
		} else {
			failures++
		}
		wait := d.wait(failures)
		if failures == 0 {
			fmt.Fprintf(d.out, "odmr-customer: run %d ended with status %d; next in %v\n", n, code, wait)
		} else {
			fmt.Fprintf(d.out, "odmr-customer: run %d ended with status %d (%d failure(s) in a row); next in %v\n",
				n, code, failures, wait.Round(time.Second))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return exitMail
		case <-t.C:
		case <-d.wake:
			t.Stop()
			fmt.Fprintf(d.out, "odmr-customer: SIGHUP: fetching now\n")
		}
	}
}

// wait is the wait after failures failed runs in a row: every after a
// success; after failures, every doubled for each, capped at maxBackoff,
// then drawn between half and all of it.
func (d *daemon) wait(failures int) time.Duration {
	if failures == 0 {
		return d.every
	}
	w := d.every
	for range failures {
		if w >= d.maxBackoff/2 {
			w = d.maxBackoff
			break
		}
		w *= 2
	}
	w = min(w, d.maxBackoff)
	jitter := d.jitter
	if jitter == nil {
		jitter = func(d time.Duration) time.Duration { return rand.N(d) }
	}
	half := w / 2
	if half <= 0 {
		return w
	}
	return w - half + jitter(half)
}
