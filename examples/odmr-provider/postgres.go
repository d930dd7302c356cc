package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/pgqueue"
	"github.com/go-odmr/odmr/spool"
)

// A provider on several machines keeps its queue (-queue) and its
// accounts (-accounts) in PostgreSQL: every node sees the same mail and
// the same customers. Put the password in PGPASSWORD or ~/.pgpass rather
// than in the URL, which ps shows.

// isPostgresURL reports whether a -queue or -accounts value names a
// PostgreSQL database rather than a file.
func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// pgTimeout bounds the start-up connection and a lookup made where there
// is no context.
const pgTimeout = 30 * time.Second

// defaultQueueTempDir is where -queue spills large bodies by default:
// $TMPDIR when it is set, else /var/tmp, which is on disk where /tmp is
// often a tmpfs, in memory, that a few large messages at once would
// fill; os.TempDir where there is no /var/tmp.
func defaultQueueTempDir() string {
	if os.Getenv("TMPDIR") == "" {
		if fi, err := os.Stat("/var/tmp"); err == nil && fi.IsDir() {
			return "/var/tmp"
		}
	}
	return os.TempDir()
}

// checkTempDir fails unless a file can be created in dir, the
// -queue-temp-dir: a directory missing or not writable would otherwise
// show only when a large message arrives, each refused with a 451.
func checkTempDir(dir string) error {
	f, err := os.CreateTemp(dir, "odmr-provider-check-*")
	if err != nil {
		return fmt.Errorf("-queue-temp-dir: %w", err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// openPGQueue opens the queue in the database named by -queue.
func openPGQueue(cfg *config, bouncer spool.Bouncer, log *slog.Logger) (odmr.QueueSource, enqueuer, func(string) error, func(), error) {
	var quota pgqueue.QuotaFunc
	if cfg.quotaBytes > 0 || cfg.quotaMessages > 0 {
		quota = func(string) (int64, int) { return cfg.quotaBytes, cfg.quotaMessages }
	}
	// The intake's limit counts the data; the queue stores the Received
	// field before it too, and must not refuse with 552 a message the
	// intake accepted.
	maxBytes := cfg.maxMessageBytes + maxReceivedField
	if cfg.maxMessageBytes == 0 {
		maxBytes = -1 // none
	}
	if err := checkTempDir(cfg.queueTempDir); err != nil {
		return nil, nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	q, err := pgqueue.Open(ctx, cfg.queueURL, pgqueue.Options{
		MaxAge:          cfg.maxAge,
		LeaseTTL:        cfg.leaseTTL,
		QueryTimeout:    cfg.queueTimeout,
		Bouncer:         bouncer,
		Hostname:        cfg.hostname,
		Quota:           quota,
		MaxMessageBytes: maxBytes,
		TempDir:         cfg.queueTempDir,
		Logger:          log,
	})
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("-queue: %w", err)
	}
	log.Info("odmr-provider: queue in PostgreSQL", "max-age", cfg.maxAge, "temp-dir", cfg.queueTempDir)
	if bouncer == nil {
		log.Warn("odmr-provider: no -smarthost or -bounces: DSNs wait in the database (odmr_reports)")
	}
	return q, q.Enqueue, nil, func() { q.Close() }, nil
}

// openPGAdmin opens the queue in the database named by -queue for the
// queue tools: no background work, and no Bouncer, so the DSNs of
// -queue-bounce wait in the database for a provider node to send. Like
// any node it brings the schema up to date.
func openPGAdmin(cfg *config, log *slog.Logger) (queueAdmin, error) {
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	q, err := pgqueue.Open(ctx, cfg.queueURL, pgqueue.Options{
		MaxAge:              cfg.maxAge,
		LeaseTTL:            cfg.leaseTTL,
		QueryTimeout:        cfg.queueTimeout,
		Hostname:            cfg.hostname,
		MaintenanceInterval: -1,
		Logger:              log,
	})
	if err != nil {
		return nil, fmt.Errorf("-queue: %w", err)
	}
	return q, nil
}

// pgAccounts is the provider's Authenticator and Authorizer, and the
// intake's list of domains, from the database named by -accounts.
type pgAccounts struct {
	*pgqueue.Accounts
	log *slog.Logger
}

func openPGAccounts(url string, log *slog.Logger) (*pgAccounts, error) {
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	a, err := pgqueue.OpenAccounts(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("-accounts: %w", err)
	}
	return &pgAccounts{Accounts: a, log: log}, nil
}

// Owner tells the intake that every domain is served: the lookup in the
// database can fail, which Owner cannot say, so checkRecipient, the
// intake's next check, makes it.
func (a *pgAccounts) Owner(domain string) (accounts.Account, bool) {
	return accounts.Account{}, true
}

// checkRecipient returns the intake's recipient check: it refuses a
// recipient whose domain no account owns (550 5.7.1), answers 451 when
// the database cannot say, then asks next, if set.
func (a *pgAccounts) checkRecipient(next func(string) error) func(string) error {
	return func(rcpt string) error {
		ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
		defer cancel()
		owner, err := a.Accounts.Owner(ctx, odmr.RecipientDomain(rcpt))
		if err != nil {
			return err
		}
		if owner == "" {
			return errRelayDenied
		}
		if next != nil {
			return next(rcpt)
		}
		return nil
	}
}

// pgBouncer returns the Bouncer of a queue in PostgreSQL: through
// -smarthost, into -bounces, or none (DSNs wait in the database).
func pgBouncer(cfg *config, log *slog.Logger) spool.Bouncer {
	if cfg.smarthost != "" {
		sec := map[string]spool.Security{"starttls": spool.StartTLS, "tls": spool.ImplicitTLS, "none": spool.Plaintext}[cfg.smarthostTLS]
		log.Info("odmr-provider: bounces go through the smarthost", "smarthost", cfg.smarthost, "tls", cfg.smarthostTLS)
		return &spool.SMTPBouncer{Addr: cfg.smarthost, Security: sec, Hostname: cfg.hostname}
	}
	if cfg.bouncesDir != "" {
		return spool.DirBouncer{Dir: cfg.bouncesDir}
	}
	return nil
}

// loadPGAccounts copies the accounts of the file at path into the
// database named by url (-load-accounts), replacing those of the same
// names, and says how many.
func loadPGAccounts(url, path string, out io.Writer, log *slog.Logger) error {
	accts, err := loadAccounts(path, log)
	if err != nil {
		return err
	}
	a, err := openPGAccounts(url, log)
	if err != nil {
		return err
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	for _, acct := range accts {
		if err := a.Put(ctx, acct); err != nil {
			return fmt.Errorf("-load-accounts: account %q: %w", acct.Name, err)
		}
	}
	fmt.Fprintf(out, "%d accounts loaded into the database\n", len(accts))
	return nil
}

// listPG prints what is queued in the database per domain, and the DSNs
// waiting, with ages as of now (-list -queue). It changes nothing.
func listPG(url string, out io.Writer, now time.Time) error {
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	inv, err := pgqueue.Inspect(ctx, url)
	if err != nil {
		return fmt.Errorf("-list -queue: %w", err)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tMESSAGES\tSIZE\tOLDEST")
	for _, st := range inv.Domains {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", st.Domain, st.Messages, humanBytes(st.Bytes),
			st.Oldest.UTC().Format(time.RFC3339)+" ("+ago(now.Sub(st.Oldest))+")")
	}
	tw.Flush()
	fmt.Fprintf(out, "%s; %s, %s in all; %s waiting to be sent, %s set aside\n",
		count(len(inv.Domains), "domain"), count(inv.Messages, "message"), humanBytes(inv.Bytes),
		count(inv.PendingBounces, "bounce"), count(inv.DeadBounces, "dead bounce"))
	if inv.Held > 0 {
		fmt.Fprintf(out, "%s held, not counted above; see -queue-list\n", count(inv.Held, "message"))
	}
	return nil
}
