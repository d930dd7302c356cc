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
// defaulting to the library's defaults; -h lists them.
//
// The accounts file has one account a line, NAME SECRET DOMAIN[,DOMAIN...],
// and # comments.
//
// SIGHUP reloads the accounts file and the TLS certificate and key; a
// file that does not load keeps the old one. SIGTERM and SIGINT stop it:
// sessions finish the message in flight, within -stop-timeout; a second
// SIGTERM or SIGINT closes them at once.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/accept"
	"github.com/go-odmr/odmr/internal/logfmt"
	"github.com/go-odmr/odmr/spool"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		// Errors of the odmr packages say "odmr: " already.
		fmt.Fprintln(os.Stderr, "odmr-provider:", strings.TrimPrefix(err.Error(), "odmr: "))
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
	hashUser                             string
	spoolDir, smarthost, smarthostTLS    string
	bouncesDir                           string
	maxAge                               time.Duration
	quotaBytes                           int64
	quotaMessages                        int
	list                                 bool
	limits                               limitFlags
	debugFile                            string
	auth                                 authFlags
	stopTimeout                          time.Duration
}

// limitFlags are the provider's session limits, each defaulting to the
// library's default so that -h shows it.
type limitFlags struct {
	maxSessions, maxSessionsPerNet int
	ipv4Prefix, ipv6Prefix         int
	authTimeout, sessionTimeout    time.Duration
	commandTimeout, replyTimeout   time.Duration
	dataTimeout, writeTimeout      time.Duration
	maxErrors, atrnBurst           int
	atrnInterval                   time.Duration
	connLogsPerSecond              int
}

