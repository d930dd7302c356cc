// Command odmr-customer collects the mail an ODMR provider (RFC 2645)
// holds for your domains and delivers it locally: into a Maildir, to a
// local SMTP or LMTP server with the envelope kept, or by relaying the
// session byte for byte to a local SMTP server as fetchmail does.
//
// Usage:
//
//	odmr-customer -provider HOST[:PORT] -user NAME -secret-file FILE
//	    [-domains a.example,b.example] (-maildir DIR | -lmtp ADDR | -smtp ADDR | -relay HOST:PORT)
//	    [-tls | -starttls | -no-tls] [-ca FILE] [-cert FILE -key FILE] [-debug]
//	    [-every DURATION] [-v] [-progress DURATION]
//
// Run it from cron or a network hook each time the link comes up, or as
// a daemon with -every. The exit status tells what happened; see -h. A
// fetch that runs longer than -progress (10s) logs how far it got every
// -progress; -v logs a line per message.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/domainlist"
	"github.com/go-odmr/odmr/internal/logfmt"
	"github.com/go-odmr/odmr/internal/sockaddr"
	"github.com/go-odmr/odmr/internal/termsafe"
	"github.com/go-odmr/odmr/maildir"
	"github.com/go-odmr/odmr/smtpsink"
)

// Exit statuses, close to fetchmail's for the same events.
const (
	exitMail      = 0 // mail was collected
	exitNoMail    = 1 // no mail waiting (453, or nothing sent after the swap)
	exitFailure   = 2 // connection, TLS or protocol failure
	exitAuth      = 3 // authentication refused or impossible
	exitRefused   = 4 // ATRN refused (450), or the provider does not do ATRN
	exitUsage     = 5 // bad flags or configuration
	exitLocal     = 6 // the local target did not take all the mail
	exitTemporary = 8 // the provider is busy or cannot serve now (451, 421, 454)
	// A fetch stopped by a signal exits 128 plus the signal's number, as
	// a shell reports it: 130 for SIGINT, 143 for SIGTERM.
)

