package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"sync/atomic"

	"github.com/go-odmr/odmr"
)

// accountStore is the provider's Authenticator and Authorizer, and the
// intake's list of domains: odmr.Accounts behind an atomic pointer, so
// that SIGHUP can replace the whole set while sessions run. Each lookup
// sees the old set or the new one, never a mix.
type accountStore struct {
	cur atomic.Pointer[odmr.Accounts]
}

var (
	_ odmr.Authenticator      = (*accountStore)(nil)
	_ odmr.SCRAMAuthenticator = (*accountStore)(nil)
	_ odmr.DomainAuthorizer   = (*accountStore)(nil)
)

func newAccountStore(a odmr.Accounts) *accountStore {
	s := &accountStore{}
	s.cur.Store(&a)
	return s
}

func (s *accountStore) load() odmr.Accounts { return *s.cur.Load() }

func (s *accountStore) Secret(ctx context.Context, user string) ([]byte, error) {
	return s.load().Secret(ctx, user)
}

func (s *accountStore) SCRAMCredentials(ctx context.Context, mech, user string) (odmr.SCRAMCredentials, error) {
	return s.load().SCRAMCredentials(ctx, mech, user)
}

func (s *accountStore) Domains(ctx context.Context, identity string) ([]string, error) {
	return s.load().Domains(ctx, identity)
}

func (s *accountStore) Owner(domain string) (odmr.Account, bool) { return s.load().Owner(domain) }

// loadAccounts reads the -accounts file, refusing one that defines no
// account, and warns when others may read it: it holds secrets.
func loadAccounts(path string, log *slog.Logger) (odmr.Accounts, error) {
	a, err := odmr.LoadAccounts(path)
	if err != nil {
		return nil, fmt.Errorf("-accounts: %v", trimPrefix(err))
	}
	if len(a) == 0 {
		return nil, fmt.Errorf("-accounts: %s defines no accounts", path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("odmr-provider: the accounts file holds secrets but others may read it; chmod 600 it",
			"file", path, "mode", fi.Mode().Perm().String())
	}
	return a, nil
}

// trimPrefix drops the library's "odmr: " from an error's text, so that
// the program's own prefix does not double it.
func trimPrefix(err error) string {
	msg := err.Error()
	if len(msg) > 6 && msg[:6] == "odmr: " {
		return msg[6:]
	}
	return msg
}

// reloadAccounts replaces the accounts with the file's, logging the names
// added, removed and changed; a file that does not load keeps the old
// accounts.
func reloadAccounts(store *accountStore, path string, log *slog.Logger) {
	next, err := loadAccounts(path, log)
	if err != nil {
		log.Error("odmr-provider: reload failed; keeping the accounts loaded before", "err", err)
		return
	}
	prev := store.load()
	var added, removed, changed []string
	for name, acct := range next {
		old, ok := prev[name]
		switch {
		case !ok:
			added = append(added, name)
		case !reflect.DeepEqual(old, acct):
			changed = append(changed, name)
		}
	}
	for name := range prev {
		if _, ok := next[name]; !ok {
			removed = append(removed, name)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	slices.Sort(changed)
	store.cur.Store(&next)
	log.Info("odmr-provider: accounts reloaded", "accounts", len(next),
		"added", added, "removed", removed, "changed", changed)
}

// certStore holds the TLS certificate behind an atomic pointer, read by
// tls.Config.GetCertificate at each handshake, so that SIGHUP can replace
// it without a restart.
type certStore struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

func (c *certStore) load() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("-tls-cert/-tls-key: %w", err)
	}
	c.cur.Store(&cert)
	return nil
}

func (c *certStore) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.cur.Load(), nil }

// reload loads the files again and logs the new certificate; if they do
// not load, the old certificate stays.
func (c *certStore) reload(log *slog.Logger) {
	old := c.cur.Load()
	if err := c.load(); err != nil {
		log.Error("odmr-provider: reload failed; keeping the TLS certificate loaded before", "err", err)
		return
	}
	cert := c.cur.Load()
	same := len(old.Certificate) > 0 && len(cert.Certificate) > 0 && slices.Equal(old.Certificate[0], cert.Certificate[0])
	attrs := []any{"changed", !same}
	if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil {
		attrs = append(attrs, "subject", leaf.Subject.String(), "not-after", leaf.NotAfter.UTC())
	}
	log.Info("odmr-provider: TLS certificate reloaded", attrs...)
}
