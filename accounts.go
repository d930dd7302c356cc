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
// or SCRAM credentials, and the domains it may pull.
type Account struct {
	Name string
	// Secret is the shared secret; "" when only SCRAM credentials are kept,
	// which rules out CRAM-MD5 for the account.
	Secret string
	// SCRAM holds stored SCRAM credentials, at most one per mechanism.
	SCRAM   []SCRAMCredentials
	Domains []string
}

// Accounts is a static credential store: both the [Authenticator] and the
// [DomainAuthorizer] of a small provider. The map key is the user name.
type Accounts map[string]Account

// Secret returns the account's secret, ErrUnknownUser, or ErrNoSecret for
// an account that keeps only SCRAM credentials.
func (a Accounts) Secret(ctx context.Context, username string) ([]byte, error) {
	acct, ok := a[username]
	if !ok {
		return nil, ErrUnknownUser
	}
	if acct.Secret == "" {
		return nil, ErrNoSecret
	}
	return []byte(acct.Secret), nil
}

// SCRAMCredentials returns the account's stored credentials for mechanism,
// ErrUnknownUser, or ErrNoSecret when it has none stored (the provider then
// derives them from the secret).
func (a Accounts) SCRAMCredentials(ctx context.Context, mechanism, username string) (SCRAMCredentials, error) {
	acct, ok := a[username]
	if !ok {
		return SCRAMCredentials{}, ErrUnknownUser
	}
	for _, c := range acct.SCRAM {
		if c.Mechanism == mechanism {
			return c, nil
		}
	}
	return SCRAMCredentials{}, ErrNoSecret
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
			if RecipientDomain("@"+d) == domain {
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
// separated by spaces or tabs. SECRET is the shared secret, or instead one
// or more SCRAM credentials separated by commas, as
// [SCRAMCredentials.String] writes them (SCRAM-SHA-256$4096:salt$stored:server),
// so that the file holds no password; such an account cannot use CRAM-MD5.
// Blank lines and lines starting with # are ignored. A malformed line is an
// error that names its line number.
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
		domains, err := parseDomainList(strings.Split(f[2], ","))
		if err != nil {
			return nil, fmt.Errorf("odmr: accounts line %d: %v", n, strings.TrimPrefix(err.Error(), "odmr: "))
		}
		for _, d := range domains {
			if other, taken := out.Owner(d); taken {
				return nil, fmt.Errorf("odmr: accounts line %d: domain %s already belongs to %q", n, d, other.Name)
			}
		}
		acct := Account{Name: f[0], Secret: f[1], Domains: domains}
		if strings.HasPrefix(strings.ToUpper(f[1]), "SCRAM-") && strings.Contains(f[1], "$") {
			acct.Secret = ""
			for _, cred := range strings.Split(f[1], ",") {
				c, err := ParseSCRAMCredentials(cred)
				if err != nil {
					return nil, fmt.Errorf("odmr: accounts line %d: %v", n, strings.TrimPrefix(err.Error(), "odmr: "))
				}
				acct.SCRAM = append(acct.SCRAM, c)
			}
		}
		out[f[0]] = acct
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
	_ Authenticator      = Accounts(nil)
	_ SCRAMAuthenticator = Accounts(nil)
	_ DomainAuthorizer   = Accounts(nil)
)
