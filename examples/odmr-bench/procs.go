package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/go-odmr/odmr"
)

// procsResult is what a server child of the procs figure reports once
// told to stop.
type procsResult struct {
	Messages int
	Err      string
}

// throughputProcs is the throughput figure with each end in a process of
// its own, as the two roles run on two hosts: the provider, or go-smtp's
// server, in a child; the customer, or go-smtp's client, in this
// process. With both ends in one process, as in the throughput figure,
// every hand-off between them is the one scheduler's work, which a
// protocol that keeps both ends busy at once (pipelining) pays for and a
// lock-step one, whose ends take turns on one thread, does not.
func throughputProcs() ([]row, error) {
	bodies := make([][]byte, *nMsgs)
	for i := range bodies {
		bodies[i] = messageBody(*msgSize, i)
	}
	type side struct {
		name, role, mode string
		rates            []float64
	}
	sides := []*side{
		{name: "go-smtp", role: "procs-gosmtp-server"},
		{name: "ODMR, O(1) queue, pipelined DATA", role: "procs-provider", mode: "DATA"},
		{name: "ODMR, O(1) queue, pipelined BDAT", role: "procs-provider", mode: "BDAT"},
	}
	for range *runs {
		for _, s := range sides {
			srv, err := startChild(s.role, "-n", strconv.Itoa(*nMsgs), "-size", strconv.Itoa(*msgSize), "-mode", s.mode)
			if err != nil {
				return nil, err
			}
			addr, err := srv.expect("ADDR")
			if err != nil {
				srv.wait() // closes its standard input first
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			start := time.Now()
			if s.role == "procs-gosmtp-server" {
				err = sendGoSMTP(addr, bodies)
			} else {
				sink := &countSink{}
				var res *odmr.FetchResult
				res, err = newCustomer(addr, sink).Fetch(context.Background())
				if err == nil && (res.Messages != len(bodies) || sink.n != len(bodies)) {
					err = fmt.Errorf("fetched %d messages, the sink got %d, want %d", res.Messages, sink.n, len(bodies))
				}
			}
			d := time.Since(start)
			srv.in.Close()
			var r procsResult
			if rerr := srv.result(&r); err == nil && rerr != nil {
				err = rerr
			}
			srv.wait()
			if err == nil && r.Err != "" {
				err = fmt.Errorf("%s", r.Err)
			}
			if err == nil && r.Messages != len(bodies) {
				err = fmt.Errorf("the server side handled %d messages, want %d", r.Messages, len(bodies))
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			s.rates = append(s.rates, float64(*nMsgs)/d.Seconds())
		}
	}
	base := median(sides[0].rates)
	var rows []row
	for _, s := range sides[1:] {
		r := median(s.rates)
		rows = append(rows, row{
			figure:   fmt.Sprintf("%d × %d B, each end a process: %s", *nMsgs, *msgSize, s.name),
			odmr:     fmt.Sprintf("%.0f msg/s", r),
			baseline: fmt.Sprintf("%.0f msg/s", base),
			ratio:    ratio(r, base),
			note:     fmt.Sprintf("median of %d runs; baseline: go-smtp client and server, each a process", *runs),
		})
	}
	return rows, nil
}

// procsServerChild serves the server end of a procs run: a provider with
// -n messages of -size bytes queued, or go-smtp's server; it prints its
// address, and when its standard input ends, a procsResult.
func procsServerChild(role string) error {
	var r procsResult
	var stop func()
	if role == "procs-provider" {
		chunking = *childMode == "BDAT"
		q := newListQueue()
		for i := range *nMsgs {
			b := messageBody(*msgSize, i)
			q.add(odmr.Envelope{ID: fmt.Sprint(i), From: "sender@x.bench", To: []string{fmt.Sprintf("u%d@%s", i, benchDomain)}, Size: int64(len(b))},
				func() io.Reader { return bytes.NewReader(b) })
		}
		p := newProvider(q)
		addr, err := serveProvider(p)
		if err != nil {
			return err
		}
		fmt.Printf("ADDR %s\n", addr)
		stop = func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p.Shutdown(ctx)
			q.mu.Lock()
			defer q.mu.Unlock()
			for _, m := range q.msgs {
				if len(m.res) == 1 && m.res[0].Err == nil {
					r.Messages++
				}
			}
		}
	} else {
		b := &goSMTPBackend{}
		srv, addr, err := serveGoSMTP(b)
		if err != nil {
			return err
		}
		fmt.Printf("ADDR %s\n", addr)
		stop = func() {
			srv.Close()
			b.mu.Lock()
			r.Messages = b.n
			b.mu.Unlock()
		}
	}
	readCommand(bufio.NewScanner(os.Stdin)) // until the parent is done
	stop()
	printResult(r)
	return nil
}