const usageText = `Usage: odmr-customer -provider HOST[:PORT] -user NAME -secret-file FILE
                     (-domains a.example,b.example | -accept-domains a.example,b.example)
                     TARGET [flags]
       odmr-customer -provider HOST:PORT -tls -cert FILE -key FILE TARGET [flags]

Collects the mail an ODMR provider (RFC 2645) holds for your domains: it
connects (port 366 by default), authenticates, asks for the domains with
ATRN and receives the mail as an SMTP server on the same connection. The
secret is read from -secret-file, or from the environment variable
ODMR_SECRET; it is never taken on the command line.

Authentication uses the strongest mechanism the provider offers: EXTERNAL
(the client certificate of -cert, under TLS), SCRAM-SHA-256, SCRAM-SHA-1,
CRAM-MD5, then PLAIN or LOGIN, which send the secret itself and are used
only under TLS unless -allow-insecure-auth is given. With -cert, -user and
the secret are optional: without them only EXTERNAL is tried.

Domains: -domains asks for those domains with ATRN. Without it the customer
sends a bare ATRN, for every domain of the account, and -accept-domains must
list the domains whose mail it takes. Either way, after the swap a recipient
outside these domains is refused with 550 5.7.1 and never reaches TARGET: a
hostile provider cannot relay through your mail server. So is a recipient
with sender-specified routing (a percent sign, a bang or a quoted @ in
its local part), which a local server would send on, unless
-allow-routed-local-parts, and a domain written otherwise than as yours
(ｅｘａｍｐｌｅ.org).

TLS:
  (default)          STARTTLS whenever the provider offers it, before AUTH;
                     clear text, with a warning, when it does not
  -tls               TLS from the first byte (implicit TLS); give the port
  -starttls          STARTTLS required: fails if the provider does not
                     offer it
  -no-tls            never TLS, even when the provider offers STARTTLS
  -ca FILE           PEM certificates to trust for the provider instead of
                     the system's roots
  -cert FILE -key FILE
                     PEM client certificate and key, for SASL EXTERNAL
The provider's certificate is always verified, for the host of -provider;
when it does not verify the fetch fails (status 2), never falls back to
clear text: give -ca FILE with the CA that signed it, or -no-tls.

Daemon mode:
  -every DURATION    fetch, wait DURATION, fetch again, like fetchmail -d,
                     until SIGTERM or SIGINT; a line per run says how it
                     ended and when the next one starts. After a failure
                     (any status but 0, 1 and 5) the wait doubles with
                     each failure in a row, from 2*DURATION up to
                     -max-backoff, and is drawn at random between half
                     and all of that, so that customers do not return to
                     a provider all at once; a success resets it. A
                     usage error (5) ends the daemon. SIGTERM or SIGINT
                     stops the fetch under way (the mail not yet taken
                     stays at the provider) and the program exits 0;
                     SIGHUP ends the wait and fetches at once (systemctl
                     reload), like fetchmail's SIGUSR1.

Progress:
  -v                 log each step, and a line per message: "message
                     received" with its ID, sender, number of
                     recipients and size (-maildir, -lmtp, -smtp), or
                     "message relayed" with the local server's reply,
                     which names its queue ID (-relay)
  -progress DURATION every DURATION while a fetch runs (default 10s),
                     log the messages the local target took so far, their
                     bytes and the rate; a shorter fetch logs none, and 0
                     turns it off

TARGET is exactly one of:
  -maildir DIR       store each message in the Maildir DIR (created if missing)
  -lmtp ADDR         deliver to an LMTP server (host:port or a socket path),
                     keeping the envelope; recipients are checked one by one
  -smtp ADDR         deliver to an SMTP server (host:port), keeping the envelope;
                     one local session carries the whole fetch, each RCPT is
                     passed on as it arrives
  -relay HOST:PORT   pass the session byte for byte to a local SMTP server,
                     as fetchmail does; its replies go to the provider

Exit status:
  0  mail was collected, and the local target took all of it (recipients
     outside your domains, refused by the customer itself, are logged)
  1  no mail was waiting
  2  connection, TLS (the provider's certificate) or protocol failure
  3  authentication refused (535, 530), or no usable mechanism
  4  ATRN refused (450: a domain not yours, or asking too often), or the
     provider does not offer ATRN
  5  usage or configuration error
  6  the local target did not take all the mail: it refused messages or
     recipients (a full disk, an unknown user, a 4xx or 5xx reply), or it
     could not be reached; the provider keeps what was refused
     temporarily and tries again, and bounces what was refused for good
  8  temporary failure at the provider (451, 421, 454): try again later
  130, 143
     interrupted by SIGINT (Ctrl-C) or stopped by SIGTERM; the mail not
     yet taken stays at the provider (with -every: 0, a clean stop)

Flags:
`

