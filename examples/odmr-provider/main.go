// Command odmr-provider runs an ODMR provider (RFC 2645): it accepts mail
// for its customers' domains over SMTP and holds it until a customer
// connects to the ODMR port, authenticates and pulls it with ATRN.
//
// Usage:
//
//	odmr-provider -accounts FILE [-listen :366] [-smtp :25] [-hostname NAME] [flags]
//
// Flags set the session limits (-max-sessions, -max-sessions-per-network,
// -auth-timeout, the other timeouts, -atrn-interval and -atrn-burst), all
// defaulting to the library's defaults; -h lists them. -metrics ADDR
// serves Prometheus metrics at http://ADDR/metrics. It answers at once even
// while the spool builds its index after start (minutes for a million
// messages): the per-domain queue gauges are absent until the index is
// complete, and odmr_provider_queue_index_ready says which.
//
// The accounts file has one account a line, NAME SECRET DOMAIN[,DOMAIN...],
// and # comments.
//
// With -spool or -queue, the queue tools list, show, delete, bounce, hold
// and release queued messages and exit, safely beside running providers:
//
//	odmr-provider -spool DIR -queue-list | -queue-show ID | -queue-{delete,bounce,hold,release} ID...
//	odmr-provider -queue postgres://URL -queue-list | ...
//
// With -queue postgres://URL the queue, and with -accounts postgres://URL
// the accounts, are kept in PostgreSQL, so that several nodes serve the
// same customers and the same mail; -load-accounts FILE copies an
// accounts file into the database.
//
// SIGHUP reloads the accounts file and the TLS certificate and key; a
// file that does not load keeps the old one. SIGTERM and SIGINT stop it:
// sessions finish the message in flight, within -stop-timeout; a second
// SIGTERM or SIGINT closes them at once.
package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/accept"
	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/logfmt"
	"github.com/go-odmr/odmr/memqueue"
	"github.com/go-odmr/odmr/spool"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		// Errors of the odmr packages say "odmr: " already. Joined
		// errors (a queue tool given several IDs) come a line each.
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintln(os.Stderr, "odmr-provider:", strings.TrimPrefix(line, "odmr: "))
		}
		os.Exit(1)
	}
}

type config struct {
	logFormat                            string // text or json
	listen, smtpAddr, accounts, hostname string
	tlsCert, tlsKey, tlsListen           string
	allowInsecureAuth, verbose           bool
	requireTLS                           bool
	noChunking                           bool
	maxMessageBytes                      int64
	smtpMaxConns, smtpMaxConnsPerNet     int
	hashUser                             string
	spoolDir, smarthost, smarthostTLS    string
	queueURL, loadAccountsFile           string // PostgreSQL (postgres.go)
	leaseTTL, queueTimeout               time.Duration
	queueTempDir                         string
	bouncesDir                           string
	maxAge                               time.Duration
	quotaBytes                           int64
	quotaMessages                        int
	list                                 bool
	queue                                queueFlags
	limits                               limitFlags
	debugFile                            string
	auth                                 authFlags
	stopTimeout                          time.Duration
	metrics                              metricsFlags
}

// limitFlags are the provider's session limits, each defaulting to the
// library's default so that -h shows it.
type limitFlags struct {
	maxSessions, maxSessionsPerNet int
	ipv4Prefix, ipv6Prefix         int
	authTimeout, sessionTimeout    time.Duration
	commandTimeout, replyTimeout   time.Duration
	dataTimeout, writeTimeout      time.Duration
	backendTimeout                 time.Duration
	maxErrors, atrnBurst           int
	atrnInterval                   time.Duration
	connLogsPerSecond              int
}

