package odmr

// Benchmarks of the delivery path and of sessions; they run only with
// -bench. examples/odmr-bench measures the end-to-end figures of
// BENCHMARKS.md.
//
//	go test -run '^$' -bench . -benchmem
//	go test -run '^$' -bench 'Deliver/pipelined-BDAT' -cpuprofile cpu.prof -memprofile mem.prof

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/go-odmr/odmr/internal/saslmech"
	"github.com/go-odmr/odmr/internal/smtptest"
)

// benchBody is a 10 KiB message of 78-byte lines, some starting with a
// dot.
var benchBody = func() []byte {
	var b bytes.Buffer
	b.WriteString("From: sender@x.test\r\nTo: rcpt@example.org\r\nSubject: benchmark\r\n\r\n")
	for i := 0; b.Len() < 10<<10-80; i++ {
		if i%50 == 0 {
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "line %05d: the quick brown fox jumps over the lazy dog 0123456789\r\n", i)
	}
	b.WriteString(strings.Repeat("x", 10<<10-b.Len()-2) + "\r\n")
	return b.Bytes()
}()

// sliceQueue hands out prepared messages in order, at no cost, so that
// a benchmark measures the delivery path and not the queue.
type sliceQueue struct {
	msgs []*sliceMsg
	next int
}

type sliceMsg struct {
	env  Envelope
	body []byte
	res  []RecipientResult
}

func (q *sliceQueue) HasMail(context.Context, []string) (bool, error) {
	return q.next < len(q.msgs), nil
}
func (q *sliceQueue) Claim(context.Context, []string) (Batch, error) { return q, nil }
func (q *sliceQueue) Next(context.Context) (Message, error) {
	if q.next == len(q.msgs) {
		return nil, io.EOF
	}
	q.next++
	return q.msgs[q.next-1], nil
}
func (q *sliceQueue) Close() error               { return nil }
func (m *sliceMsg) Envelope() Envelope           { return m.env }
func (m *sliceMsg) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(m.body)), nil }
func (m *sliceMsg) Complete(_ context.Context, r []RecipientResult) error {
	m.res = r
	return nil
}

func newSliceQueue(n int, body []byte) *sliceQueue {
	q := &sliceQueue{msgs: make([]*sliceMsg, n)}
	for i := range q.msgs {
		q.msgs[i] = &sliceMsg{
			env:  Envelope{ID: fmt.Sprint(i), From: "sender@x.test", To: []string{fmt.Sprintf("u%d@example.org", i)}, Size: int64(len(body))},
			body: body,
		}
	}
	return q
}

// discardBackend is a go-smtp backend that reads and drops every message.
type discardBackend struct{}

func (discardBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return discardSession{}, nil }

type discardSession struct{}

func (discardSession) Mail(string, *smtp.MailOptions) error { return nil }
func (discardSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (discardSession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}
func (discardSession) Reset()        {}
func (discardSession) Logout() error { return nil }
func (discardSession) AuthMechanisms() []string {
	return []string{sasl.Plain}
}
func (discardSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(string, string, string) error { return nil }), nil
}

type silentLog struct{}

func (silentLog) Printf(string, ...any) {}
func (silentLog) Println(...any)        {}

// benchSink runs a go-smtp server that drops what it gets, on loopback.
func benchSink(tb testing.TB) string {
	tb.Helper()
	srv := smtp.NewServer(discardBackend{})
	srv.Domain = "sink.test"
	srv.AllowInsecureAuth = true
	srv.ErrorLog = silentLog{}
	return smtptest.Serve(tb, srv)
}

// hideConn hides extensions from the provider: its reads see
// "XIPELINING" for PIPELINING and "XHUNKING" for CHUNKING.
type hideConn struct {
	net.Conn
	hide [][]byte
}

func (c hideConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	for _, h := range c.hide {
		for i := bytes.Index(p[:n], h); i >= 0; i = bytes.Index(p[:n], h) {
			p[i+1] = 'X'
			p[i] = '-'
		}
	}
	return n, err
}

var benchModes = []struct {
	name string
	hide []string
	bdat bool
}{
	{"plain", []string{"-PIPELINING", "-CHUNKING"}, false},
	{"pipelined-DATA", []string{"-CHUNKING"}, false},
	{"pipelined-BDAT", nil, true},
}

