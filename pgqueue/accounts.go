package pgqueue

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
)

// Accounts is the provider's customers in PostgreSQL, so that every node
// sees the same ones: the [odmr.Authenticator], [odmr.SCRAMAuthenticator]
// and [odmr.DomainAuthorizer] of a provider on several machines, with the
// semantics of the accounts file ([accounts.Map]). An account has a
// shared secret, or SCRAM credentials only (then it cannot use CRAM-MD5),
// or both, and the domains it may pull; a domain belongs to one account at
// most. Create it with [OpenAccounts] or [NewAccounts]; it is safe for
// concurrent use.
type Accounts struct {
	pool     *pgxpool.Pool
	ownsPool bool
}

// OpenAccounts connects to the database named by dsn, applies the schema
// migrations, and returns its accounts. Close closes the connections.
func OpenAccounts(ctx context.Context, dsn string) (*Accounts, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("odmr: %w", err)
	}
	a, err := NewAccounts(ctx, pool)
	if err != nil {
		pool.Close()
		return nil, err
	}
	a.ownsPool = true
	return a, nil
}

// NewAccounts returns the accounts in the database of pool, after applying
// the schema migrations. The caller keeps the pool.
func NewAccounts(ctx context.Context, pool *pgxpool.Pool) (*Accounts, error) {
	if err := Migrate(ctx, pool); err != nil {
		return nil, err
	}
	return &Accounts{pool: pool}, nil
}

// Close closes the connections of Accounts made by OpenAccounts.
func (a *Accounts) Close() error {
	if a.ownsPool {
		a.pool.Close()
	}
	return nil
}

// Secret returns the account's shared secret, an error matching
// odmr.ErrUnknownUser, or odmr.ErrNoSecret for an account that keeps only
// SCRAM credentials. A database error is a temporary failure.
func (a *Accounts) Secret(ctx context.Context, username string) ([]byte, error) {
	var secret string
	err := a.pool.QueryRow(ctx, "SELECT secret FROM odmr_accounts WHERE username = $1", username).Scan(&secret)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, odmr.ErrUnknownUser
	}
	if err != nil {
		return nil, fmt.Errorf("odmr: looking up an account: %w", err)
	}
	if secret == "" {
		return nil, odmr.ErrNoSecret
	}
	return []byte(secret), nil
}

// SCRAMCredentials returns the account's stored credentials for
// mechanism, odmr.ErrUnknownUser, or odmr.ErrNoSecret when it has none
// stored for it (the provider then derives them from the secret).
func (a *Accounts) SCRAMCredentials(ctx context.Context, mechanism, username string) (odmr.SCRAMCredentials, error) {
	var creds []string
	err := a.pool.QueryRow(ctx, "SELECT scram FROM odmr_accounts WHERE username = $1", username).Scan(&creds)
	if errors.Is(err, pgx.ErrNoRows) {
		return odmr.SCRAMCredentials{}, odmr.ErrUnknownUser
	}
	if err != nil {
		return odmr.SCRAMCredentials{}, fmt.Errorf("odmr: looking up an account: %w", err)
	}
	for _, s := range creds {
		c, err := odmr.ParseSCRAMCredentials(s)
		if err != nil {
			return odmr.SCRAMCredentials{}, fmt.Errorf("odmr: account %q has damaged SCRAM credentials: %w", username, err)
		}
		if c.Mechanism == mechanism {
			return c, nil
		}
	}
	return odmr.SCRAMCredentials{}, odmr.ErrNoSecret
}

// Domains returns the domains identity may pull; none for an unknown
// identity.
func (a *Accounts) Domains(ctx context.Context, identity string) ([]string, error) {
	rows, err := a.pool.Query(ctx, "SELECT domain FROM odmr_account_domains WHERE username = $1 ORDER BY domain", identity)
	if err != nil {
		return nil, fmt.Errorf("odmr: looking up an account's domains: %w", err)
	}
	domains, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("odmr: looking up an account's domains: %w", err)
	}
	return domains, nil
}

// Owner returns the name of the account that may pull domain, or "" when
// none may.
func (a *Accounts) Owner(ctx context.Context, domain string) (string, error) {
	var name string
	err := a.pool.QueryRow(ctx, "SELECT username FROM odmr_account_domains WHERE domain = $1", canonical(domain)).Scan(&name)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("odmr: looking up a domain's owner: %w", err)
	}
	return name, nil
}

// Put creates the account acct.Name, or replaces it: its secret, SCRAM
// credentials and domains. It fails, changing nothing, when a domain
// belongs to another account, is not a valid domain, or the account would
// have neither a secret nor SCRAM credentials.
func (a *Accounts) Put(ctx context.Context, acct accounts.Account) error {
	if acct.Name == "" || strings.ContainsFunc(acct.Name, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("odmr: invalid account name %q", acct.Name)
	}
	if acct.Secret == "" && len(acct.SCRAM) == 0 {
		return fmt.Errorf("odmr: account %q has neither a secret nor SCRAM credentials", acct.Name)
	}
	var domains []string
	for _, d := range acct.Domains {
		c := canonical(d)
		if _, err := odmr.ParseATRN(c); err != nil || c == "" {
			return fmt.Errorf("odmr: account %q: invalid domain %q", acct.Name, d)
		}
		domains = append(domains, c)
	}
	creds := make([]string, len(acct.SCRAM))
	for i, c := range acct.SCRAM {
		creds[i] = c.String()
	}
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("odmr: storing an account: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `INSERT INTO odmr_accounts (username, secret, scram) VALUES ($1, $2, $3)
		ON CONFLICT (username) DO UPDATE SET secret = excluded.secret, scram = excluded.scram`,
		acct.Name, acct.Secret, creds); err != nil {
		return fmt.Errorf("odmr: storing an account: %w", err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM odmr_account_domains WHERE username = $1", acct.Name); err != nil {
		return fmt.Errorf("odmr: storing an account: %w", err)
	}
	for _, d := range domains {
		_, err := tx.Exec(ctx, "INSERT INTO odmr_account_domains (domain, username) VALUES ($1, $2)", d, acct.Name)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" { // unique_violation
			return fmt.Errorf("odmr: domain %s already belongs to another account", d)
		}
		if err != nil {
			return fmt.Errorf("odmr: storing an account: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("odmr: storing an account: %w", err)
	}
	return nil
}

// Delete removes the account name and its domains; removing an account
// that does not exist is not an error.
func (a *Accounts) Delete(ctx context.Context, name string) error {
	if _, err := a.pool.Exec(ctx, "DELETE FROM odmr_accounts WHERE username = $1", name); err != nil {
		return fmt.Errorf("odmr: deleting an account: %w", err)
	}
	return nil
}

var (
	_ odmr.Authenticator      = (*Accounts)(nil)
	_ odmr.SCRAMAuthenticator = (*Accounts)(nil)
	_ odmr.DomainAuthorizer   = (*Accounts)(nil)
)