func (l *limitFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&l.maxSessions, "max-sessions", defaults.MaxSessions, "serve at most `N` ODMR sessions at once (negative: no cap); when full, the oldest unauthenticated session makes room")
	fs.IntVar(&l.connLogsPerSecond, "conn-logs-per-second", defaults.ConnLogsPerSecond, "write at most `N` log records per second about refused or evicted connections and sessions that never authenticate (negative: no limit)")
	fs.IntVar(&l.maxSessionsPerNet, "max-sessions-per-network", defaults.MaxSessionsPerAddr, "serve at most `N` ODMR sessions from one network, as -ipv4-prefix and -ipv6-prefix size it (negative: no cap)")
	fs.IntVar(&l.ipv4Prefix, "ipv4-prefix", defaults.IPv4Prefix, "IPv4 networks counted by -max-sessions-per-network, -smtp-max-conns-per-network and the AUTH limits have `BITS` of prefix (1-32)")
	fs.IntVar(&l.ipv6Prefix, "ipv6-prefix", defaults.IPv6Prefix, "IPv6 networks counted by -max-sessions-per-network, -smtp-max-conns-per-network and the AUTH limits have `BITS` of prefix (1-128)")
	fs.DurationVar(&l.authTimeout, "auth-timeout", defaults.AuthTimeout, "close ODMR sessions not authenticated `DURATION` after connecting (negative: no limit; -session-timeout still ends them, credential lookups included)")
	fs.DurationVar(&l.sessionTimeout, "session-timeout", defaults.SessionTimeout, "close ODMR sessions that have not reached ATRN `DURATION` after connecting")
	fs.DurationVar(&l.commandTimeout, "command-timeout", defaults.CommandTimeout, "wait `DURATION` for each ODMR command")
	fs.DurationVar(&l.replyTimeout, "reply-timeout", defaults.ReplyTimeout, "after ATRN, wait `DURATION` for the customer's greeting and each reply")
	fs.DurationVar(&l.dataTimeout, "data-timeout", defaults.DataTimeout, "after ATRN, wait `DURATION` for the reply to each message")
	fs.DurationVar(&l.writeTimeout, "write-timeout", defaults.WriteTimeout, "give up a write to an ODMR connection after `DURATION`")
	fs.DurationVar(&l.backendTimeout, "backend-timeout", defaults.BackendTimeout, "give up each call to the accounts or the queue that a customer waits on (its domains and HasMail at ATRN, the claim and each next message while delivering) after `DURATION`: 451, or QUIT with the rest left queued (negative: no limit)")
	fs.IntVar(&l.maxErrors, "max-errors", defaults.MaxErrors, "close an ODMR session after `N` error replies")
	fs.DurationVar(&l.atrnInterval, "atrn-interval", defaults.ATRNInterval, "after -atrn-burst, allow each identity one ATRN per `DURATION` (negative: no limit)")
	fs.IntVar(&l.atrnBurst, "atrn-burst", defaults.ATRNBurst, "let an identity send `N` ATRN commands at once before -atrn-interval applies")
}

func (l *limitFlags) check() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"session-timeout", l.sessionTimeout}, {"command-timeout", l.commandTimeout},
		{"reply-timeout", l.replyTimeout}, {"data-timeout", l.dataTimeout},
		{"write-timeout", l.writeTimeout},
	} {
		if d.v <= 0 {
			return fmt.Errorf("-%s: want a positive duration, not %v", d.name, d.v)
		}
	}
	switch {
	case l.authTimeout == 0:
		return errors.New("-auth-timeout: want a positive duration, or a negative one for no limit")
	case l.backendTimeout == 0:
		return errors.New("-backend-timeout: want a positive duration, or a negative one for no limit")
	case l.atrnInterval == 0:
		return errors.New("-atrn-interval: want a positive duration, or a negative one for no limit")
	case l.maxSessions == 0 || l.maxSessionsPerNet == 0:
		return errors.New("-max-sessions and -max-sessions-per-network: want a positive number, or a negative one for no cap")
	case l.ipv4Prefix < 1 || l.ipv4Prefix > 32:
		return fmt.Errorf("-ipv4-prefix: want 1 to 32, not %d", l.ipv4Prefix)
	case l.ipv6Prefix < 1 || l.ipv6Prefix > 128:
		return fmt.Errorf("-ipv6-prefix: want 1 to 128, not %d", l.ipv6Prefix)
	case l.maxErrors < 1 || l.atrnBurst < 1:
		return errors.New("-max-errors and -atrn-burst: want at least 1")
	}
	return nil
}

// apply sets the limits on p.
func (l *limitFlags) apply(p *odmr.Provider) {
	p.MaxSessions, p.MaxSessionsPerAddr = l.maxSessions, l.maxSessionsPerNet
	p.IPv4Prefix, p.IPv6Prefix = l.ipv4Prefix, l.ipv6Prefix
	p.AuthTimeout, p.SessionTimeout = l.authTimeout, l.sessionTimeout
	p.CommandTimeout, p.ReplyTimeout = l.commandTimeout, l.replyTimeout
	p.DataTimeout, p.WriteTimeout = l.dataTimeout, l.writeTimeout
	p.BackendTimeout = l.backendTimeout
	p.MaxErrors = l.maxErrors
	p.ATRNInterval, p.ATRNBurst = l.atrnInterval, l.atrnBurst
	p.ConnLogsPerSecond = l.connLogsPerSecond
}

// authFlags are the AUTH limits (issue 12), in their own block.
type authFlags struct {
	perSession          int
	failures            int
	backoff, maxBackoff time.Duration
	guessInterval       time.Duration
	guessBurst          int
	limiterEntries      int
	logsPerSecond       int
	scramSaltKeyFile    string
	scramCacheSize      int
}

