package odmr

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
)

// Account is one customer of a provider: its user name, its shared secret
// and the domains it may pull.
type Account struct {
	Name    string
	Secret  string
	Domains []string
}

// Accounts is a static credential store: both the [Authenticator] and the
// [DomainAuthorizer] of a small provider. The map key is the user name.
type Accounts map[string]Account

// Secret returns the account's secret, or ErrUnknownUser.
func (a Accounts) Secret(ctx context.Context, username string) ([]byte, error) {
	acct, ok := a[username]
	if !ok {
		return nil, ErrUnknownUser
	}
	return []byte(acct.Secret), nil
}

// Domains returns the account's domains.
func (a Accounts) Domains(ctx context.Context, identity string) ([]string, error) {
	return a[identity].Domains, nil
}

// Owner returns the account that may pull domain, if any.
func (a Accounts) Owner(domain string) (Account, bool) {
	domain = RecipientDomain("@" + domain)
	for _, acct := range a {
		for _, d := range acct.Domains {
			if d == domain {
				return acct, true
			}
		}
	}
	return Account{}, false
}

// ParseAccounts reads an accounts file: one account a line as
//
//	NAME SECRET DOMAIN[,DOMAIN...]
//
// separated by spaces or tabs. Blank lines and lines starting with # are
// ignored. A malformed line is an error that names its line number.
func ParseAccounts(r io.Reader) (Accounts, error) {
	out := make(Accounts)
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("odmr: accounts line %d: want NAME SECRET DOMAIN[,DOMAIN...], found %d fields", n, len(f))
		}
		if _, dup := out[f[0]]; dup {
			return nil, fmt.Errorf("odmr: accounts line %d: account %q defined twice", n, f[0])
		}
		domains, err := ParseATRN(f[2])
		if err != nil {
			return nil, fmt.Errorf("odmr: accounts line %d: %v", n, strings.TrimPrefix(err.Error(), "odmr: "))
		}
		for _, d := range domains {
			if other, taken := out.Owner(d); taken {
				return nil, fmt.Errorf("odmr: accounts line %d: domain %s already belongs to %q", n, d, other.Name)
			}
		}
		out[f[0]] = Account{Name: f[0], Secret: f[1], Domains: domains}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("odmr: reading accounts: %w", err)
	}
	return out, nil
}

// LoadAccounts reads the accounts file at path (see [ParseAccounts]).
func LoadAccounts(path string) (Accounts, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("odmr: %w", err)
	}
	defer f.Close()
	a, err := ParseAccounts(f)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return a, nil
}

var (
	_ Authenticator    = Accounts(nil)
	_ DomainAuthorizer = Accounts(nil)
)
