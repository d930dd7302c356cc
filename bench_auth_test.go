package odmr

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/xdg-go/scram"

	"github.com/go-odmr/odmr/internal/saslmech"
)

// addrConn gives a pipe end a chosen remote address, so one test can play
// many sources.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// pipeFrom starts a session of p on a pipe whose far end seems to come
// from ip, and returns the client's end, past the greeting.
func pipeFrom(tb testing.TB, p *Provider, ip string) *textproto.Conn {
	tb.Helper()
	cli, srv := net.Pipe()
	go p.Serve(addrConn{srv, &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}})
	tp := textproto.NewConn(cli)
	if _, _, err := tp.ReadResponse(220); err != nil {
		tb.Fatal(err)
	}
	if _, err := rawCmd(tp, 250, "EHLO client.test"); err != nil {
		tb.Fatal(err)
	}
	return tp
}

// authCRAMRaw runs one CRAM-MD5 exchange and returns the final reply.
func authCRAMRaw(tp *textproto.Conn, user, secret string) (int, string, error) {
	if err := tp.PrintfLine("AUTH CRAM-MD5"); err != nil {
		return 0, "", err
	}
	code, chal, err := tp.ReadResponse(0)
	if err != nil || code != 334 {
		return code, chal, err
	}
	raw, _ := base64.StdEncoding.DecodeString(chal)
	resp, _ := saslmech.NewCRAMMD5Client(user, secret).Next(raw)
	if err := tp.PrintfLine("%s", base64.StdEncoding.EncodeToString(resp)); err != nil {
		return 0, "", err
	}
	return tp.ReadResponse(0)
}

// authSCRAMRaw runs one SCRAM exchange and returns the final reply.
// The client is given, so that its cache of derived keys is kept between
// exchanges: a client pays PBKDF2 only when the salt changes.
func authSCRAMRaw(tp *textproto.Conn, mech string, client *scram.Client) (int, string, error) {
	conv := client.NewConversation()
	first, err := conv.Step("")
	if err != nil {
		return 0, "", err
	}
	if err := tp.PrintfLine("AUTH %s %s", mech, base64.StdEncoding.EncodeToString([]byte(first))); err != nil {
		return 0, "", err
	}
	for {
		code, msg, err := tp.ReadResponse(0)
		if err != nil || code != 334 {
			return code, msg, err
		}
		chal, _ := base64.StdEncoding.DecodeString(msg)
		var resp string
		if !conv.Done() {
			resp, err = conv.Step(string(chal))
		}
		if err != nil {
			tp.PrintfLine("*")
			return tp.ReadResponse(0)
		}
		if err := tp.PrintfLine("%s", base64.StdEncoding.EncodeToString([]byte(resp))); err != nil {
			return 0, "", err
		}
	}
}