func (a *authFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&a.perSession, "max-auth-failures", defaults.MaxAuthFailures, "a session may make `N` failed AUTH commands; the next failure closes it with 421")
	fs.IntVar(&a.failures, "auth-failures", defaults.AuthFailuresAllowed, "one network (as -ipv4-prefix and -ipv6-prefix size it) may make `N` failed AUTH attempts before each further one closes it for a doubling delay (negative: no limit)")
	fs.DurationVar(&a.backoff, "auth-backoff", defaults.AuthBackoff, "the first delay after -auth-failures is `DURATION`")
	fs.DurationVar(&a.maxBackoff, "auth-max-backoff", defaults.MaxAuthBackoff, "the delay grows up to `DURATION`; a network's failures are forgotten after that long without one")
	fs.DurationVar(&a.guessInterval, "auth-guess-interval", defaults.AuthGuessInterval, "one more guess at an account's secret per `DURATION`, from all addresses together (negative: no limit)")
	fs.IntVar(&a.guessBurst, "auth-guess-burst", defaults.AuthGuessBurst, "allow `N` guesses at an account's secret at once, before -auth-guess-interval applies")
	fs.IntVar(&a.limiterEntries, "auth-limiter-entries", defaults.AuthLimiterEntries, "remember the AUTH failures of `N` networks, and of N accounts")
	fs.IntVar(&a.logsPerSecond, "auth-logs-per-second", defaults.AuthLogsPerSecond, "write at most `N` log records about failed AUTH per second (negative: no limit)")
	fs.StringVar(&a.scramSaltKeyFile, "scram-salt-key", "", "`FILE` whose contents derive the SCRAM salts of accounts with a secret; share it in a cluster (default: a random key, new at each start)")
	fs.IntVar(&a.scramCacheSize, "scram-cache-size", defaults.SCRAMCacheSize, "cache `N` SCRAM keys derived from secrets (negative: none)")
}

// apply sets the limits on p.
func (a *authFlags) apply(p *odmr.Provider) error {
	if a.perSession < 1 {
		return fmt.Errorf("-max-auth-failures: want at least 1, not %d", a.perSession)
	}
	p.MaxAuthFailures = a.perSession
	p.AuthFailuresAllowed = a.failures
	p.AuthBackoff, p.MaxAuthBackoff = a.backoff, a.maxBackoff
	p.AuthGuessInterval, p.AuthGuessBurst = a.guessInterval, a.guessBurst
	p.AuthLimiterEntries = a.limiterEntries
	p.AuthLogsPerSecond = a.logsPerSecond
	p.SCRAMCacheSize = a.scramCacheSize
	if a.scramSaltKeyFile != "" {
		key, err := os.ReadFile(a.scramSaltKeyFile)
		if err != nil {
			return fmt.Errorf("-scram-salt-key: %w", err)
		}
		if len(key) < 16 {
			return errors.New("-scram-salt-key: the key file holds fewer than 16 bytes")
		}
		p.SCRAMSaltKey = key
	}
	return nil
}