type config struct {
	provider, user, secretFile, domains, hostname string
	acceptDomains                                 string
	allowRouted                                   bool
	maildir, lmtp, smtp, relay                    string
	timeout                                       time.Duration
	startTLS, noTLS, allowInsecureAuth, verbose   bool
	implicitTLS, debug, noDSN                     bool
	logFormat                                     string // text or json
	caFile, certFile, keyFile                     string
	maxMessageSize                                int64
	every, maxBackoff                             time.Duration
	progress                                      time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	var c config
	fs := flag.NewFlagSet("odmr-customer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.provider, "provider", "", "the provider, `HOST[:PORT]` (port 366 by default)")
	fs.StringVar(&c.user, "user", "", "account `NAME` at the provider")
	fs.StringVar(&c.secretFile, "secret-file", "", "`FILE` holding the secret (default: $ODMR_SECRET)")
	fs.StringVar(&c.domains, "domains", "", "`DOMAINS` to collect, comma-separated (default: all of the account's, with -accept-domains)")
	fs.BoolVar(&c.allowRouted, "allow-routed-local-parts", false, "take recipients with %, ! or @ in the local part (only for a -maildir, which never forwards)")
	fs.StringVar(&c.acceptDomains, "accept-domains", "", "`DOMAINS` whose recipients are taken, besides -domains; required without -domains")
	fs.StringVar(&c.maildir, "maildir", "", "store mail in the Maildir `DIR`")
	fs.StringVar(&c.lmtp, "lmtp", "", "deliver to the LMTP server at `ADDR`")
	fs.StringVar(&c.smtp, "smtp", "", "deliver to the SMTP server at `ADDR`")
	fs.StringVar(&c.relay, "relay", "", "relay the session to the SMTP server at `HOST:PORT`")
	fs.BoolVar(&c.noDSN, "no-dsn", false, "with -lmtp or -smtp: never offer DSN to the provider (default: offered when the local server's EHLO or LHLO lists DSN, asked once per fetch)")
	fs.StringVar(&c.hostname, "hostname", "", "`NAME` for EHLO and the SMTP greeting (default: the system host name)")
	fs.DurationVar(&c.timeout, "timeout", defaults.CommandTimeout, "wait up to `DURATION` for each reply and, after the swap, for the provider (ATRN always gets at least 10m)")
	fs.BoolVar(&c.startTLS, "starttls", false, "require STARTTLS before AUTH, verifying the provider's certificate (default: STARTTLS when offered)")
	fs.BoolVar(&c.noTLS, "no-tls", false, "never use TLS, even when the provider offers STARTTLS")
	fs.BoolVar(&c.implicitTLS, "tls", false, "connect with TLS from the first byte (implicit TLS), verifying the provider's certificate")
	fs.StringVar(&c.caFile, "ca", "", "PEM `FILE` of the certificates to trust for the provider (default: the system's roots)")
	fs.StringVar(&c.certFile, "cert", "", "PEM `FILE` of a client certificate, for AUTH EXTERNAL (needs -key, and TLS)")
	fs.StringVar(&c.keyFile, "key", "", "PEM `FILE` of the client certificate's private key")
	fs.BoolVar(&c.allowInsecureAuth, "allow-insecure-auth", false, "allow AUTH PLAIN and LOGIN without TLS")
	fs.Int64Var(&c.maxMessageSize, "max-message-size", 0, "largest message to accept, in `BYTES` (0: no limit; with -relay the local server decides)")
	fs.DurationVar(&c.every, "every", 0, "run as a daemon: fetch every `DURATION` until SIGTERM or SIGINT, backing off after failures (0: fetch once and exit)")
	fs.DurationVar(&c.maxBackoff, "max-backoff", time.Hour, "with -every: wait at most `DURATION` after failures in a row; at least -every")
	fs.DurationVar(&c.progress, "progress", 10*time.Second, "while a fetch runs, log the messages taken, their bytes and the rate every `DURATION` (0: never)")
	fs.BoolVar(&c.verbose, "v", false, "log each step and each message, and the commands and replies before the swap")
	fs.StringVar(&c.logFormat, "log-format", "text", "log records as `text` (key=value) or json (one JSON object a line, the summary of each fetch included; -debug transcripts stay text)")
	fs.BoolVar(&c.debug, "debug", false, "print the session's transcript (C: and P: lines) to stderr, AUTH redacted")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0))
	case logfmt.Check(c.logFormat) != nil:
		return nil, logfmt.Check(c.logFormat)
	case c.provider == "":
		return nil, errors.New("-provider HOST[:PORT] is required")
	case c.user == "" && c.certFile == "":
		return nil, errors.New("-user NAME is required (or -cert FILE -key FILE for EXTERNAL)")
	case c.timeout <= 0:
		return nil, errors.New("-timeout must be positive")
	case c.every < 0:
		return nil, errors.New("-every must not be negative")
	case c.progress < 0:
		return nil, errors.New("-progress must not be negative")
	case c.every > 0 && c.maxBackoff < c.every:
		return nil, errors.New("-max-backoff must be at least -every")
	case c.implicitTLS && c.startTLS:
		return nil, errors.New("give -tls or -starttls, not both")
	case c.noTLS && (c.implicitTLS || c.startTLS):
		return nil, errors.New("-no-tls contradicts -tls and -starttls")
	case c.certFile != "" && c.keyFile == "":
		return nil, errors.New("-cert FILE needs -key FILE")
	case c.keyFile != "" && c.certFile == "":
		return nil, errors.New("-key FILE needs -cert FILE")
	case c.certFile != "" && c.noTLS:
		return nil, errors.New("-cert contradicts -no-tls: a client certificate is sent only under TLS")
	case c.caFile != "" && c.noTLS:
		return nil, errors.New("-ca contradicts -no-tls")
	}
	if c.maxMessageSize < 0 {
		return nil, fmt.Errorf("-max-message-size: want 0 (no limit) or more, not %d", c.maxMessageSize)
	}
	// The local target is reached only once the provider has mail: an
	// address it cannot be would fail every fetch that has some.
	for _, a := range []struct{ flag, addr string }{{"-lmtp", c.lmtp}, {"-smtp", c.smtp}, {"-relay", c.relay}} {
		if network, addr := sockaddr.Split(a.addr); a.addr != "" && network == "tcp" {
			if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
				return nil, fmt.Errorf("%s %s: want HOST:PORT, or the path of a Unix socket", a.flag, a.addr)
			}
		}
	}
	for _, d := range []struct{ flag, list string }{{"-domains", c.domains}, {"-accept-domains", c.acceptDomains}} {
		if err := checkDomains(d.list); err != nil {
			return nil, fmt.Errorf("%s: %v", d.flag, err)
		}
	}
	n := 0
	for _, t := range []string{c.maildir, c.lmtp, c.smtp, c.relay} {
		if t != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("give exactly one of -maildir DIR, -lmtp ADDR, -smtp ADDR or -relay HOST:PORT")
	}
	return &c, nil
}

