package odmr

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// customerReplySeeds are what providers send: the RFC 2645 section 6
// session, each refusal, Exim's 250-then-QUIT, and broken replies.
func customerReplySeeds() []string {
	ehlo := "220 p ready\r\n250-p\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n"
	chal := "334 PDE4OTYuNjk3MTcwOTUyQHByb3ZpZGVyLnRlc3Q+\r\n"
	return []string{
		"",
		"220 p ready\r\n",
		"554 go away\r\n",
		ehlo + chal + "235 ok\r\n453 no mail\r\n",
		ehlo + chal + "235 ok\r\n450 4.7.1 refused\r\n",
		ehlo + chal + "235 ok\r\n451 later\r\n",
		ehlo + chal + "535 5.7.8 bad\r\n",
		ehlo + chal + "235 ok\r\n250 reversing\r\nQUIT\r\n",
		ehlo + chal + "235 ok\r\n250 reversing\r\nEHLO p\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
		ehlo + chal + "235 ok\r\n250 reversing\r\nEHLO p\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\nDATA\r\ncut mid-data",
		// BDAT: whole, in two chunks, cut inside the last, abandoned with
		// RSET and followed by another message; DSN parameters.
		ehlo + chal + "235 ok\r\n250 reversing\r\nEHLO p\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\nBDAT 17 LAST\r\nSubject: x\r\n\r\n.\r\nQUIT\r\n",
		ehlo + chal + "235 ok\r\n250 reversing\r\nEHLO p\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\nBDAT 10\r\nSubject: xBDAT 7 LAST\r\n\r\n\r\n.\r\nQUIT\r\n",
		ehlo + chal + "235 ok\r\n250 reversing\r\nEHLO p\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\nBDAT 100 LAST\r\nSubject: cut",
		ehlo + chal + "235 ok\r\n250 reversing\r\nEHLO p\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\nBDAT 4\r\nhalfRSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\nBDAT 17 LAST\r\nSubject: y\r\n\r\n.\r\nQUIT\r\n",
		ehlo + chal + "235 ok\r\n250 reversing\r\nEHLO p\r\nMAIL FROM:<a@b> RET=HDRS ENVID=x+2By\r\nRCPT TO:<u@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;o+2Bld@example.org\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
		ehlo + chal + "235 ok\r\n250 reversing\r\nHELO p(a)<b>;\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
		"220 p\r\n250 p\r\n",
		"220 p\r\n250-p\r\n250-AUTH PLAIN\r\n250 ATRN\r\n",
		"220-p\r\n220 p\r\n250-p\r\n250-AUTH SCRAM-SHA-256 CRAM-MD5\r\n250 ATRN\r\n334 cj1ub25jZSxzPXNhbHQsaT0x\r\n",
		"2\r\n", "999 x\r\n", "220\r\n250-\r\n250 \r\n", "220 p\n250-p\n250-AUTH CRAM-MD5\n250 ATRN\n334 !!!\n",
		"220 " + strings.Repeat("x", 70000) + "\r\n",
		ehlo + "334 \r\n", ehlo + chal + "334 again\r\n334 again\r\n334 again\r\n334 again\r\n334 again\r\n334 again\r\n",
	}
}

// FuzzCustomerReplies feeds arbitrary bytes to a Customer as the provider.
// Whatever arrives, Fetch returns in bounded time with a result, delivers
// only whole messages, and leaves no goroutine behind.
func FuzzCustomerReplies(f *testing.F) {
	for _, s := range customerReplySeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		// In a bubble, the clock moves only when every goroutine of the
		// session waits, so a timeout firing means a hang; and
		// synctest.Test returns only once every goroutine the customer
		// started has ended, and fails if one is stuck.
		synctest.Test(t, func(t *testing.T) { fuzzCustomerOnce(t, input) })
	})
}

