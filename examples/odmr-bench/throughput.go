package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
)

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
	var total int64
	for _, b := range bodies {
		total += int64(len(b))
	}
	err := profile(func() error {
		for range *runs {
			for _, s := range sides {
				d, err := s.run()
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				s.rates = append(s.rates, float64(*nMsgs)/d.Seconds())
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	base := median(sides[0].rates)
	var rows []row
	for _, s := range sides[1:] {
		r := median(s.rates)
		rows = append(rows, row{
			figure:   fmt.Sprintf("%d × %d B: %s", *nMsgs, *msgSize, s.name),
			odmr:     fmt.Sprintf("%.0f msg/s %.1f MB/s", r, r*float64(total)/float64(*nMsgs)/1e6),
			baseline: fmt.Sprintf("%.0f msg/s %.1f MB/s", base, base*float64(total)/float64(*nMsgs)/1e6),
			ratio:    r / base,
			note:     fmt.Sprintf("median of %d runs", *runs),
		})
	}
	return rows, nil
}

// relayODMR queues the bodies at a provider and times a customer's
// fetch of all of them.
func relayODMR(bodies [][]byte, memQueue bool) (time.Duration, error) {
	var q odmr.QueueSource
	if memQueue {
		mq := &odmr.MemoryQueue{}
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
	c, err := smtp.Dial(addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.Hello("client.bench"); err != nil {
		return 0, err
	}
	for i, body := range bodies {
		if err := c.Mail("sender@x.bench", &smtp.MailOptions{Size: int64(len(body))}); err != nil {
			return 0, err
		}
		if err := c.Rcpt(fmt.Sprintf("u%d@%s", i, benchDomain), nil); err != nil {
			return 0, err
		}
		w, err := c.Data()
		if err != nil {
			return 0, err
		}
		if _, err := w.Write(body); err != nil {
			return 0, err
		}
		if err := w.Close(); err != nil {
			return 0, err
		}
	}
	if err := c.Quit(); err != nil {
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
