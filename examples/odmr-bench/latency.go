package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/memqueue"
)

// latency delivers the same messages through a proxy that delays each
// direction by *delay, with the customer's PIPELINING and CHUNKING hidden
// from the provider or not, and compares time and outcomes.
func latency() ([]row, error) {
	modes := []struct {
		name string
		hide []string
	}{
		{"plain (no PIPELINING)", []string{"PIPELINING", "CHUNKING"}},
		{"pipelined DATA", []string{"CHUNKING"}},
		{"pipelined BDAT", nil},
	}
	chunking = true
	defer func() { chunking = false }()
	type result struct {
		took     time.Duration
		outcomes map[string]string
		err      error
	}
	results := make([]result, len(modes))
	var wg sync.WaitGroup
	for i, m := range modes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			r.took, r.outcomes, r.err = latencyRun(m.hide)
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			return nil, fmt.Errorf("%s: %w", modes[i].name, r.err)
		}
	}
	rtt := 2 * *delay
	perMsg := func(d time.Duration) float64 { return d.Seconds() / rtt.Seconds() / float64(*latencyN) }
	plain := results[0]
	var rows []row
	for i, r := range results[1:] {
		same := "identical per-recipient outcomes"
		if diff := diffOutcomes(plain.outcomes, r.outcomes); diff != "" {
			same = "OUTCOMES DIFFER: " + diff
		}
		rows = append(rows, row{
			figure:   fmt.Sprintf("%d × %d B, %v each way: %s vs plain", *latencyN, *msgSize, *delay, modes[i+1].name),
			odmr:     fmt.Sprintf("%.2f RTT/msg (%.1fs)", perMsg(r.took), r.took.Seconds()),
			baseline: fmt.Sprintf("%.2f RTT/msg (%.1fs)", perMsg(plain.took), plain.took.Seconds()),
			ratio:    perMsg(r.took) / perMsg(plain.took),
			note:     same,
		})
	}
	rows = append(rows, row{figure: "outcomes (plain run)", odmr: summarize(plain.outcomes)})
	return rows, nil
}

// latencySink refuses recipients whose local part starts with "perm"
// (550) or "temp" (450), and bodies that contain REJECT-PERM (554) or
// REJECT-TEMP (451).
type latencySink struct{}

func (latencySink) CheckRecipient(_ context.Context, _ odmr.Envelope, rcpt string) error {
	switch {
	case strings.HasPrefix(rcpt, "perm"):
		return &odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "No such user"}
	case strings.HasPrefix(rcpt, "temp"):
		return &odmr.Error{Code: 450, EnhancedCode: odmr.EnhancedCode{4, 2, 1}, Message: "Mailbox busy"}
	}
	return nil
}

func (latencySink) Deliver(_ context.Context, _ odmr.Envelope, body io.Reader) error {
	b, err := io.ReadAll(body)
	switch {
	case err != nil:
		return err
	case bytes.Contains(b, []byte("REJECT-PERM")):
		return &odmr.Error{Code: 554, EnhancedCode: odmr.EnhancedCode{5, 7, 1}, Message: "Content refused"}
	case bytes.Contains(b, []byte("REJECT-TEMP")):
		return &odmr.Error{Code: 451, EnhancedCode: odmr.EnhancedCode{4, 3, 0}, Message: "Try again later"}
	}
	return nil
}

// latencyMessages are the same messages for each mode: some with
// recipients that are refused, some with every recipient refused, some
// whose content is refused.
func latencyMessages(q *memqueue.Queue) error {
	for i := range *latencyN {
		to := []string{fmt.Sprintf("u%d@%s", i, benchDomain)}
		if i%10 == 3 {
			to = append(to, fmt.Sprintf("perm%d@%s", i, benchDomain))
		}
		if i%15 == 4 {
			to = append(to, fmt.Sprintf("temp%d@%s", i, benchDomain))
		}
		if i%25 == 7 {
			to = []string{fmt.Sprintf("perm%d@%s", i, benchDomain)}
		}
		body := messageBody(*msgSize, i)
		switch {
		case i%20 == 5:
			body = bytes.Replace(body, []byte("Subject:"), []byte("X-Test: REJECT-PERM\r\nSubject:"), 1)
		case i%30 == 11:
			body = bytes.Replace(body, []byte("Subject:"), []byte("X-Test: REJECT-TEMP\r\nSubject:"), 1)
		}
		if _, err := q.Enqueue(odmr.Envelope{From: "sender@x.bench", To: to}, bytes.NewReader(body)); err != nil {
			return err
		}
	}
	return nil
}

