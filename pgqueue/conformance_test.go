package pgqueue_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/pgtest"
	"github.com/go-odmr/odmr/odmrtest"
	"github.com/go-odmr/odmr/pgqueue"
)

// The provider conformance suite, run against odmr.Provider with its
// queue and its accounts in PostgreSQL.
func TestProviderConformance(t *testing.T) {
	dsn := pgtest.DSN(t)
	q, err := pgqueue.Open(t.Context(), dsn, pgqueue.Options{
		MaintenanceInterval: -1,
		Logger:              slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	accts, err := pgqueue.OpenAccounts(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer accts.Close()
	for _, acct := range []accounts.Account{
		{Name: odmrtest.FixtureUser, Secret: odmrtest.FixtureSecret, Domains: odmrtest.FixtureDomains},
		{Name: odmrtest.FixtureForeignUser, Secret: odmrtest.FixtureForeignSecret, Domains: []string{odmrtest.FixtureForeignDomain}},
	} {
		if err := accts.Put(t.Context(), acct); err != nil {
			t.Fatal(err)
		}
	}
	_, cfg := odmrtest.NewProvider(t, func(p *odmr.Provider) {
		p.Queue = q
		p.Authenticator = accts
		p.Authorizer = accts
	})
	cfg.Enqueue = func(from string, to []string, body string) error {
		_, err := q.Enqueue(context.Background(), odmr.Envelope{From: from, To: to}, strings.NewReader(body))
		return err
	}
	odmrtest.TestProvider(t, cfg)
}