func parseFlags(args []string) (*config, error) {
	var c config
	fs := flag.NewFlagSet("odmr-provider", flag.ContinueOnError)
	fs.StringVar(&c.listen, "listen", fmt.Sprintf(":%d", odmr.Port), "`ADDR` of the ODMR listener")
	fs.StringVar(&c.smtpAddr, "smtp", ":25", "`ADDR` of the SMTP intake for mail to the customers' domains (\"\" for none)")
	fs.StringVar(&c.accounts, "accounts", "", "accounts `FILE`: one account a line, NAME SECRET DOMAIN[,DOMAIN...]; # comments; or a postgres:// URL to keep them in PostgreSQL")
	fs.StringVar(&c.hostname, "hostname", "", "host `NAME` in greetings (default: the system host name)")
	fs.BoolVar(&c.allowInsecureAuth, "allow-insecure-auth", false, "offer AUTH PLAIN and LOGIN without TLS")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "certificate `FILE` (PEM): enables STARTTLS on the ODMR and SMTP listeners")
	fs.StringVar(&c.tlsKey, "tls-key", "", "private key `FILE` (PEM) for -tls-cert")
	fs.StringVar(&c.tlsListen, "tls-listen", "", "`ADDR` of an ODMR listener with implicit TLS (needs -tls-cert)")
	fs.BoolVar(&c.requireTLS, "require-tls", false, "refuse AUTH and ATRN outside TLS (fetchmail cannot then connect)")
	fs.BoolVar(&c.noChunking, "no-chunking", false, "deliver with DATA even to customers that offer CHUNKING (BDAT)")
	fs.StringVar(&c.hashUser, "hash-secret", "", "print SCRAM credentials for `USER` from a secret read on standard input, for the accounts file, and exit")
	fs.Int64Var(&c.maxMessageBytes, "max-message-size", 50<<20, "largest message the SMTP intake accepts, in `BYTES` (0: no limit)")
	fs.IntVar(&c.smtpMaxConns, "smtp-max-conns", defaultIntakeMaxConns, "serve at most `N` SMTP intake connections at once, answering further ones 421 (negative: no cap)")
	fs.IntVar(&c.smtpMaxConnsPerNet, "smtp-max-conns-per-network", defaultIntakeMaxConnsPerNet, "serve at most `N` SMTP intake connections from one network at once, as -ipv4-prefix and -ipv6-prefix size it, answering further ones 421 (negative: no cap)")
	fs.BoolVar(&c.verbose, "v", false, "log every session event")
	fs.StringVar(&c.logFormat, "log-format", "text", "log records as `text` (key=value) or json (one JSON object a line)")
	fs.StringVar(&c.spoolDir, "spool", "", "keep the queue in `DIR` on disk (default: in memory, lost on restart)")
	fs.DurationVar(&c.maxAge, "max-age", spool.DefaultMaxAge, "bounce mail queued longer than `DURATION` (with -spool or -queue)")
	fs.StringVar(&c.smarthost, "smarthost", "", "send bounces (DSNs) through the SMTP server at `HOST:PORT` (with -spool or -queue; default: write them to -bounces)")
	fs.StringVar(&c.smarthostTLS, "smarthost-tls", "starttls", "TLS to the smarthost: `starttls`, tls (implicit) or none")
	fs.StringVar(&c.bouncesDir, "bounces", "", "write bounces to `DIR` when there is no -smarthost (default: SPOOL/bounces with -spool; with -queue, none: they wait in the database)")
	fs.Int64Var(&c.quotaBytes, "quota-bytes", 0, "most `BYTES` queued per domain, refused with 452 at intake (0: no limit; with -spool or -queue)")
	fs.IntVar(&c.quotaMessages, "quota-messages", 0, "most `MESSAGES` queued per domain (0: no limit; with -spool or -queue)")
	fs.StringVar(&c.queueURL, "queue", "", "keep the queue in the PostgreSQL database at `URL` (postgres://...), shared by every node; password in PGPASSWORD or ~/.pgpass")
	fs.DurationVar(&c.queueTimeout, "queue-timeout", time.Minute, "with -queue, give up the database work that has no other bound (a body chunk, a record, a lease's release, a DSN, an enqueue once the body is read) after `DURATION`")
	fs.StringVar(&c.queueTempDir, "queue-temp-dir", defaultQueueTempDir(), "with -queue, spill message bodies over 256 KiB to `DIR` while the SMTP intake reads them, before they go to the database (default: $TMPDIR if set, else /var/tmp, on disk where /tmp may be in memory)")
	fs.DurationVar(&c.leaseTTL, "lease-ttl", 15*time.Minute, "with -queue, a node's hold on mail it delivers lapses after `DURATION` without progress, so another node delivers the mail of a node that died")
	fs.StringVar(&c.loadAccountsFile, "load-accounts", "", "copy the accounts of `FILE` into the -accounts postgres:// database, replacing those of the same names, and exit")
	fs.BoolVar(&c.list, "list", false, "print what is queued in -spool or -queue per domain, and exit; reads only, creates nothing")
	c.queue.register(fs)
	fs.DurationVar(&c.stopTimeout, "stop-timeout", 30*time.Second, "on SIGTERM or SIGINT, wait up to `DURATION` for sessions to finish the message in flight, then close them and wait up to 10s for them to end (mail not acknowledged stays queued); idle SMTP clients are let go at once")
	fs.StringVar(&c.debugFile, "debug", "", "append a transcript of every ODMR session to `FILE` (\"-\" for standard error); AUTH is redacted, but addresses and mail are in it")
	c.limits.register(fs)
	c.auth.register(fs)
	c.metrics.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: odmr-provider -accounts FILE [flags]\n"+
			"       odmr-provider -spool DIR -queue-list | -queue-show ID | -queue-{delete,bounce,hold,release} ID...\n\n"+
			"Holds mail for customer domains and hands it out over ODMR (RFC 2645, port 366).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := c.queue.check(fs.Args(), cmp.Or(c.spoolDir, c.queueURL)); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 && !c.queue.write {
		return nil, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0))
	}
	if err := logfmt.Check(c.logFormat); err != nil {
		return nil, err
	}
	if c.hashUser != "" {
		return &c, nil
	}
	if c.queueURL != "" && (c.spoolDir != "" || !isPostgresURL(c.queueURL)) {
		return nil, errors.New("-queue wants a postgres:// URL, and not with -spool")
	}
	if c.queue.cmd != "" {
		if c.list {
			return nil, fmt.Errorf("-list and %s: one at a time", c.queue.cmd)
		}
		return &c, nil
	}
	if c.list {
		if c.spoolDir == "" && c.queueURL == "" {
			return nil, errors.New("-list needs -spool DIR or -queue URL")
		}
		return &c, nil
	}
	if c.loadAccountsFile != "" {
		if !isPostgresURL(c.accounts) {
			return nil, errors.New("-load-accounts needs -accounts postgres://URL")
		}
		return &c, nil
	}
	if c.spoolDir == "" && c.queueURL == "" && (c.smarthost != "" || c.bouncesDir != "" || c.quotaBytes != 0 || c.quotaMessages != 0) {
		return nil, errors.New("-smarthost, -bounces and the quotas need -spool DIR or -queue URL")
	}
	switch c.smarthostTLS {
	case "starttls", "tls", "none":
	default:
		return nil, fmt.Errorf("-smarthost-tls: want starttls, tls or none, not %q", c.smarthostTLS)
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if (c.tlsListen != "" || c.requireTLS) && c.tlsCert == "" {
		return nil, errors.New("-tls-listen and -require-tls need -tls-cert and -tls-key")
	}
	if c.smtpMaxConns == 0 {
		return nil, errors.New("-smtp-max-conns: want a positive number, or a negative one for no cap")
	}
	if c.smtpMaxConnsPerNet == 0 {
		return nil, errors.New("-smtp-max-conns-per-network: want a positive number, or a negative one for no cap")
	}
	if c.hostname != "" && !validHostname(c.hostname) {
		return nil, fmt.Errorf("-hostname: %q is not a host name (letters, digits and hyphens, in labels between dots) or an address literal such as [192.0.2.1]", c.hostname)
	}
	if c.queueTimeout <= 0 {
		return nil, fmt.Errorf("-queue-timeout: want a positive duration, not %v", c.queueTimeout)
	}
	if c.stopTimeout <= 0 {
		return nil, fmt.Errorf("-stop-timeout: want a positive duration, not %v", c.stopTimeout)
	}
	// The queues take 0 or less as their default, 5 days: a -max-age 0
	// meant as "never" must not pass for it.
	if c.maxAge <= 0 {
		return nil, fmt.Errorf("-max-age: want a positive duration, not %v", c.maxAge)
	}
	if c.quotaBytes < 0 || c.quotaMessages < 0 {
		return nil, errors.New("-quota-bytes and -quota-messages: want 0 (no limit) or more")
	}
	if c.maxMessageBytes < 0 {
		return nil, fmt.Errorf("-max-message-size: want 0 (no limit) or more, not %d", c.maxMessageBytes)
	}
	if err := c.limits.check(); err != nil {
		return nil, err
	}
	if err := c.metrics.check(); err != nil {
		return nil, err
	}
	if c.accounts == "" {
		return nil, errors.New("-accounts FILE is required: one account a line, NAME SECRET DOMAIN[,DOMAIN...]")
	}
	return &c, nil
}