// BenchmarkDeliver measures the reversed state alone: a provider session
// delivering b.N messages of 10 KiB to a go-smtp server over loopback.
func BenchmarkDeliver(b *testing.B) {
	for _, mode := range benchModes {
		b.Run(mode.name, func(b *testing.B) {
			addr := benchSink(b)
			q := newSliceQueue(b.N, benchBody)
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			var hide [][]byte
			for _, h := range mode.hide {
				hide = append(hide, []byte(h))
			}
			rc := hideConn{conn, hide}
			p := &Provider{Hostname: "provider.test", Queue: q, Logger: slog.New(slog.DiscardHandler), DisableChunking: !mode.bdat}
			s := newSession(p, rc)
			b.SetBytes(int64(len(benchBody)))
			b.ReportAllocs()
			b.ResetTimer()
			if err := s.deliver(context.Background(), rc, []string{"example.org"}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			for _, m := range q.msgs {
				if len(m.res) != 1 || m.res[0].Err != nil {
					b.Fatalf("message %s: %v", m.env.ID, m.res)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkGoSMTPBaseline is go-smtp's client sending the same messages
// to the same server.
func BenchmarkGoSMTPBaseline(b *testing.B) {
	addr := benchSink(b)
	c, err := smtp.Dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(benchBody)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := c.Mail("sender@x.test", &smtp.MailOptions{Size: int64(len(benchBody))}); err != nil {
			b.Fatal(err)
		}
		if err := c.Rcpt(fmt.Sprintf("u%d@example.org", i), nil); err != nil {
			b.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			b.Fatal(err)
		}
		w.Write(benchBody)
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	c.Quit()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// benchProvider starts a provider whose abuse limits are off, with one
// account, on loopback.
func benchProvider(tb testing.TB, q QueueSource) (*Provider, string) {
	tb.Helper()
	accts := testAccounts{"bench": {Name: "bench", Secret: "bench-secret", Domains: []string{"example.org"}}}
	p := &Provider{
		Hostname:            "provider.test",
		Authenticator:       accts,
		Authorizer:          accts,
		Queue:               q,
		Logger:              slog.New(slog.DiscardHandler),
		ATRNInterval:        -1,
		AuthFailuresAllowed: -1,
		AuthGuessInterval:   -1,
		MaxSessions:         -1,
		MaxSessionsPerAddr:  -1,
		MaxAuthFailures:     1 << 20,
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go p.ServeListener(l)
	tb.Cleanup(func() { p.Close() })
	return p, l.Addr().String()
}

// countingSink counts what it is given.
type countingSink struct {
	mu    sync.Mutex
	n     int
	bytes int64
}

func (s *countingSink) Deliver(_ context.Context, _ Envelope, body io.Reader) error {
	n, err := io.Copy(io.Discard, body)
	s.mu.Lock()
	s.n++
	s.bytes += n
	s.mu.Unlock()
	return err
}

// BenchmarkFetch measures the whole path: a Customer fetching b.N
// messages of 10 KiB from a Provider over loopback, with whatever
// session.deliver does.
func BenchmarkFetch(b *testing.B) {
	for _, queue := range []string{"MemoryQueue", "sliceQueue"} {
		b.Run(queue, func(b *testing.B) {
			var q QueueSource
			if queue == "MemoryQueue" {
				mq := newMemQueue()
				for i := range b.N {
					mq.Enqueue(Envelope{From: "sender@x.test", To: []string{fmt.Sprintf("u%d@example.org", i)}}, bytes.NewReader(benchBody))
				}
				q = mq
			} else {
				q = newSliceQueue(b.N, benchBody)
			}
			_, addr := benchProvider(b, q)
			sink := &countingSink{}
			c := &Customer{
				Addr: addr, Username: "bench", Secret: "bench-secret", Domains: []string{"example.org"},
				Mechanisms: []string{CRAMMD5}, Hostname: "customer.test", Sink: sink,
				Logger: slog.New(slog.DiscardHandler),
			}
			b.SetBytes(int64(len(benchBody)))
			b.ReportAllocs()
			b.ResetTimer()
			res, err := c.Fetch(context.Background())
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			if res.Messages != b.N || sink.n != b.N {
				b.Fatalf("fetched %d messages, sink got %d, want %d", res.Messages, sink.n, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkSessionNoMail measures sessions that end without mail:
// connect, EHLO, AUTH CRAM-MD5, ATRN answered 453, QUIT, from parallel
// clients speaking raw SMTP.
func BenchmarkSessionNoMail(b *testing.B) {
	_, addr := benchProvider(b, newMemQueue())
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := rawNoMailSession(addr); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sessions/s")
}

// BenchmarkGoSMTPSession is the baseline of BenchmarkSessionNoMail: a
// go-smtp server, connect, EHLO, AUTH PLAIN, QUIT, from the same raw
// client code.
func BenchmarkGoSMTPSession(b *testing.B) {
	addr := benchSink(b)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := rawPlainSession(addr); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sessions/s")
}

func rawCmd(tp *textproto.Conn, want int, format string, args ...any) (string, error) {
	if err := tp.PrintfLine(format, args...); err != nil {
		return "", err
	}
	_, msg, err := tp.ReadResponse(want)
	return msg, err
}

func rawNoMailSession(addr string) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return err
	}
	if _, err := rawCmd(tp, 250, "EHLO customer.test"); err != nil {
		return err
	}
	chal, err := rawCmd(tp, 334, "AUTH CRAM-MD5")
	if err != nil {
		return err
	}
	raw, err := base64.StdEncoding.DecodeString(chal)
	if err != nil {
		return err
	}
	resp, _ := saslmech.NewCRAMMD5Client("bench", "bench-secret").Next(raw)
	if _, err := rawCmd(tp, 235, "%s", base64.StdEncoding.EncodeToString(resp)); err != nil {
		return err
	}
	if _, err := rawCmd(tp, 453, "ATRN example.org"); err != nil {
		return err
	}
	_, err = rawCmd(tp, 221, "QUIT")
	return err
}

func rawPlainSession(addr string) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return err
	}
	if _, err := rawCmd(tp, 250, "EHLO client.test"); err != nil {
		return err
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00bench\x00bench-secret"))
	if _, err := rawCmd(tp, 235, "AUTH PLAIN %s", ir); err != nil {
		return err
	}
	_, err = rawCmd(tp, 221, "QUIT")
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// benchLimitsOff turns the AUTH limits off.
func benchLimitsOff(p *Provider) {
	p.AuthFailuresAllowed, p.AuthGuessInterval = -1, -1
	p.ATRNInterval = -1
	p.MaxSessions, p.MaxSessionsPerAddr = -1, -1
}