// checkDomains checks a comma-separated list of domains as odmr.Customer
// will, so that a mistake is a usage error naming its flag (status 5,
// which also ends a daemon) rather than a failed fetch (status 2, retried
// for ever by -every).
func checkDomains(list string) error {
	if list == "" {
		return nil
	}
	ds, err := domainlist.Split(list)
	if err != nil {
		return err
	}
	arg, err := domainlist.ToASCII(ds)
	if err == nil {
		_, err = odmr.ParseATRN(arg)
	}
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "odmr: "))
	}
	return nil
}

// readSecret reads the secret from the file, or from ODMR_SECRET. With a
// client certificate and no -user, there is none to read.
func readSecret(c *config, log *slog.Logger) (string, error) {
	if c.user == "" {
		if c.secretFile != "" {
			return "", errors.New("-secret-file needs -user NAME")
		}
		return "", nil
	}
	if c.secretFile == "" {
		s := os.Getenv("ODMR_SECRET")
		if s == "" {
			return "", errors.New("no secret: give -secret-file FILE or set ODMR_SECRET")
		}
		return s, nil
	}
	fi, err := os.Stat(c.secretFile)
	if err != nil {
		return "", fmt.Errorf("-secret-file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("odmr-customer: the secret file is readable by others; chmod 600 it", "file", c.secretFile)
	}
	b, err := os.ReadFile(c.secretFile)
	if err != nil {
		return "", fmt.Errorf("-secret-file: %w", err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("-secret-file %s is empty", c.secretFile)
	}
	return s, nil
}

// tlsConfig builds the TLS configuration of the flags; nil with -no-tls.
func tlsConfig(c *config) (*tls.Config, error) {
	if c.noTLS {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, fmt.Errorf("-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca %s: no PEM certificate in it", c.caFile)
		}
	}
	if c.certFile != "" {
		cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err != nil {
			return nil, fmt.Errorf("-cert %s -key %s: %w", c.certFile, c.keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	stderr = &logfmt.LockedWriter{W: stderr}
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitMail
	} else if err != nil {
		fmt.Fprintln(stderr, "odmr-customer:", err)
		return exitUsage
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	log := logfmt.New(stderr, cfg.logFormat, level)
	// The program's own lines (the outcome of each fetch, the daemon's
	// runs) are for people; with -log-format json they are log records
	// too, so that every line on standard error is JSON.
	out, errOut := io.Writer(stderr), io.Writer(stderr)
	if cfg.logFormat == "json" {
		out, errOut = lineLog{log, slog.LevelInfo}, lineLog{log, slog.LevelError}
	}

	secret, err := readSecret(cfg, log)
	if err != nil {
		fmt.Fprintln(errOut, "odmr-customer:", err)
		return exitUsage
	}
	tlsCfg, err := tlsConfig(cfg)
	if err != nil {
		fmt.Fprintln(errOut, "odmr-customer:", err)
		return exitUsage
	}
	c := &odmr.Customer{
		Addr:              cfg.provider,
		ImplicitTLS:       cfg.implicitTLS,
		TLSConfig:         tlsCfg,
		OpportunisticTLS:  !cfg.implicitTLS && !cfg.startTLS && !cfg.noTLS,
		Username:          cfg.user,
		Secret:            secret,
		Hostname:          cfg.hostname,
		AllowInsecureAuth: cfg.allowInsecureAuth,
		MaxMessageSize:    cfg.maxMessageSize,
		CommandTimeout:    cfg.timeout,
		ATRNTimeout:       max(cfg.timeout, defaults.ATRNTimeout),
		IdleTimeout:       cfg.timeout,
		Logger:            log,
	}
	if cfg.debug {
		c.Debug = stderr
	}
	if cfg.domains != "" {
		c.Domains = strings.Split(cfg.domains, ",")
	}
	if cfg.acceptDomains != "" {
		c.AcceptDomains = strings.Split(cfg.acceptDomains, ",")
	}
	c.AllowRoutedLocalParts = cfg.allowRouted
	prog := &progress{every: cfg.progress, log: log}
	switch {
	case cfg.maildir != "":
		sink, err := maildir.New(cfg.maildir)
		if err != nil {
			fmt.Fprintln(errOut, "odmr-customer: -maildir:", strings.TrimPrefix(err.Error(), "odmr: maildir: "))
			return exitUsage
		}
		c.Sink = sink
	case cfg.lmtp != "":
		sink := smtpsink.NewLMTP(cfg.lmtp)
		sink.NoDSN = cfg.noDSN
		c.Sink = sink
	case cfg.smtp != "":
		sink := smtpsink.New(cfg.smtp)
		sink.NoDSN = cfg.noDSN
		c.Sink = sink
	case cfg.relay != "":
		// The relay logs each message the local server took, at -v.
		c.Handler = odmr.Relay(cfg.relay)
	}
	// The customer reports the counts after each message the target took
	// (Sink or Relay alike). The sink is given unwrapped, so that the
	// customer finds what it can do: smtpsink's one local session per
	// fetch, its recipient checks and its DSN.
	c.Progress = func(r odmr.FetchResult) { prog.set(r.Messages, r.Bytes) }

	ctx, stop := signalContext(context.Background())
	defer stop()
	fetch := func(ctx context.Context) int { return fetchOnce(ctx, c, cfg, prog, out, errOut) }
	if cfg.every > 0 {
		// SIGHUP, which would otherwise kill the daemon, asks for a
		// fetch now.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		d := &daemon{every: cfg.every, maxBackoff: cfg.maxBackoff, out: out, wake: hup}
		code := d.run(ctx, fetch)
		if sig := caughtSignal(ctx); sig != nil {
			fmt.Fprintf(out, "odmr-customer: stopped by %s\n", logfmt.SignalName(sig))
		}
		return code
	}
	code := fetch(ctx)
	if sig := caughtSignal(ctx); sig != nil {
		if sig == syscall.SIGINT {
			fmt.Fprintln(out, "odmr-customer: interrupted")
		} else {
			fmt.Fprintf(out, "odmr-customer: stopped by %s\n", logfmt.SignalName(sig))
		}
		return 128 + int(sig.(syscall.Signal))
	}
	return code
}

// fetchOnce runs one fetch, with progress reports while it runs, prints
// its outcome to out, or errOut for a failure, and returns its exit
// status.
func fetchOnce(ctx context.Context, c *odmr.Customer, cfg *config, prog *progress, out, errOut io.Writer) int {
	end := prog.begin()
	res, err := c.Fetch(ctx)
	end()
	code := exitCode(res, err)
	how := res.Mechanism
	if res.TLS != nil {
		how += ", " + tls.VersionName(res.TLS.Version)
	}
	switch {
	case err != nil:
		fmt.Fprintf(errOut, "odmr-customer: %s\n", termsafe.Field(strings.TrimPrefix(err.Error(), "odmr: ")))
		var ve *tls.CertificateVerificationError
		if errors.As(err, &ve) {
			hint := "give -ca FILE with the certificate of the CA that signed it"
			if c.OpportunisticTLS {
				hint += ", or -no-tls to refuse the STARTTLS the provider offers and run in clear text"
			}
			fmt.Fprintf(errOut, "odmr-customer: the provider's certificate does not verify: %s\n", hint)
		}
	case res.NoMail:
		fmt.Fprintf(out, "odmr-customer: no mail waiting at %s\n", cfg.provider)
	case c.Handler != nil:
		fmt.Fprintf(out, "odmr-customer: relayed %d message(s) for %d recipient(s), %d bytes, to %s in %v (%s)\n",
			res.Messages, res.Recipients, res.Bytes, cfg.relay, res.Duration.Round(time.Millisecond), how)
	default:
		fmt.Fprintf(out, "odmr-customer: received %d message(s) for %d recipient(s), %d bytes, in %v (%s)\n",
			res.Messages, res.Recipients, res.Bytes, res.Duration.Round(time.Millisecond), how)
	}
	if res.Refused > 0 || res.RefusedRecipients > 0 {
		fmt.Fprintf(out, "odmr-customer: refused %d message(s) and %d recipient(s); the provider keeps or bounces them\n",
			res.Refused, res.RefusedRecipients)
	}
	if res.LocalRefused > 0 {
		fmt.Fprintf(errOut, "odmr-customer: the local target did not take %d message(s) or recipient(s): %v\n",
			res.LocalRefused, termsafe.Field(fmt.Sprint(res.LocalErr)))
	}
	return code
}

// signalContext returns a context that SIGINT and SIGTERM cancel, with
// the signal as its cause, and a function that stops listening. Only the
// first signal is caught: a second one has its default effect and kills
// the program, should the fetch be stuck where the context does not reach
// (a local target that hangs).
func signalContext(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case sig := <-ch:
			signal.Stop(ch)
			cancel(signalError{sig})
		case <-ctx.Done():
		}
	}()
	return ctx, func() { signal.Stop(ch); cancel(nil) }
}

// signalError is the cause of a context a signal cancelled.
type signalError struct{ sig os.Signal }

func (e signalError) Error() string { return "odmr-customer: " + e.sig.String() }

// caughtSignal returns the signal that cancelled ctx, or nil.
func caughtSignal(ctx context.Context) os.Signal {
	var se signalError
	if errors.As(context.Cause(ctx), &se) {
		return se.sig
	}
	return nil
}

// exitCode maps the outcome of a fetch to the exit status.
func exitCode(res *odmr.FetchResult, err error) int {
	var e *odmr.Error
	switch {
	case err == nil && res.LocalRefused > 0, errors.Is(err, odmr.ErrLocalDelivery):
		return exitLocal
	case err == nil && res.NoMail:
		return exitNoMail
	case err == nil:
		return exitMail
	case errors.Is(err, odmr.ErrAuthFailed), errors.Is(err, odmr.ErrAuthRequired),
		errors.Is(err, odmr.ErrNoAuthMechanism), errors.As(err, &e) && isAuthCode(e.Code):
		return exitAuth
	case errors.Is(err, odmr.ErrNoAcceptDomains):
		return exitUsage
	case errors.Is(err, odmr.ErrATRNRefused), errors.Is(err, odmr.ErrNoATRN), errors.Is(err, odmr.ErrNotImplemented):
		return exitRefused
	case errors.As(err, &e) && e.Temporary():
		return exitTemporary
	}
	return exitFailure
}

// isAuthCode tells the permanent replies of RFC 4954 that refuse an
// authentication: 534 (mechanism too weak), 538 (encryption required),
// 504 (mechanism unknown).
func isAuthCode(code int) bool {
	return code == 534 || code == 538 || code == 504
}