func run(args []string) error {
	cfg, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if cfg.hashUser != "" {
		return hashSecret(cfg.hashUser, os.Stdin, os.Stdout)
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	log := logfmt.New(os.Stderr, cfg.logFormat, level)
	if cfg.list && cfg.queueURL != "" {
		return listPG(cfg.queueURL, os.Stdout, time.Now())
	}
	if cfg.list {
		return listSpool(cfg.spoolDir, os.Stdout, time.Now(), log)
	}
	if cfg.queue.cmd != "" {
		return runQueueTool(cfg, os.Stdin, os.Stdout, time.Now(), log)
	}
	if cfg.loadAccountsFile != "" {
		return loadPGAccounts(cfg.accounts, cfg.loadAccountsFile, os.Stdout, log)
	}

	// Take SIGINT and SIGTERM from here on, so that one that comes while
	// the listeners start still stops the program cleanly; SIGHUP, which
	// would kill it, reloads the accounts and the certificate.
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)

	var accounts interface {
		odmr.Authenticator
		odmr.SCRAMAuthenticator
		odmr.DomainAuthorizer
		Owner(domain string) (accounts.Account, bool)
	}
	var fileAccounts *accountStore // nil with -accounts postgres://
	var pga *pgAccounts
	var nAccounts any = "in PostgreSQL"
	if isPostgresURL(cfg.accounts) {
		if pga, err = openPGAccounts(cfg.accounts, log); err != nil {
			return err
		}
		defer pga.Close()
		accounts = pga
	} else {
		loaded, err := loadAccounts(cfg.accounts, log)
		if err != nil {
			return err
		}
		fileAccounts = newAccountStore(loaded)
		nAccounts = len(loaded)
		accounts = fileAccounts
	}
	queue, enqueue, checkQuota, closeQueue, err := openQueue(cfg, log)
	if err != nil {
		return err
	}
	defer closeQueue()
	if pga != nil {
		checkQuota = pga.checkRecipient(checkQuota)
	}

	var tlsConfig *tls.Config
	var certs *certStore
	if cfg.tlsCert != "" {
		certs = &certStore{certFile: cfg.tlsCert, keyFile: cfg.tlsKey}
		if err := certs.load(); err != nil {
			return err
		}
		tlsConfig = &tls.Config{GetCertificate: certs.get, MinVersion: tls.VersionTLS12}
	}
	p := &odmr.Provider{
		Hostname:          cfg.hostname,
		Authenticator:     accounts,
		Authorizer:        accounts,
		Queue:             queue,
		AllowInsecureAuth: cfg.allowInsecureAuth,
		TLSConfig:         tlsConfig,
		RequireTLS:        cfg.requireTLS,
		DisableChunking:   cfg.noChunking,
		Logger:            log,
	}
	cfg.limits.apply(p)
	if cfg.debugFile != "" {
		w, closeDebug, err := openDebug(cfg.debugFile)
		if err != nil {
			return err
		}
		defer closeDebug()
		p.Debug = w
		log.Warn("odmr-provider: writing session transcripts", "file", cfg.debugFile)
	}
	if err := cfg.auth.apply(p); err != nil {
		return err
	}
	var metrics *providerMetrics
	if cfg.metrics.addr != "" {
		metrics = newProviderMetrics(queue, cfg.metrics, log)
		p.Trace = metrics.trace()
		stopMetrics, err := startMetrics(cfg.metrics, metrics, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	odmrLn, err := listen(cfg.listen, "listen")
	if err != nil {
		return err
	}
	errc := make(chan error, 3)
	go func() { errc <- p.ServeListener(odmrLn) }()
	log.Info("odmr-provider: ODMR listening", "addr", odmrLn.Addr().String(), "accounts", nAccounts, "starttls", tlsConfig != nil)
	if cfg.tlsListen != "" {
		tlsLn, err := listen(cfg.tlsListen, "tls-listen")
		if err != nil {
			p.Close()
			return err
		}
		go func() { errc <- p.ServeListener(tls.NewListener(tlsLn, tlsConfig)) }()
		log.Info("odmr-provider: ODMR listening with implicit TLS", "addr", tlsLn.Addr().String())
	}

	var intakeSrv *smtp.Server
	var in *intake
	if cfg.smtpAddr != "" {
		smtpLn, err := listen(cfg.smtpAddr, "smtp")
		if err != nil {
			p.Close()
			return err
		}
		hostname := p.Hostname
		if hostname == "" {
			hostname, _ = os.Hostname()
		}
		in = &intake{
			accounts:       accounts,
			log:            log,
			enqueue:        enqueue,
			checkQuota:     checkQuota,
			hostname:       hostname,
			metrics:        metrics,
			maxConns:       cfg.smtpMaxConns,
			maxConnsPerNet: cfg.smtpMaxConnsPerNet,
			v4Prefix:       cfg.limits.ipv4Prefix,
			v6Prefix:       cfg.limits.ipv6Prefix,
		}
		intakeSrv = newIntakeServer(in, cfg.maxMessageBytes, tlsConfig)
		// go-smtp retries only errors that say they are temporary, and
		// logs each retry: the wrapper retries ENOBUFS and ENOMEM too and
		// logs at most once a second.
		go func() { errc <- intakeSrv.Serve(in.listen(accept.Retrying(smtpLn, log))) }()
		log.Info("odmr-provider: SMTP intake listening", "addr", smtpLn.Addr().String())
	} else {
		log.Warn("odmr-provider: no SMTP intake (-smtp \"\"): nothing can be queued")
	}

wait:
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				log.Info("odmr-provider: SIGHUP: reloading")
				if fileAccounts != nil {
					reloadAccounts(fileAccounts, cfg.accounts, log)
				}
				if certs != nil {
					certs.reload(log)
				}
				continue
			}
			log.Info("odmr-provider: stopping: no new sessions; those under way finish the message in flight",
				"signal", logfmt.SignalName(s), "stop-timeout", cfg.stopTimeout)
			break wait
		case err := <-errc:
			if intakeSrv != nil {
				intakeSrv.Close()
			}
			closeAndWait(p, log)
			return err
		}
	}
	stop(p, intakeSrv, in, cfg.stopTimeout, sig, log)
	log.Info("odmr-provider: stopped")
	return nil
}

