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
	"github.com/go-odmr/odmr/accounts"
)

// accountStore is the provider's Authenticator and Authorizer, and the
// intake's list of domains: accounts.Map behind an atomic pointer, so
// that SIGHUP can replace the whole set while sessions run. Each lookup
// sees the old set or the new one, never a mix.
type accountStore struct {
	cur atomic.Pointer[accountSet]
}

// accountSet is one loaded set of accounts, with the owner of each of
// their domains in the canonical form odmr.RecipientDomain gives: the
// intake asks for the owner at each RCPT, and Map.Owner scans every
// account for it.
type accountSet struct {
	m     accounts.Map
	owner map[string]accounts.Account
}

var (
	_ odmr.Authenticator      = (*accountStore)(nil)
	_ odmr.SCRAMAuthenticator = (*accountStore)(nil)
	_ odmr.DomainAuthorizer   = (*accountStore)(nil)
)

func newAccountStore(a accounts.Map) *accountStore {
	s := &accountStore{}
	s.store(a)
	return s
}

// store makes m the accounts of every later lookup.
func (s *accountStore) store(m accounts.Map) {
	set := &accountSet{m: m, owner: make(map[string]accounts.Account)}
	for _, a := range m {
		for _, d := range a.Domains {
			set.owner[odmr.RecipientDomain("@"+d)] = a
		}
	}
	s.cur.Store(set)
}

func (s *accountStore) load() accounts.Map { return s.cur.Load().m }

func (s *accountStore) Secret(ctx context.Context, user string) ([]byte, error) {
	return s.load().Secret(ctx, user)
}

func (s *accountStore) SCRAMCredentials(ctx context.Context, mech, user string) (odmr.SCRAMCredentials, error) {
	return s.load().SCRAMCredentials(ctx, mech, user)
}

func (s *accountStore) Domains(ctx context.Context, identity string) ([]string, error) {
	return s.load().Domains(ctx, identity)
}

// Owner is accounts.Map.Owner, from the index of the set.
func (s *accountStore) Owner(domain string) (accounts.Account, bool) {
	a, ok := s.cur.Load().owner[odmr.RecipientDomain("@"+domain)]
	return a, ok
}

// loadAccounts reads the -accounts file, refusing one that defines no
// account, and warns when every user of the machine may read or write it:
// it holds secrets. Its group may read it, since running the provider as
// a user of the file's group (mode 0640, owner root, as deploy/systemd
// does) is how the file stays out of the provider's own hands.
func loadAccounts(path string, log *slog.Logger) (accounts.Map, error) {
	a, err := accounts.Load(path)
	if err != nil {
		return nil, fmt.Errorf("-accounts: %v", trimPrefix(err))
	}
	if len(a) == 0 {
		return nil, fmt.Errorf("-accounts: %s defines no accounts", path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o007 != 0 {
		log.Warn("odmr-provider: the accounts file holds secrets but others may read it; chmod o-rwx it (0600, or 0640 for the provider's group)",
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
	store.store(next)
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
