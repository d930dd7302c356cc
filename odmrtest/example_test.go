package odmrtest_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/memqueue"
	"github.com/go-odmr/odmr/odmrtest"
)

// A plain program runs the suite with RunProvider and a Reporter. Here the
// provider is this library's, on a loopback port; the suite would reach a
// provider written in any language the same way.
func ExampleRunProvider() {
	queue := &memqueue.Queue{}
	accts := accounts.Map{
		"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org"}},
		"bob":   {Name: "bob", Secret: "other", Domains: []string{"example.net"}},
	}
	p := &odmr.Provider{
		Hostname:      "provider.example",
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         queue,
		Logger:        slog.New(slog.DiscardHandler),
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go p.ServeListener(l)
	defer p.Close()

	cfg := odmrtest.ProviderConfig{
		Dial:          func() (net.Conn, error) { return net.Dial("tcp", l.Addr().String()) },
		User:          "alice",
		Secret:        "s3cret",
		Domains:       []string{"example.org"},
		ForeignDomain: "example.net",
		Enqueue:       odmrtest.MemoryEnqueuer(queue),
		// Run only two checks here.
		Skip: skipAllBut("5.2.1/foreign-domain-450", "5.2.1/250-single-line-then-reverse"),
	}
	_, err = odmrtest.RunProvider(context.Background(), cfg, odmrtest.ReporterFunc(func(r odmrtest.Result) {
		if r.Status != odmrtest.Skip {
			fmt.Println(r.Check.ID(), r.Check.Level, r.Status)
		}
	}))
	if err != nil {
		panic(err)
	}
	// Output:
	// 5.2.1/foreign-domain-450 MUST PASS
	// 5.2.1/250-single-line-then-reverse MUST PASS
}

// skipAllBut lists the IDs of every check but those given.
func skipAllBut(ids ...string) []string {
	var skip []string
	for _, c := range odmrtest.ProviderChecks() {
		keep := false
		for _, id := range ids {
			keep = keep || c.ID() == id
		}
		if !keep {
			skip = append(skip, c.ID())
		}
	}
	return skip
}