func (l *limitFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&l.maxSessions, "max-sessions", odmr.DefaultMaxSessions, "serve at most `N` ODMR sessions at once (negative: no cap); when full, the oldest unauthenticated session makes room")
	fs.IntVar(&l.connLogsPerSecond, "conn-logs-per-second", odmr.DefaultConnLogsPerSecond, "log records about refused or evicted connections and sessions that never authenticate, per second (negative: no limit)")
	fs.IntVar(&l.maxSessionsPerNet, "max-sessions-per-network", odmr.DefaultMaxSessionsPerAddr, "serve at most `N` ODMR sessions from one network, as -ipv4-prefix and -ipv6-prefix size it (negative: no cap)")
	fs.IntVar(&l.ipv4Prefix, "ipv4-prefix", odmr.DefaultIPv4Prefix, "IPv4 networks counted by -max-sessions-per-network and the AUTH limits have `BITS` of prefix (1-32)")
	fs.IntVar(&l.ipv6Prefix, "ipv6-prefix", odmr.DefaultIPv6Prefix, "IPv6 networks counted by -max-sessions-per-network and the AUTH limits have `BITS` of prefix (1-128)")
	fs.DurationVar(&l.authTimeout, "auth-timeout", odmr.DefaultAuthTimeout, "close ODMR sessions not authenticated `DURATION` after connecting (negative: no limit)")
	fs.DurationVar(&l.sessionTimeout, "session-timeout", odmr.DefaultSessionTimeout, "close ODMR sessions that have not reached ATRN `DURATION` after connecting")
	fs.DurationVar(&l.commandTimeout, "command-timeout", odmr.DefaultCommandTimeout, "wait `DURATION` for each ODMR command")
	fs.DurationVar(&l.replyTimeout, "reply-timeout", odmr.DefaultReplyTimeout, "after ATRN, wait `DURATION` for the customer's greeting and each reply")
	fs.DurationVar(&l.dataTimeout, "data-timeout", odmr.DefaultDataTimeout, "after ATRN, wait `DURATION` for the reply to each message")
	fs.DurationVar(&l.writeTimeout, "write-timeout", odmr.DefaultWriteTimeout, "give up a write to an ODMR connection after `DURATION`")
	fs.IntVar(&l.maxErrors, "max-errors", odmr.DefaultMaxErrors, "close an ODMR session after `N` error replies")
	fs.DurationVar(&l.atrnInterval, "atrn-interval", odmr.DefaultATRNInterval, "after -atrn-burst, allow each identity one ATRN per `DURATION` (negative: no limit)")
	fs.IntVar(&l.atrnBurst, "atrn-burst", odmr.DefaultATRNBurst, "let an identity send `N` ATRN commands at once before -atrn-interval applies")
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
	fs.IntVar(&a.perSession, "max-auth-failures", odmr.DefaultMaxAuthFailures, "failed AUTH commands one session may make; the next failure closes it with 421")
	fs.IntVar(&a.failures, "auth-failures", odmr.DefaultAuthFailuresAllowed, "failed AUTH attempts one address (IPv6: /64) may make before each further one closes it for a doubling delay (negative: no limit)")
	fs.DurationVar(&a.backoff, "auth-backoff", odmr.DefaultAuthBackoff, "first delay after -auth-failures")
	fs.DurationVar(&a.maxBackoff, "auth-max-backoff", odmr.DefaultMaxAuthBackoff, "longest delay; an address's failures are forgotten after this long without one")
	fs.DurationVar(&a.guessInterval, "auth-guess-interval", odmr.DefaultAuthGuessInterval, "one more guess at an account's secret per `DURATION`, from all addresses together (negative: no limit)")
	fs.IntVar(&a.guessBurst, "auth-guess-burst", odmr.DefaultAuthGuessBurst, "guesses at an account's secret allowed at once")
	fs.IntVar(&a.limiterEntries, "auth-limiter-entries", odmr.DefaultAuthLimiterEntries, "addresses, and accounts, whose AUTH failures are remembered")
	fs.IntVar(&a.logsPerSecond, "auth-logs-per-second", odmr.DefaultAuthLogsPerSecond, "log records about failed AUTH per second (negative: no limit)")
	fs.StringVar(&a.scramSaltKeyFile, "scram-salt-key", "", "`FILE` whose contents derive the SCRAM salts of accounts with a secret; share it in a cluster (default: a random key, new at each start)")
	fs.IntVar(&a.scramCacheSize, "scram-cache-size", odmr.DefaultSCRAMCacheSize, "SCRAM keys derived from secrets that are cached (negative: none)")
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
	fs.StringVar(&c.accounts, "accounts", "", "accounts `FILE`: one account a line, NAME SECRET DOMAIN[,DOMAIN...]; # comments")
	fs.StringVar(&c.hostname, "hostname", "", "host `NAME` in greetings (default: the system host name)")
	fs.BoolVar(&c.allowInsecureAuth, "allow-insecure-auth", false, "offer AUTH PLAIN and LOGIN without TLS")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "certificate `FILE` (PEM): enables STARTTLS on the ODMR and SMTP listeners")
	fs.StringVar(&c.tlsKey, "tls-key", "", "private key `FILE` (PEM) for -tls-cert")
	fs.StringVar(&c.tlsListen, "tls-listen", "", "`ADDR` of an ODMR listener with implicit TLS (needs -tls-cert)")
	fs.BoolVar(&c.requireTLS, "require-tls", false, "refuse AUTH and ATRN outside TLS (fetchmail cannot then connect)")
	fs.BoolVar(&c.noChunking, "no-chunking", false, "deliver with DATA even to customers that offer CHUNKING (BDAT)")
	fs.StringVar(&c.hashUser, "hash-secret", "", "print SCRAM credentials for `USER` from a secret read on standard input, for the accounts file, and exit")
	fs.Int64Var(&c.maxMessageBytes, "max-message-size", 50<<20, "largest message the SMTP intake accepts, in `BYTES`")
	fs.BoolVar(&c.verbose, "v", false, "log every session event")
	fs.StringVar(&c.logFormat, "log-format", "text", "log records as `text` (key=value) or json (one JSON object a line)")
	fs.StringVar(&c.spoolDir, "spool", "", "keep the queue in `DIR` on disk (default: in memory, lost on restart)")
	fs.DurationVar(&c.maxAge, "max-age", spool.DefaultMaxAge, "bounce mail queued longer than `DURATION` (with -spool)")
	fs.StringVar(&c.smarthost, "smarthost", "", "send bounces (DSNs) through the SMTP server at `HOST:PORT` (with -spool; default: write them to -bounces)")
	fs.StringVar(&c.smarthostTLS, "smarthost-tls", "starttls", "TLS to the smarthost: `starttls`, tls (implicit) or none")
	fs.StringVar(&c.bouncesDir, "bounces", "", "write bounces to `DIR` when there is no -smarthost (default: SPOOL/bounces)")
	fs.Int64Var(&c.quotaBytes, "quota-bytes", 0, "most `BYTES` queued per domain, refused with 452 at intake (0: no limit; with -spool)")
	fs.IntVar(&c.quotaMessages, "quota-messages", 0, "most `MESSAGES` queued per domain (0: no limit; with -spool)")
	fs.BoolVar(&c.list, "list", false, "print what is queued in -spool per domain, and exit; reads only, creates nothing")
	fs.DurationVar(&c.stopTimeout, "stop-timeout", 30*time.Second, "on SIGTERM or SIGINT, wait up to `DURATION` for sessions to finish the message in flight, then close them (mail not acknowledged stays queued)")
	fs.StringVar(&c.debugFile, "debug", "", "append a transcript of every ODMR session to `FILE` (\"-\" for standard error); AUTH is redacted, but addresses and mail are in it")
	c.limits.register(fs)
	c.auth.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: odmr-provider -accounts FILE [flags]\n\n"+
			"Holds mail for customer domains and hands it out over ODMR (RFC 2645, port 366).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0))
	}
	if err := logfmt.Check(c.logFormat); err != nil {
		return nil, err
	}
	if c.hashUser != "" {
		return &c, nil
	}
	if c.list {
		if c.spoolDir == "" {
			return nil, errors.New("-list needs -spool DIR")
		}
		return &c, nil
	}
	if c.spoolDir == "" && (c.smarthost != "" || c.bouncesDir != "" || c.quotaBytes != 0 || c.quotaMessages != 0) {
		return nil, errors.New("-smarthost, -bounces and the quotas need -spool DIR")
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
	if c.stopTimeout <= 0 {
		return nil, fmt.Errorf("-stop-timeout: want a positive duration, not %v", c.stopTimeout)
	}
	if err := c.limits.check(); err != nil {
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
	if cfg.list {
		return listSpool(cfg.spoolDir, os.Stdout, time.Now(), log)
	}

	// Take SIGINT and SIGTERM from here on, so that one that comes while
	// the listeners start still stops the program cleanly; SIGHUP, which
	// would kill it, reloads the accounts and the certificate.
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)

	loaded, err := loadAccounts(cfg.accounts, log)
	if err != nil {
		return err
	}
	accounts := newAccountStore(loaded)
	queue, enqueue, checkQuota, closeQueue, err := openQueue(cfg, log)
	if err != nil {
		return err
	}
	defer closeQueue()

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
	odmrLn, err := listen(cfg.listen, "listen")
	if err != nil {
		return err
	}
	errc := make(chan error, 3)
	go func() { errc <- p.ServeListener(odmrLn) }()
	log.Info("odmr-provider: ODMR listening", "addr", odmrLn.Addr().String(), "accounts", len(loaded), "starttls", tlsConfig != nil)
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
		intakeSrv = smtp.NewServer(&intake{
			accounts:   accounts,
			log:        log,
			enqueue:    enqueue,
			checkQuota: checkQuota,
			hostname:   hostname,
		})
		intakeSrv.Domain = hostname
		intakeSrv.MaxMessageBytes = cfg.maxMessageBytes
		intakeSrv.MaxRecipients = 100
		intakeSrv.ReadTimeout = 5 * time.Minute
		intakeSrv.WriteTimeout = time.Minute
		intakeSrv.EnableSMTPUTF8 = true
		intakeSrv.EnableDSN = true
		intakeSrv.TLSConfig = tlsConfig
		// go-smtp retries only errors that say they are temporary, and
		// logs each retry: the wrapper retries ENOBUFS and ENOMEM too and
		// logs at most once a second.
		go func() { errc <- intakeSrv.Serve(accept.Retrying(smtpLn, log)) }()
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
				reloadAccounts(accounts, cfg.accounts, log)
				if certs != nil {
					certs.reload(log)
				}
				continue
			}
			log.Info("odmr-provider: stopping: no new sessions; those under way finish the message in flight",
				"signal", s.String(), "stop-timeout", cfg.stopTimeout)
			break wait
		case err := <-errc:
			p.Close()
			if intakeSrv != nil {
				intakeSrv.Close()
			}
			return err
		}
	}
	stop(p, intakeSrv, cfg.stopTimeout, sig, log)
	log.Info("odmr-provider: stopped")
	return nil
}