// closeWait bounds the wait for the ODMR sessions to end once closed.
const closeWait = 10 * time.Second

// stop shuts the ODMR sessions and the intake down together, giving them
// timeout to finish the message each has in flight; idle intake clients
// are let go at once. Then it closes what is left, whose mail stays
// queued, and waits up to closeWait for the closed ODMR sessions to end:
// they record what the customer acknowledged, which would otherwise be
// delivered again once the queue is closed under them. A second SIGTERM
// or SIGINT on sig closes them at once; SIGHUP is ignored meanwhile.
func stop(p *odmr.Provider, intakeSrv *smtp.Server, in *intake, timeout time.Duration, sig <-chan os.Signal, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		for {
			select {
			case s := <-sig:
				if s == syscall.SIGHUP {
					log.Info("odmr-provider: SIGHUP while stopping: nothing reloaded")
					continue
				}
				log.Warn("odmr-provider: second signal: closing the sessions at once", "signal", logfmt.SignalName(s))
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	done := make(chan struct{})
	if intakeSrv != nil {
		go func() {
			defer close(done)
			in.stop()
			if err := intakeSrv.Shutdown(ctx); err != nil {
				log.Warn("odmr-provider: SMTP intake sessions still open at -stop-timeout; closing them", "err", err)
				in.closeAll() // go-smtp's Close does nothing after Shutdown
			}
		}()
	} else {
		close(done)
	}
	if err := p.Shutdown(ctx); err != nil {
		log.Warn("odmr-provider: ODMR sessions still running at -stop-timeout; closing them", "err", err)
		closeAndWait(p, log)
	}
	<-done
}

// closeAndWait closes the provider's sessions and waits up to closeWait
// for them to end: Close interrupts them and returns, and the queue must
// not be closed under them.
func closeAndWait(p *odmr.Provider, log *slog.Logger) {
	p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), closeWait)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		log.Error("odmr-provider: ODMR sessions still running after being closed; exiting, their mail may be delivered again", "wait", closeWait)
	}
}