// fuzzCustomerOnce runs one Fetch against input as the provider's bytes.
// It runs in a synctest bubble: time is the bubble's.
func fuzzCustomerOnce(t *testing.T, input []byte) {
	cli, srv := net.Pipe()
	drained := make(chan struct{})
	go func() {
		io.Copy(io.Discard, srv)
		close(drained)
	}()
	go func() {
		srv.Write(input)
		srv.Close()
	}()
	var delivered []string
	c := &Customer{
		Addr:     "provider.test",
		Dial:     func(context.Context, string, string) (net.Conn, error) { return cli, nil },
		Username: fuzzUser, Secret: fuzzSecret, Hostname: "customer.test",
		Domains:        []string{"example.org"},
		CommandTimeout: fuzzHang, ATRNTimeout: fuzzHang, IdleTimeout: fuzzHang,
		Logger: slog.New(slog.DiscardHandler),
		Sink: MessageSinkFunc(func(ctx context.Context, env Envelope, body io.Reader) error {
			b, err := io.ReadAll(body)
			if err == nil {
				delivered = append(delivered, string(b))
			}
			return err
		}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*fuzzHang)
	defer cancel()
	start := time.Now()
	res, err := c.Fetch(ctx)
	// The provider has closed its end, so nothing should wait for a
	// timeout: on the bubble's clock, one firing shows as fuzzHang gone.
	if d := time.Since(start); d >= fuzzHang {
		t.Fatalf("Fetch waited %v on the bubble's clock on input %q", d, input)
	}
	if res == nil {
		t.Fatalf("Fetch returned no result (err %v)", err)
	}
	if err == nil && res.Messages != len(delivered) {
		t.Fatalf("result says %d messages, the sink got %d", res.Messages, len(delivered))
	}
	for _, m := range delivered {
		// The customer puts one Received: field in front, whatever names
		// the provider gave: folded lines, none of them broken.
		trace, rest := stripReceived([]byte(m))
		if trace == "" || strings.ContainsAny(strings.ReplaceAll(trace, "\r\n", ""), "\r\n") || strings.Count(trace, "\r\n") != strings.Count(trace, "\r\n\t")+1 {
			t.Fatalf("delivered %q, without a well-formed Received: field in front", m)
		}
		m = rest
		// What reaches the sink is the data with its leading dots taken
		// off (dot-unstuffing), or BDAT chunks joined: without any dots
		// it must be a subsequence of what the provider sent.
		if !subsequence(strings.ReplaceAll(m, ".", ""), strings.ReplaceAll(string(input), ".", "")) {
			t.Fatalf("delivered %q, which the provider never sent", m)
		}
	}
	cli.Close()
	<-drained
}

// FuzzSCRAMServer feeds arbitrary client messages to the SCRAM server: it
// never panics and succeeds only with a valid proof, which random input
// does not make.
func FuzzSCRAMServer(f *testing.F) {
	f.Add([]byte("n,,n=alice,r=abcdef"), []byte("c=biws,r=abcdef,p=AAAA"), []byte(""))
	f.Add([]byte("n,a=bob,n=alice,r=x"), []byte(""), []byte(""))
	f.Add([]byte("y,,n=al=2Cice,r=x"), []byte("c=eSws,r=x,p="), []byte("x"))
	f.Add([]byte("p=tls-unique,,n=alice,r=x"), []byte("garbage"), []byte(""))
	f.Add([]byte(""), []byte(""), []byte(""))
	creds, err := NewSCRAMCredentials(SCRAMSHA256, fuzzUser, fuzzSecret, 0)
	if err != nil {
		f.Fatal(err)
	}
	keys := newSCRAMKeys(nil, 0)
	f.Fuzz(func(t *testing.T, first, final, last []byte) {
		var user string
		srv, err := newSCRAMServer(SCRAMSHA256, &user, func(u string) (SCRAMCredentials, error) {
			if u == fuzzUser {
				return creds, nil
			}
			return keys.unknown(SCRAMSHA256, u)
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, msg := range [][]byte{first, final, last} {
			_, done, err := srv.Next(msg)
			if err != nil {
				return
			}
			if done {
				t.Fatalf("authenticated after %d random messages: %q %q %q", i+1, first, final, last)
			}
		}
	})
}

// subsequence reports whether the bytes of a appear in b in order.
func subsequence(a, b string) bool {
	for i := 0; i < len(a); i++ {
		j := strings.IndexByte(b, a[i])
		if j < 0 {
			return false
		}
		b = b[j+1:]
	}
	return true
}
