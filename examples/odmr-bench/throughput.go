package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/memqueue"
)

// throughputOnly picks the sides of a throughput run, for a profile or an
// strace of one of them.
var throughputOnly = flag.String("throughput-only", "", "throughput: run only the sides whose name matches this regular expression (go-smtp is the baseline; without it the ratios are 0)")

// throughput relays *nMsgs messages of *msgSize bytes provider →
// customer → sink, and go-smtp client → go-smtp server.
func throughput() ([]row, error) {
	bodies := make([][]byte, *nMsgs)
	for i := range bodies {
		bodies[i] = messageBody(*msgSize, i)
	}
	type side struct {
		name  string
		run   func() (time.Duration, error)
		rates []float64
		cpus  []float64 // CPU time per message, both ends, in µs
	}
	odmrRun := func(memQueue, bdat bool) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			chunking = bdat
			defer func() { chunking = false }()
			return relayODMR(bodies, memQueue)
		}
	}
	sides := []*side{
		{name: "go-smtp", run: func() (time.Duration, error) { return relayGoSMTP(bodies) }},
		{name: "ODMR, MemoryQueue, pipelined DATA", run: odmrRun(true, false)},
		{name: "ODMR, O(1) queue, pipelined DATA", run: odmrRun(false, false)},
		{name: "ODMR, O(1) queue, pipelined BDAT", run: odmrRun(false, true)},
	}
	if *throughputOnly != "" {
		re, err := regexp.Compile(*throughputOnly)
		if err != nil {
			return nil, err
		}
		sides = slices.DeleteFunc(sides, func(s *side) bool { return !re.MatchString(s.name) })
	}
	var base *side
	if len(sides) > 0 && sides[0].name == "go-smtp" {
		base, sides = sides[0], sides[1:]
	}
	all := sides
	if base != nil {
		all = append([]*side{base}, sides...)
	}
	var total int64
	for _, b := range bodies {
		total += int64(len(b))
	}
	err := profile(func() error {
		for range *runs {
			for _, s := range all {
				before := cpuTime()
				var d time.Duration
				var err error
				// The label names the side in a -cpuprofile, without
				// the commas that pprof's -tagfocus takes for a list
				// (-tagfocus 'side=O.1. queue pipelined DATA'); the
				// goroutines a run starts inherit it.
				label := strings.ReplaceAll(s.name, ",", "")
				pprof.Do(context.Background(), pprof.Labels("side", label), func(context.Context) {
					d, err = s.run()
				})
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				s.rates = append(s.rates, float64(*nMsgs)/d.Seconds())
				s.cpus = append(s.cpus, float64((cpuTime()-before).Microseconds())/float64(*nMsgs))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if base == nil {
		base = &side{}
	}
	var rows []row
	for _, s := range sides {
		r, b := median(s.rates), median(base.rates)
		rows = append(rows, row{
			figure:   fmt.Sprintf("%d × %d B: %s", *nMsgs, *msgSize, s.name),
			odmr:     fmt.Sprintf("%.0f msg/s %.1f MB/s", r, r*float64(total)/float64(*nMsgs)/1e6),
			baseline: fmt.Sprintf("%.0f msg/s %.1f MB/s", b, b*float64(total)/float64(*nMsgs)/1e6),
			ratio:    ratio(r, b),
			note:     fmt.Sprintf("median of %d runs; CPU %.0f µs/msg vs %.0f", *runs, median(s.cpus), median(base.cpus)),
		})
	}
	return rows, nil
}

// relayODMR queues the bodies at a provider and times a customer's
// fetch of all of them.
func relayODMR(bodies [][]byte, memQueue bool) (time.Duration, error) {
	var q odmr.QueueSource
	if memQueue {
		mq := &memqueue.Queue{}
		for i, b := range bodies {
			if _, err := mq.Enqueue(odmr.Envelope{From: "sender@x.bench", To: []string{fmt.Sprintf("u%d@%s", i, benchDomain)}}, bytes.NewReader(b)); err != nil {
				return 0, err
			}
		}
		q = mq
	} else {
		lq := newListQueue()
		for i, b := range bodies {
			lq.add(odmr.Envelope{ID: fmt.Sprint(i), From: "sender@x.bench", To: []string{fmt.Sprintf("u%d@%s", i, benchDomain)}, Size: int64(len(b))},
				func() io.Reader { return bytes.NewReader(b) })
		}
		q = lq
	}
	p := newProvider(q)
	addr, err := serveProvider(p)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	sink := &countSink{}
	c := newCustomer(addr, sink)
	runtime.GC() // not the garbage of queueing
	start := time.Now()
	res, err := c.Fetch(context.Background())
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	if res.Messages != len(bodies) || sink.n != len(bodies) {
		return 0, fmt.Errorf("fetched %d messages, the sink got %d, want %d", res.Messages, sink.n, len(bodies))
	}
	return d, nil
}

// relayGoSMTP sends the bodies with go-smtp's client to go-smtp's server
// over one connection.
func relayGoSMTP(bodies [][]byte) (time.Duration, error) {
	b := &goSMTPBackend{}
	srv, addr, err := serveGoSMTP(b)
	if err != nil {
		return 0, err
	}
	defer srv.Close()
	runtime.GC()
	start := time.Now()
	if err := sendGoSMTP(addr, bodies); err != nil {
		return 0, err
	}
	d := time.Since(start)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n != len(bodies) {
		return 0, fmt.Errorf("the server got %d messages, want %d", b.n, len(bodies))
	}
	return d, nil
}

// ratio is r/b, 0 without a baseline.
func ratio(r, b float64) float64 {
	if b == 0 {
		return 0
	}
	return r / b
}

// sendGoSMTP sends the bodies with go-smtp's client over one connection
// to addr, one command at a time.
func sendGoSMTP(addr string, bodies [][]byte) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.bench"); err != nil {
		return err
	}
	for i, body := range bodies {
		if err := c.Mail("sender@x.bench", &smtp.MailOptions{Size: int64(len(body))}); err != nil {
			return err
		}
		if err := c.Rcpt(fmt.Sprintf("u%d@%s", i, benchDomain), nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write(body); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
	}
	return c.Quit()
}
