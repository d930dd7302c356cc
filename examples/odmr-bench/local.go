package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"syscall"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/smtpsink"
)

// localDelivery fetches *nMsgs messages of *msgSize bytes into a local
// go-smtp server, through the customer's smtpsink (odmr-customer -smtp)
// and through odmr.Relay (odmr-customer -relay), the baseline; and, for
// the record, through smtpsink used as a plain MessageSink, which opens
// two local sessions per message. Every side runs in this process,
// provider and local server included, so the CPU figures are the whole
// path's; only the customer's part differs between them.
func localDelivery() ([]row, error) {
	bodies := make([][]byte, *nMsgs)
	for i := range bodies {
		bodies[i] = messageBody(*msgSize, i)
	}
	type side struct {
		name       string
		handler    func(addr string) (odmr.MessageSink, odmr.Handler)
		rates, cpu []float64
	}
	sides := []*side{
		{name: "-relay", handler: func(addr string) (odmr.MessageSink, odmr.Handler) { return nil, odmr.Relay(addr) }},
		{name: "-smtp (smtpsink, one session per fetch)", handler: func(addr string) (odmr.MessageSink, odmr.Handler) { return smtpsink.New(addr), nil }},
		{name: "smtpsink as a plain MessageSink (two sessions per message)", handler: func(addr string) (odmr.MessageSink, odmr.Handler) {
			return plainSink{smtpsink.New(addr)}, nil
		}},
	}
	err := profile(func() error {
		for range *runs {
			for _, s := range sides {
				d, cpu, err := relayLocal(bodies, s.handler)
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				s.rates = append(s.rates, float64(*nMsgs)/d.Seconds())
				s.cpu = append(s.cpu, cpu.Seconds()/float64(*nMsgs))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	base, baseCPU := median(sides[0].rates), median(sides[0].cpu)
	var rows []row
	for _, s := range sides[1:] {
		r, cpu := median(s.rates), median(s.cpu)
		rows = append(rows,
			row{
				figure:   fmt.Sprintf("%d × %d B into a local server: %s", *nMsgs, *msgSize, s.name),
				odmr:     fmt.Sprintf("%.0f msg/s", r),
				baseline: fmt.Sprintf("%.0f msg/s (-relay)", base),
				ratio:    r / base,
				note:     fmt.Sprintf("median of %d runs", *runs),
			},
			row{
				figure:   "  CPU per message, whole process",
				odmr:     fmt.Sprintf("%.0f µs", cpu*1e6),
				baseline: fmt.Sprintf("%.0f µs (-relay)", baseCPU*1e6),
				ratio:    cpu / baseCPU,
				note:     "provider and local server included",
			})
	}
	return rows, nil
}

// plainSink hides smtpsink.Sink's Begin: the customer then calls
// CheckRecipient and Deliver, each with a local session of its own.
type plainSink struct{ s *smtpsink.Sink }

func (p plainSink) Deliver(ctx context.Context, env odmr.Envelope, body io.Reader) error {
	return p.s.Deliver(ctx, env, body)
}

func (p plainSink) CheckRecipient(ctx context.Context, env odmr.Envelope, rcpt string) error {
	return p.s.CheckRecipient(ctx, env, rcpt)
}

func (p plainSink) PassesDSN() bool { return p.s.PassesDSN() }

func (p plainSink) ProbeDSN(ctx context.Context) (bool, error) { return p.s.ProbeDSN(ctx) }

// relayLocal queues the bodies at a provider and times a customer's
// fetch of all of them into a local go-smtp server, with the process's
// CPU time.
func relayLocal(bodies [][]byte, handler func(addr string) (odmr.MessageSink, odmr.Handler)) (time.Duration, time.Duration, error) {
	lq := newListQueue()
	for i, b := range bodies {
		lq.add(odmr.Envelope{ID: fmt.Sprint(i), From: "sender@x.bench", To: []string{fmt.Sprintf("u%d@%s", i, benchDomain)}, Size: int64(len(b))},
			func() io.Reader { return bytes.NewReader(b) })
	}
	p := newProvider(lq)
	addr, err := serveProvider(p)
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	local := &goSMTPBackend{}
	srv, localAddr, err := serveGoSMTP(local)
	if err != nil {
		return 0, 0, err
	}
	defer srv.Close()
	c := newCustomer(addr, nil)
	c.Sink, c.Handler = handler(localAddr)
	runtime.GC()
	cpu0 := cpuTime()
	start := time.Now()
	_, err = c.Fetch(context.Background())
	d := time.Since(start)
	cpu := cpuTime() - cpu0
	if err != nil {
		return 0, 0, err
	}
	local.mu.Lock()
	defer local.mu.Unlock()
	if local.n != len(bodies) {
		return 0, 0, fmt.Errorf("the local server got %d messages, want %d", local.n, len(bodies))
	}
	return d, cpu, nil
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
