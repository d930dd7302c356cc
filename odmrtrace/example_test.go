package odmrtrace_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtrace"
	"github.com/go-odmr/odmr/spool"
)

// A ProviderTrace feeds a provider's events to a metrics system; here, to
// counters printed at the end. A queue that implements QueueStatser
// (the spool does) tells what it holds per domain.
func Example() {
	dir, err := os.MkdirTemp("", "odmr-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	queue, err := spool.Open(dir, spool.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	defer queue.Close()
	for _, to := range []string{"alice@example.org", "bob@example.org"} {
		queue.Enqueue(context.Background(), odmr.Envelope{From: "carol@example.net", To: []string{to}},
			strings.NewReader("Subject: hello\r\n\r\nHi.\r\n"))
	}
	stats, _ := queue.QueueStats(context.Background())
	for _, s := range stats {
		fmt.Printf("queued for %s: %d\n", s.Domain, s.Messages)
	}

	var mu sync.Mutex
	count := map[string]int{}
	inc := func(key string) { mu.Lock(); count[key]++; mu.Unlock() }
	ended := make(chan odmrtrace.SessionEnd, 1)
	p := &odmr.Provider{
		Hostname: "mx.example.net",
		Authenticator: odmr.AuthenticatorFunc(func(_ context.Context, user string) ([]byte, error) {
			if user != "alice" {
				return nil, odmr.ErrUnknownUser
			}
			return []byte("s3cret"), nil
		}),
		Authorizer: odmr.DomainAuthorizerFunc(func(context.Context, string) ([]string, error) {
			return []string{"example.org"}, nil
		}),
		Queue:  queue,
		Logger: slog.New(slog.DiscardHandler),
		Trace: &odmrtrace.ProviderTrace{
			Auth:     func(e odmrtrace.AuthEvent) { inc(fmt.Sprintf("auth %s %s", e.Mechanism, e.Result)) },
			ATRN:     func(e odmrtrace.ATRNEvent) { inc(fmt.Sprintf("atrn %d", e.Code)) },
			Delivery: func(e odmrtrace.DeliveryEvent) { inc(fmt.Sprintf("recipients %s", e.Result)) },
			SessionEnded: func(e odmrtrace.SessionEnd) {
				inc(fmt.Sprintf("session %s %s", e.State, e.Outcome))
				ended <- e
			},
		},
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go p.ServeListener(l)
	defer p.Shutdown(context.Background())

	c := &odmr.Customer{Addr: l.Addr().String(), Username: "alice", Secret: "s3cret",
		Domains: []string{"example.org"}, Logger: slog.New(slog.DiscardHandler),
		Sink: odmr.MessageSinkFunc(func(_ context.Context, _ odmr.Envelope, body io.Reader) error {
			_, err := io.Copy(io.Discard, body)
			return err
		})}
	if _, err := c.Fetch(context.Background()); err != nil {
		panic(err)
	}
	<-ended // the provider's side of the session is over
	for _, k := range []string{"auth SCRAM-SHA-256 success", "atrn 250", "recipients delivered", "session reversed ok"} {
		fmt.Println(k+":", count[k])
	}
	// Output:
	// queued for example.org: 2
	// auth SCRAM-SHA-256 success: 1
	// atrn 250: 1
	// recipients delivered: 2
	// session reversed ok: 1
}
