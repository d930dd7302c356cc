// Package accounts is a static credential store for a small provider: an
// [odmr.Authenticator], [odmr.SCRAMAuthenticator] and
// [odmr.DomainAuthorizer] read from a file of one account a line.
package accounts

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/domainlist"
)

// Account is one customer of a provider: its user name, its shared secret
// or SCRAM credentials, and the domains it may pull.
type Account struct {
	Name string
	// Secret is the shared secret; "" when only SCRAM credentials are kept,
	// which rules out CRAM-MD5 for the account.
	Secret string
	// SCRAM holds stored SCRAM credentials, at most one per mechanism.
	SCRAM   []odmr.SCRAMCredentials
	Domains []string
}

// Map is a static credential store: both the [odmr.Authenticator]
// and the [odmr.DomainAuthorizer] of a small provider. The map key is the
// user name.
type Map map[string]Account

// Secret returns the account's secret, [odmr.ErrUnknownUser], or
// [odmr.ErrNoSecret] for an account that keeps only SCRAM credentials.
func (a Map) Secret(ctx context.Context, username string) ([]byte, error) {
	acct, ok := a[username]
	if !ok {
		return nil, odmr.ErrUnknownUser
	}
	if acct.Secret == "" {
		return nil, odmr.ErrNoSecret
	}
	return []byte(acct.Secret), nil
}

// SCRAMCredentials returns the account's stored credentials for mechanism,
// [odmr.ErrUnknownUser], or [odmr.ErrNoSecret] when it has none stored (the
// provider then derives them from the secret).
func (a Map) SCRAMCredentials(ctx context.Context, mechanism, username string) (odmr.SCRAMCredentials, error) {
	acct, ok := a[username]
	if !ok {
		return odmr.SCRAMCredentials{}, odmr.ErrUnknownUser
	}
	for _, c := range acct.SCRAM {
		if c.Mechanism == mechanism {
			return c, nil
		}
	}
	return odmr.SCRAMCredentials{}, odmr.ErrNoSecret
}

// Domains returns the account's domains.
func (a Map) Domains(ctx context.Context, identity string) ([]string, error) {
	return a[identity].Domains, nil
}

// Owner returns the account that may pull domain, if any.
func (a Map) Owner(domain string) (Account, bool) {
	domain = odmr.RecipientDomain("@" + domain)
	for _, acct := range a {
		for _, d := range acct.Domains {
			if odmr.RecipientDomain("@"+d) == domain {
				return acct, true
			}
		}
	}
	return Account{}, false
}

// Parse reads an accounts file: one account a line as
//
//	NAME SECRET DOMAIN[,DOMAIN...]
//
// separated by spaces or tabs. SECRET is the shared secret, or instead one
// or more SCRAM credentials separated by commas, as
// [odmr.SCRAMCredentials.String] writes them (SCRAM-SHA-256$4096:salt$stored:server),
// so that the file holds no password; such an account cannot use CRAM-MD5.
// Blank lines and lines starting with # are ignored. A malformed line is an
// error that names its line number and, once it has the three fields, its
// account.
func Parse(r io.Reader) (Map, error) {
	return parse(r, func(n int) string { return fmt.Sprintf("accounts line %d", n) })
}

// Load reads the accounts file at path (see [Parse]). Its errors name the
// file and the line as path:line.
func Load(path string) (Map, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("odmr: %w", err)
	}
	defer f.Close()
	return parse(f, func(n int) string { return fmt.Sprintf("%s:%d", path, n) })
}

// parse reads an accounts file; line names a line in its errors.
func parse(r io.Reader, line func(n int) string) (Map, error) {
	out := make(Map)
	// owner names the account of each domain so far; domainList gives
	// the domains in canonical form, the form Owner compares.
	owner := make(map[string]string)
	sc := bufio.NewScanner(r)
	n := 1
	for ; sc.Scan(); n++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Fields(text)
		if len(f) != 3 {
			// No field is quoted: on a line cut in two, the first
			// might be the secret.
			return nil, fmt.Errorf("odmr: %s: want NAME SECRET DOMAIN[,DOMAIN...], found %d fields", line(n), len(f))
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("odmr: %s: account %q: %s", line(n), f[0], fmt.Sprintf(format, args...))
		}
		if _, dup := out[f[0]]; dup {
			return nil, bad("defined twice")
		}
		domains, err := domainList(f[2])
		if err != nil {
			return nil, bad("%s", err)
		}
		for _, d := range domains {
			if other, taken := owner[d]; taken {
				return nil, bad("domain %s already belongs to account %q", d, other)
			}
		}
		acct := Account{Name: f[0], Secret: f[1], Domains: domains}
		if strings.HasPrefix(strings.ToUpper(f[1]), "SCRAM-") && strings.Contains(f[1], "$") {
			acct.Secret = ""
			for _, cred := range strings.Split(f[1], ",") {
				c, err := odmr.ParseSCRAMCredentials(cred)
				if err != nil {
					return nil, bad("%s", strings.TrimPrefix(err.Error(), "odmr: "))
				}
				acct.SCRAM = append(acct.SCRAM, c)
			}
		}
		out[f[0]] = acct
		for _, d := range domains {
			owner[d] = f[0]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("odmr: %s: %w", line(n), err)
	}
	return out, nil
}

var (
	_ odmr.Authenticator      = Map(nil)
	_ odmr.SCRAMAuthenticator = Map(nil)
	_ odmr.DomainAuthorizer   = Map(nil)
)

// maxDomains is the most domains an account may have: as many as one
// ATRN may name, the limit [odmr.ParseATRN] checks.
const maxDomains = 256

// domainList parses the DOMAIN[,DOMAIN...] field of an accounts line the
// way [odmr.ParseATRN] parses the wire's, except that an internationalized
// domain may be given in U-labels (bücher.example): it comes back in
// A-labels. Its errors speak of the field, not of ATRN.
func domainList(field string) ([]string, error) {
	if n := strings.Count(field, ",") + 1; n > maxDomains {
		return nil, fmt.Errorf("%d domains, at most %d are allowed", n, maxDomains)
	}
	list, err := domainlist.Split(field)
	if err != nil {
		return nil, err
	}
	arg, err := domainlist.ToASCII(list)
	if err == nil {
		list, err = odmr.ParseATRN(arg)
	}
	if err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "odmr: "))
	}
	return list, nil
}