// stop shuts the ODMR sessions and the intake down together, giving them
// timeout to finish the message each has in flight; then it closes what is
// left, whose mail stays queued. A second SIGTERM or SIGINT on sig closes
// them at once; SIGHUP is ignored meanwhile.
func stop(p *odmr.Provider, intakeSrv *smtp.Server, timeout time.Duration, sig <-chan os.Signal, log *slog.Logger) {
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
				log.Warn("odmr-provider: second signal: closing the sessions at once", "signal", s.String())
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
			if err := intakeSrv.Shutdown(ctx); err != nil {
				log.Warn("odmr-provider: SMTP intake sessions still open at -stop-timeout; closing them", "err", err)
				intakeSrv.Close()
			}
		}()
	} else {
		close(done)
	}
	if err := p.Shutdown(ctx); err != nil {
		log.Warn("odmr-provider: ODMR sessions still running at -stop-timeout; closing them", "err", err)
		p.Close()
	}
	<-done
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
	if cfg.spoolDir == "" {
		q := &odmr.MemoryQueue{
			OnFailure: func(env odmr.Envelope, failed []odmr.RecipientResult) {
				for _, f := range failed {
					log.Warn("odmr-provider: delivery failed permanently; the in-memory queue sends no bounce",
						"id", env.ID, "from", env.From, "to", f.Recipient, "err", f.Err)
				}
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