func scramClient256(tb testing.TB, user, pass string) *scram.Client {
	c, err := scram.SHA256.NewClient(user, pass, "")
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// BenchmarkAuthAttempt measures one AUTH exchange on an open session,
// against a NOOP round trip on the same kind of session as the baseline.
// The limits are off, so that the cost measured is the mechanism's.
func BenchmarkAuthAttempt(b *testing.B) {
	stored, err := NewSCRAMCredentials(SCRAMSHA256, "stored", "stored-secret", 0)
	if err != nil {
		b.Fatal(err)
	}
	accts := testAccounts{
		"bench":  {Name: "bench", Secret: "bench-secret", Domains: []string{"example.org"}},
		"stored": {Name: "stored", SCRAM: []SCRAMCredentials{stored}, Domains: []string{"example.org"}},
	}
	newP := func() *Provider {
		p := &Provider{Hostname: "provider.test", Authenticator: accts, Authorizer: accts,
			Queue: newSliceQueue(0, nil), Logger: slog.New(slog.DiscardHandler), MaxAuthFailures: 1 << 30,
			MaxErrors: 1 << 30}
		benchLimitsOff(p)
		return p
	}
	benchClient := scramClient256(b, "bench", "bench-secret")
	storedClient := scramClient256(b, "stored", "stored-secret")
	nobodyClient := scramClient256(b, "nobody", "guess")
	cases := []struct {
		name string
		try  func(tp *textproto.Conn) (int, string, error)
		want int
	}{
		{"NOOP", func(tp *textproto.Conn) (int, string, error) { tp.PrintfLine("NOOP"); return tp.ReadResponse(0) }, 250},
		{"CRAM-MD5/wrong", func(tp *textproto.Conn) (int, string, error) { return authCRAMRaw(tp, "bench", "wrong") }, 535},
		{"SCRAM-SHA-256/plaintext-account", func(tp *textproto.Conn) (int, string, error) {
			return authSCRAMRaw(tp, SCRAMSHA256, benchClient)
		}, 235},
		{"SCRAM-SHA-256/stored-account", func(tp *textproto.Conn) (int, string, error) {
			return authSCRAMRaw(tp, SCRAMSHA256, storedClient)
		}, 235},
		{"SCRAM-SHA-256/unknown-user", func(tp *textproto.Conn) (int, string, error) {
			return authSCRAMRaw(tp, SCRAMSHA256, nobodyClient)
		}, 535},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			p := newP()
			defer p.Close()
			tp := pipeFrom(b, p, "192.0.2.1")
			defer tp.Close()
			for b.Loop() {
				if tc.want == 235 {
					// A new session each time: AUTH once per session.
					tp.Close()
					tp = pipeFrom(b, p, "192.0.2.1")
				}
				code, msg, err := tc.try(tp)
				if err != nil || code != tc.want {
					b.Fatalf("got %d %q %v, want %d", code, msg, err, tc.want)
				}
			}
		})
	}
}

// countWriter counts the bytes written to it.
type countWriter struct{ n atomic.Int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

// BenchmarkAuthFloodLongNames measures what a flood of failed CRAM-MD5
// logins with 9 KB user names, each from its own address, leaves in the
// provider's heap and log, with the default limits. The same flood with
// short names is the baseline: the pipes' deadline timers keep some memory
// for a while whatever the names. The floods run once whatever b.N; its
// ns/op mean nothing.
func BenchmarkAuthFloodLongNames(b *testing.B) {
	if floodResults == nil {
		short, _ := authFlood(b, 1)
		long, logs := authFlood(b, 9000)
		floodResults = []float64{short, long, logs}
	}
	for b.Loop() {
	}
	b.ReportMetric(floodResults[0], "heap-MB-short-names")
	b.ReportMetric(floodResults[1], "heap-MB-9KB-names")
	b.ReportMetric(floodResults[2], "log-MB-9KB-names")
}

// floodResults keeps the figures of the floods between the runs the
// testing package makes of the benchmark.
var floodResults []float64

func authFlood(b *testing.B, nameLen int) (heapMB, logMB float64) {
	const n = 20000
	logs := &countWriter{}
	accts := testAccounts{"bench": {Name: "bench", Secret: "bench-secret", Domains: []string{"example.org"}}}
	p := &Provider{Hostname: "provider.test", Authenticator: accts, Authorizer: accts,
		Queue: newSliceQueue(0, nil), Logger: slog.New(slog.NewTextHandler(logs, nil)),
		MaxSessionsPerAddr: -1}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	long := strings.Repeat("x", nameLen)
	for i := range n {
		tp := pipeFrom(b, p, fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
		code, msg, err := authCRAMRaw(tp, fmt.Sprintf("%s%d", long, i), "guess")
		if err != nil || (code != 535 && code != 454) {
			b.Fatalf("got %d %q %v", code, msg, err)
		}
		tp.PrintfLine("QUIT")
		io.Copy(io.Discard, tp.R)
		tp.Close()
	}
	// Let the sessions end; what stays is the provider's own state.
	p.Shutdown(context.Background())
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(p)
	p.Close()
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / (1 << 20), float64(logs.n.Load()) / (1 << 20)
}
