package odmr

import "context"

// testAccounts is the credential store of the internal tests, in the
// shape of accounts.Map, which they cannot import (package accounts
// imports this one).
type testAccounts map[string]testAccount

type testAccount struct {
	Name    string
	Secret  string
	SCRAM   []SCRAMCredentials
	Domains []string
}

func (a testAccounts) Secret(ctx context.Context, username string) ([]byte, error) {
	acct, ok := a[username]
	if !ok {
		return nil, ErrUnknownUser
	}
	if acct.Secret == "" {
		return nil, ErrNoSecret
	}
	return []byte(acct.Secret), nil
}

func (a testAccounts) SCRAMCredentials(ctx context.Context, mechanism, username string) (SCRAMCredentials, error) {
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

func (a testAccounts) Domains(ctx context.Context, identity string) ([]string, error) {
	return a[identity].Domains, nil
}