// hashSecret reads a secret and prints SCRAM-SHA-256 and SCRAM-SHA-1
// credentials for the accounts file.
func hashSecret(user string, in io.Reader, out io.Writer) error {
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && err != io.EOF {
		return err
	}
	secret := strings.TrimRight(line, "\r\n")
	if secret == "" {
		return errors.New("-hash-secret: no secret on standard input")
	}
	var creds []string
	for _, mech := range []string{odmr.SCRAMSHA256, odmr.SCRAMSHA1} {
		c, err := odmr.NewSCRAMCredentials(mech, user, secret, 0)
		if err != nil {
			return err
		}
		creds = append(creds, c.String())
	}
	_, err = fmt.Fprintln(out, strings.Join(creds, ","))
	return err
}

// openDebug opens the -debug transcript file, or standard error for "-".
func openDebug(name string) (io.Writer, func(), error) {
	if name == "-" {
		return os.Stderr, func() {}, nil
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("-debug: %w", err)
	}
	return f, func() { f.Close() }, nil
}

// listen opens a TCP listener with an error message that says what to do.
func listen(addr, flagName string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		return l, nil
	}
	if errors.Is(err, syscall.EACCES) {
		return nil, fmt.Errorf("-%s %s: %v (ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another port with -%s)",
			flagName, addr, err, flagName)
	}
	return nil, fmt.Errorf("-%s %s: %w", flagName, addr, err)
}

// openQueue opens the spool named by -spool, or an in-memory queue.
func openQueue(cfg *config, log *slog.Logger) (odmr.QueueSource, enqueuer, func(string) error, func(), error) {
	if cfg.queueURL != "" {
		return openPGQueue(cfg, pgBouncer(cfg, log), log)
	}
	if cfg.spoolDir == "" {
		q := &memqueue.Queue{
			// The provider has logged each failure ("odmr: bounced",
			// with the reply): say only what it cannot know.
			OnFailure: func(env odmr.Envelope, failed []odmr.RecipientResult) {
				to := make([]string, len(failed))
				for i, f := range failed {
					to[i] = f.Recipient
				}
				log.Info("odmr-provider: no bounce sent: the in-memory queue sends none", "id", env.ID, "from", env.From, "to", to)
			},
		}
		log.Warn("odmr-provider: no -spool: the queue is in memory and will not survive a restart")
		enqueue := func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
			return q.Enqueue(env, body)
		}
		return q, enqueue, nil, func() {}, nil
	}
	var bouncer spool.Bouncer
	if cfg.smarthost != "" {
		sec := map[string]spool.Security{"starttls": spool.StartTLS, "tls": spool.ImplicitTLS, "none": spool.Plaintext}[cfg.smarthostTLS]
		bouncer = &spool.SMTPBouncer{Addr: cfg.smarthost, Security: sec, Hostname: cfg.hostname}
		log.Info("odmr-provider: bounces go through the smarthost", "smarthost", cfg.smarthost, "tls", cfg.smarthostTLS)
	} else {
		dir := cfg.bouncesDir
		if dir == "" {
			dir = filepath.Join(cfg.spoolDir, "bounces")
		}
		db := spool.DirBouncer{Dir: dir}
		bouncer = spool.BouncerFunc(func(ctx context.Context, env odmr.Envelope, dsn io.Reader) error {
			if err := db.Bounce(ctx, env, dsn); err != nil {
				return err
			}
			log.Warn("odmr-provider: bounce written; no -smarthost to send it", "dir", dir, "id", env.ID, "to", env.To)
			return nil
		})
	}
	var quota spool.QuotaFunc
	if cfg.quotaBytes > 0 || cfg.quotaMessages > 0 {
		quota = func(string) (int64, int) { return cfg.quotaBytes, cfg.quotaMessages }
	}
	s, err := spool.Open(cfg.spoolDir, spool.Options{
		MaxAge:   cfg.maxAge,
		Bouncer:  bouncer,
		Hostname: cfg.hostname,
		Quota:    quota,
		Logger:   log,
	})
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("-spool %s: %w", cfg.spoolDir, err)
	}
	log.Info("odmr-provider: spool opened", "dir", cfg.spoolDir, "max-age", cfg.maxAge)
	if q, err := s.Quarantined(); err == nil && len(q) > 0 {
		log.Error("odmr-provider: damaged messages are held in quarantine; see their .reason files, and -list",
			"count", len(q), "dir", filepath.Join(cfg.spoolDir, "quarantine"))
	}
	enqueue := func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
		return s.Enqueue(ctx, env, body)
	}
	return s, enqueue, s.CheckQuota, func() { s.Close() }, nil
}