// outcomeQueue records each recipient's result.
type outcomeQueue struct {
	odmr.QueueSource
	mu       sync.Mutex
	outcomes map[string]string
}

func (q *outcomeQueue) Claim(ctx context.Context, domains []string) (odmr.Batch, error) {
	b, err := q.QueueSource.Claim(ctx, domains)
	return outcomeBatch{b, q}, err
}

type outcomeBatch struct {
	odmr.Batch
	q *outcomeQueue
}

func (b outcomeBatch) Next(ctx context.Context) (odmr.Message, error) {
	m, err := b.Batch.Next(ctx)
	if err != nil {
		return nil, err
	}
	return outcomeMessage{m, b.q}, nil
}

type outcomeMessage struct {
	odmr.Message
	q *outcomeQueue
}

func (m outcomeMessage) Complete(ctx context.Context, results []odmr.RecipientResult) error {
	m.q.mu.Lock()
	for _, r := range results {
		class := "delivered"
		if e := odmr.AsError(r.Err); e != nil {
			class = fmt.Sprintf("%d %s %s", e.Code, e.EnhancedCode, e.Message)
		} else if r.Err != nil {
			class = "error " + r.Err.Error()
		}
		m.q.outcomes[m.Envelope().ID+" "+r.Recipient] = class
	}
	m.q.mu.Unlock()
	return m.Message.Complete(ctx, results)
}

func latencyRun(hide []string) (time.Duration, map[string]string, error) {
	mq := &memqueue.Queue{}
	if err := latencyMessages(mq); err != nil {
		return 0, nil, err
	}
	q := &outcomeQueue{QueueSource: mq, outcomes: map[string]string{}}
	p := newProvider(q)
	p.ReplyTimeout = time.Minute
	addr, err := serveProvider(p)
	if err != nil {
		return 0, nil, err
	}
	defer p.Close()
	proxy, err := newDelayProxy(addr, *delay, hide)
	if err != nil {
		return 0, nil, err
	}
	defer proxy.Close()
	c := newCustomer(proxy.Addr().String(), latencySink{})
	start := time.Now()
	res, err := c.Fetch(context.Background())
	took := time.Since(start)
	if err != nil {
		return 0, nil, err
	}
	if res.NoMail {
		return 0, nil, fmt.Errorf("no mail")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return took, q.outcomes, nil
}

func diffOutcomes(a, b map[string]string) string {
	var diffs []string
	for k, v := range a {
		if b[k] != v {
			diffs = append(diffs, fmt.Sprintf("%s: %q vs %q", k, v, b[k]))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: missing vs %q", k, v))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 3 {
		diffs = append(diffs[:3], fmt.Sprintf("and %d more", len(diffs)-3))
	}
	return strings.Join(diffs, "; ")
}

func summarize(o map[string]string) string {
	count := map[string]int{}
	for _, v := range o {
		code, _, _ := strings.Cut(v, " ")
		count[code]++
	}
	var keys []string
	for k := range count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, count[k]))
	}
	return strings.Join(parts, ", ")
}

// delayProxy forwards connections to a target, delaying the bytes in
// each direction, and hides extensions from the provider by rewriting
// them in the customer's replies ("PIPELINING" becomes "XIPELINING").
type delayProxy struct {
	net.Listener
}

func newDelayProxy(target string, d time.Duration, hide []string) (*delayProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	var words [][]byte
	for _, h := range hide {
		words = append(words, []byte(h))
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go delayCopy(t, c, d, words) // customer → provider
			go delayCopy(c, t, d, nil)   // provider → customer
		}
	}()
	return &delayProxy{l}, nil
}

var traceStart time.Time

// delayCopy copies src to dst, each chunk d after it was read.
func delayCopy(dst, src net.Conn, d time.Duration, hide [][]byte) {
	type chunk struct {
		at time.Time
		b  []byte
	}
	ch := make(chan chunk, 1<<16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range ch {
			time.Sleep(time.Until(c.at))
			if !traceStart.IsZero() {
				x := string(c.b)
				if len(x) > 50 {
					x = x[:50]
				}
				fmt.Printf("%7.1fms write %s -> %s %q\n", float64(time.Since(traceStart).Microseconds())/1000, src.RemoteAddr(), dst.RemoteAddr(), x)
			}
			if _, err := dst.Write(c.b); err != nil {
				src.Close()
				for range ch {
				}
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			b := append([]byte(nil), buf[:n]...)
			for _, h := range hide {
				for i := bytes.Index(b, h); i >= 0; i = bytes.Index(b, h) {
					b[i] = 'X'
				}
			}
			ch <- chunk{time.Now().Add(d), b}
		}
		if err != nil {
			break
		}
	}
	close(ch)
	<-done
}
