package odmrtest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/memqueue"
)

// The accounts of the provider that [NewProvider] starts.
const (
	// FixtureUser owns FixtureDomains.
	FixtureUser = "alice"
	// FixtureSecret is FixtureUser's CRAM-MD5 secret.
	FixtureSecret = "odmrtest-alice-secret"
	// FixtureForeignUser owns FixtureForeignDomain.
	FixtureForeignUser = "bob"
	// FixtureForeignSecret is FixtureForeignUser's CRAM-MD5 secret.
	FixtureForeignSecret = "odmrtest-bob-secret"
	// FixtureForeignDomain belongs to FixtureForeignUser.
	FixtureForeignDomain = "example.net"
	// FixtureHostname is the provider's host name.
	FixtureHostname = "provider.example"
)

// FixtureDomains are the domains of FixtureUser.
var FixtureDomains = []string{"example.org", "example.com"}

// NewProvider starts this library's [odmr.Provider] on a loopback TCP port
// with an [memqueue.Queue] and two accounts: FixtureUser, who owns
// FixtureDomains, and FixtureForeignUser, who owns FixtureForeignDomain.
// The ATRN rate limit is off, since the suite sends many ATRNs in a row;
// every other field has its zero value. Each function in opts may change
// the provider before it serves. The
// provider is shut down when the test ends.
//
// It returns the provider and the [ProviderConfig] that reaches it, which
// [TestProvider] accepts as it is; the queue is p.Queue.(*memqueue.Queue).
func NewProvider(t testing.TB, opts ...func(*odmr.Provider)) (*odmr.Provider, ProviderConfig) {
	t.Helper()
	q := &memqueue.Queue{}
	accts := accounts.Map{
		FixtureUser:        {Name: FixtureUser, Secret: FixtureSecret, Domains: slices.Clone(FixtureDomains)},
		FixtureForeignUser: {Name: FixtureForeignUser, Secret: FixtureForeignSecret, Domains: []string{FixtureForeignDomain}},
	}
	p := &odmr.Provider{
		Hostname:      FixtureHostname,
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         q,
		Logger:        slog.New(slog.DiscardHandler),
		// The suite sends some 50 ATRNs in a second; the default limit
		// would answer the later ones 450, as RFC 2645 section 5.2.1
		// allows.
		ATRNInterval: -1,
	}
	for _, o := range opts {
		o(p)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("odmrtest: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- p.ServeListener(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			p.Close()
			t.Errorf("odmrtest: provider sessions still running at shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, odmr.ErrProviderClosed) {
			t.Errorf("odmrtest: ServeListener returned %v, want ErrProviderClosed", err)
		}
	})
	addr := l.Addr().String()
	cfg := ProviderConfig{
		Dial:             func() (net.Conn, error) { return net.Dial("tcp", addr) },
		User:             FixtureUser,
		Secret:           FixtureSecret,
		Domains:          slices.Clone(FixtureDomains),
		ForeignDomain:    FixtureForeignDomain,
		ForeignUser:      FixtureForeignUser,
		ForeignSecret:    FixtureForeignSecret,
		Enqueue:          MemoryEnqueuer(q),
		NoMail:           NoMail453,
		ReplaysPipelined: true,
		InsecureAuth:     p.AllowInsecureAuth,
		Timeout:          10 * time.Second,
	}
	return p, cfg
}

// MemoryEnqueuer returns an Enqueue hook for [ProviderConfig] that queues
// messages in q.
func MemoryEnqueuer(q *memqueue.Queue) func(from string, to []string, body string) error {
	return func(from string, to []string, body string) error {
		_, err := q.Enqueue(odmr.Envelope{From: from, To: to}, strings.NewReader(body))
		return err
	}
}