// listSpool prints what is queued in the spool in dir per domain, the
// DSNs waiting and the damaged messages, with ages as of now. It changes
// nothing on disk (spool.Inspect), and a directory that holds no spool is
// an error, not a new spool.
func listSpool(dir string, out io.Writer, now time.Time, log *slog.Logger) error {
	inv, err := spool.Inspect(dir, log)
	if err != nil {
		return fmt.Errorf("-list -spool %s: %w", dir, err)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tMESSAGES\tSIZE\tOLDEST\tUNREADABLE")
	for _, st := range inv.Domains {
		oldest := "-"
		if !st.Oldest.IsZero() {
			oldest = st.Oldest.UTC().Format(time.RFC3339) + " (" + ago(now.Sub(st.Oldest)) + ")"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\n", st.Domain, st.Messages, humanBytes(st.Bytes), oldest, st.Unreadable)
	}
	tw.Flush()
	fmt.Fprintf(out, "%s; %s, %s in all; %s waiting to be sent\n",
		count(len(inv.Domains), "domain"), count(inv.Messages, "message"), humanBytes(inv.Bytes), count(inv.PendingBounces, "bounce"))
	if inv.Held > 0 {
		fmt.Fprintf(out, "%s held, not counted above; see -queue-list\n", count(inv.Held, "message"))
	}
	if len(inv.Damaged) > 0 {
		fmt.Fprintf(out, "%s in %s, to be quarantined when the provider opens the spool:\n",
			count(len(inv.Damaged), "damaged message"), filepath.Join(dir, "queue"))
		printDamaged(out, inv.Damaged)
	}
	if len(inv.Quarantined) > 0 {
		fmt.Fprintf(out, "%s held in %s, not delivered:\n", count(len(inv.Quarantined), "damaged message"), filepath.Join(dir, "quarantine"))
		printDamaged(out, inv.Quarantined)
	}
	return nil
}

// printDamaged prints one line a message: its ID and why it is damaged.
func printDamaged(out io.Writer, msgs []spool.QuarantinedMessage) {
	for _, m := range msgs {
		reason := strings.TrimPrefix(m.Reason, "quarantined ")
		reason, _, _ = strings.Cut(reason, "\nfrom:")
		fmt.Fprintf(out, "  %s  %s\n", m.ID, strings.ReplaceAll(reason, "\n", "  "))
	}
}

// count returns n and noun, plural unless n is 1: "1 message", "2 messages".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// ago says how long ago something happened d ago, in its largest whole
// unit, rounded down: "19s ago", "3m ago", "2h ago", "4d ago".
func ago(d time.Duration) string {
	day := 24 * time.Hour
	switch {
	case d < 0:
		return "in the future"
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", d/time.Second)
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", d/time.Minute)
	case d < day:
		return fmt.Sprintf("%dh ago", d/time.Hour)
	}
	return fmt.Sprintf("%dd ago", d/day)
}

// humanBytes writes n in bytes below 1 KiB, else in binary units with one
// decimal, rounded down: "512 B", "1.5 KiB", "3.0 MiB".
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	u, div := 0, int64(1024)
	for n/div >= 1024 && u < len(units)-1 {
		div *= 1024
		u++
	}
	frac := uint64(n%div) * 10 / uint64(div) // below 2⁶⁰·10, no overflow
	return fmt.Sprintf("%d.%d %s", n/div, frac, units[u])
}

// validHostname reports whether name can stand as the domain of the
// greeting and of EHLO (RFC 5321 section 4.1.2): a domain name of
// letters, digits and hyphens, in labels between dots, or an address
// literal.
func validHostname(name string) bool {
	if lit, ok := strings.CutPrefix(name, "["); ok {
		lit, ok = strings.CutSuffix(lit, "]")
		if v6, is6 := strings.CutPrefix(lit, "IPv6:"); is6 {
			a, err := netip.ParseAddr(v6)
			return ok && err == nil && a.Is6()
		}
		a, err := netip.ParseAddr(lit)
		return ok && err == nil && a.Is4()
	}
	// One domain as ATRN names it, which ParseATRN checks: it would also
	// take a list, and trim blanks.
	if strings.ContainsAny(name, ", \t") {
		return false
	}
	if ds, err := odmr.ParseATRN(name); err != nil || len(ds) != 1 {
		return false
	}
	labels := strings.Split(strings.TrimSuffix(name, "."), ".")
	return strings.Trim(labels[len(labels)-1], "0123456789") != "" // an IP address goes in brackets
}
