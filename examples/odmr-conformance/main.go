// Command odmr-conformance checks an On-Demand Mail Relay provider (RFC
// 2645) against the requirements of the RFC and of the SMTP, SMTP AUTH and
// CRAM-MD5 specifications its profile uses. It runs the checks of package
// odmrtest over TCP, so it tests any implementation, and prints one line
// per requirement: the check, PASS, FAIL or SKIP, and the reply seen.
//
// Usage:
//
//	odmr-conformance -addr HOST:PORT -user NAME -secret-file FILE \
//	    -domains D1,D2 -foreign-domain D3 [-foreign-user NAME] [-smtp HOST:PORT] [flags]
//
// With -foreign-user (and -foreign-secret-file or $ODMR_FOREIGN_SECRET),
// a second account that owns -foreign-domain, the checker also pulls that
// account's mail, to show that mail for two customers reached neither
// the wrong one nor was lost.
//
// The secret may come from the environment variable ODMR_SECRET instead of
// a file. The account must be able to pull the domains of -domains and
// must not be able to pull -foreign-domain.
//
// The checks that need queued mail are skipped unless -smtp names the
// provider's SMTP intake (the MX of the customer domains): the checker
// then queues its test messages there. After the role swap the checker
// accepts only the messages it queued itself; anything else is answered
// 451 and stays queued, so the checker never takes real mail.
//
// With -customer the checker checks a customer instead: it plays the
// provider, listening on -listen (printed), and runs the customer once
// per check, with -customer-cmd or, without it, by waiting for the
// operator to run the customer by hand:
//
//	odmr-conformance -customer -user NAME -secret-file FILE -domains D1,D2 \
//	    -customer-cmd 'odmr-customer -provider {host}:{port} -user {user} -secret-file {secret-file} -domains {domains} -smtp {sink-host}:{sink-port} -no-tls'
//
// The checker also runs an SMTP server, -sink (printed), that stands for
// the customer's local mail server: the customer must deliver there, so
// that the checks see what arrived. It refuses -refused-recipient. The
// command's exit status is mapped to an outcome with -exit-codes.
//
// The exit status is 0 when no check failed, 1 when one did, 2 on a usage
// error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/logfmt"
	"github.com/go-odmr/odmr/odmrtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// Exit statuses.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

type options struct {
	addr, user, secretFile, domains, foreign, smtpAddr, hostname, noMail, skip string
	foreignUser, foreignSecretFile                                             string
	timeout, rateLimitWait                                                     time.Duration
	retryHeld, insecureAuth, replaysPipelined, list                            bool

	// -customer mode
	customer, verbose                             bool
	listen, sink, customerCmd, exitCodes, refused string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("odmr-conformance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.addr, "addr", "", "`HOST:PORT` of the ODMR provider (required)")
	fs.StringVar(&o.user, "user", "", "account `NAME` (required)")
	fs.StringVar(&o.secretFile, "secret-file", "", "`FILE` holding the account's secret; default: $ODMR_SECRET")
	fs.StringVar(&o.domains, "domains", "", "comma-separated `DOMAINS` the account may pull (required)")
	fs.StringVar(&o.foreign, "foreign-domain", "", "a `DOMAIN` the account may not pull (required)")
	fs.StringVar(&o.foreignUser, "foreign-user", "", "`NAME` of a second account, the owner of -foreign-domain: the checker pulls its mail to show that none leaked and none was lost")
	fs.StringVar(&o.foreignSecretFile, "foreign-secret-file", "", "`FILE` holding the second account's secret; default: $ODMR_FOREIGN_SECRET")
	fs.StringVar(&o.smtpAddr, "smtp", "", "`HOST:PORT` of the provider's SMTP intake, to queue test messages; without it the checks that need mail are skipped")
	fs.StringVar(&o.hostname, "hostname", "", "`NAME` the checker gives in EHLO and in its greeting (default customer.example)")
	fs.StringVar(&o.noMail, "no-mail", "453", "how the provider answers ATRN with no mail queued: `453`, 250 (250, then EHLO and QUIT) or either")
	fs.StringVar(&o.skip, "skip", "", "comma-separated check `IDS` not to run, as printed by -list")
	fs.DurationVar(&o.timeout, "timeout", odmrtest.DefaultTimeout, "time limit of each check")
	fs.DurationVar(&o.rateLimitWait, "rate-limit-wait", 2*time.Second, "how long to wait before sending an ATRN again that the provider refused with 450 as too frequent (0: fail at once)")
	fs.BoolVar(&o.retryHeld, "retry-held", false, "the provider holds temporarily failed mail until a retry time")
	fs.BoolVar(&o.insecureAuth, "insecure-auth", false, "the provider is configured to offer PLAIN or LOGIN without TLS")
	fs.BoolVar(&o.replaysPipelined, "replays-pipelined", false, "the provider takes a greeting pipelined after ATRN as the start of the reversed session")
	fs.BoolVar(&o.list, "list", false, "list the checks (with -customer, the customer's) and exit")
	fs.BoolVar(&o.customer, "customer", false, "check a customer instead: the checker plays the provider (see -customer-cmd)")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "with -customer: `ADDR` the checker's provider listens on, for every check")
	fs.StringVar(&o.sink, "sink", "127.0.0.1:0", "with -customer: `ADDR` of the checker's SMTP server, the customer's local mail server")
	fs.StringVar(&o.customerCmd, "customer-cmd", "", "with -customer: shell `COMMAND` that runs the customer once; {host}, {port}, {user}, {secret}, {secret-file}, {domains}, {sink-host} and {sink-port} are filled in, quoted, and $ODMR_SECRET is set; without it the checker waits for the customer, run by hand, once per check")
	fs.StringVar(&o.exitCodes, "exit-codes", defaultExitCodes, "with -customer-cmd: what the command's exit `STATUSES` mean (ok, no-mail, refused, try-later, auth-failed, failed); any other status is failed")
	fs.StringVar(&o.refused, "refused-recipient", "", "with -customer: `ADDRESS` the SMTP sink refuses, for 5.3/per-recipient-refusal; none turns the check off (default refused@ the first of -domains)")
	fs.BoolVar(&o.verbose, "v", false, "with -customer: print each check's transcript and the customer's output to stderr, AUTH redacted")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: odmr-conformance -addr HOST:PORT -user NAME -secret-file FILE -domains D1,D2 -foreign-domain D3 [flags]\n"+
			"       odmr-conformance -customer -user NAME -secret-file FILE -domains D1,D2 [-customer-cmd COMMAND] [flags]\n\n"+
			"Checks an ODMR provider (RFC 2645), or with -customer a customer, and prints one line per requirement.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0))
	}
	timeoutSet := false
	fs.Visit(func(f *flag.Flag) { timeoutSet = timeoutSet || f.Name == "timeout" })
	if o.customer && o.customerCmd == "" && !timeoutSet {
		o.timeout = manualTimeout
	}
	return &o, nil
}

// config turns the options into the suite's configuration.
func (o *options) config() (odmrtest.ProviderConfig, error) {
	var missing []string
	for _, f := range []struct{ name, val string }{
		{"-addr", o.addr}, {"-user", o.user}, {"-domains", o.domains}, {"-foreign-domain", o.foreign},
	} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return odmrtest.ProviderConfig{}, fmt.Errorf("%s required (see -h)", strings.Join(missing, ", "))
	}
	secret, err := o.secret()
	if err != nil {
		return odmrtest.ProviderConfig{}, err
	}
	var foreignSecret string
	if o.foreignUser != "" {
		if foreignSecret, err = readSecret("-foreign-secret-file", o.foreignSecretFile, "ODMR_FOREIGN_SECRET"); err != nil {
			return odmrtest.ProviderConfig{}, err
		}
	}
	cfg := odmrtest.ProviderConfig{
		ForeignUser:      o.foreignUser,
		ForeignSecret:    foreignSecret,
		User:             o.user,
		Secret:           secret,
		ForeignDomain:    o.foreign,
		RetryHeld:        o.retryHeld,
		InsecureAuth:     o.insecureAuth,
		ReplaysPipelined: o.replaysPipelined,
		Timeout:          o.timeout,
		RateLimitWait:    o.rateLimitWait,
		Hostname:         o.hostname,
	}
	cfg.Domains, cfg.Skip = splitList(o.domains), splitList(o.skip)
	switch o.noMail {
	case "453":
		cfg.NoMail = odmrtest.NoMail453
	case "250":
		cfg.NoMail = odmrtest.NoMail250Quit
	case "either":
		cfg.NoMail = odmrtest.NoMailEither
	default:
		return odmrtest.ProviderConfig{}, fmt.Errorf("-no-mail %q: want 453, 250 or either", o.noMail)
	}
	addr, timeout := o.addr, o.timeout
	cfg.Dial = func() (net.Conn, error) { return net.DialTimeout("tcp", addr, timeout) }
	if o.smtpAddr != "" {
		helo := o.hostname
		if helo == "" {
			helo = "customer.example"
		}
		cfg.Enqueue = smtpEnqueuer(o.smtpAddr, helo, timeout)
	}
	return cfg, nil
}

// secret reads the secret from -secret-file or $ODMR_SECRET. A secret on
// the command line would show in ps.
func (o *options) secret() (string, error) {
	return readSecret("-secret-file", o.secretFile, "ODMR_SECRET")
}

// readSecret reads a secret from file, named by flag, or else from the
// environment variable env.
func readSecret(flag, file, env string) (string, error) {
	if file == "" {
		if s := os.Getenv(env); s != "" {
			return s, nil
		}
		return "", fmt.Errorf("%s FILE or the environment variable %s is required", flag, env)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s %s is empty", flag, file)
	}
	return s, nil
}

// smtpEnqueuer queues a message by sending it to the provider's SMTP
// intake.
func smtpEnqueuer(addr, helo string, timeout time.Duration) func(from string, to []string, body string) error {
	return func(from string, to []string, body string) error {
		conn, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		conn.SetDeadline(time.Now().Add(timeout))
		c := smtp.NewClient(conn)
		defer c.Close()
		if err := c.Hello(helo); err != nil {
			return fmt.Errorf("SMTP intake %s: %w", addr, err)
		}
		if err := c.Mail(from, nil); err != nil {
			return fmt.Errorf("SMTP intake %s: MAIL: %w", addr, err)
		}
		for _, r := range to {
			if err := c.Rcpt(r, nil); err != nil {
				return fmt.Errorf("SMTP intake %s: RCPT %s: %w", addr, r, err)
			}
		}
		w, err := c.Data()
		if err != nil {
			return fmt.Errorf("SMTP intake %s: DATA: %w", addr, err)
		}
		if _, err := io.WriteString(w, body); err != nil {
			return fmt.Errorf("SMTP intake %s: %w", addr, err)
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("SMTP intake %s: end of data: %w", addr, err)
		}
		return c.Quit()
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	} else if err != nil {
		fmt.Fprintln(stderr, "odmr-conformance:", err)
		return exitUsage
	}
	if o.list {
		checks := odmrtest.ProviderChecks()
		if o.customer {
			checks = odmrtest.CustomerChecks()
		}
		for _, c := range checks {
			fmt.Fprintf(stdout, "%-48s %-6s %s\n", c.ID(), c.Level, c.Requirement)
		}
		return exitOK
	}
	// A customer run by hand is told what to do from another goroutine.
	stdout = &logfmt.LockedWriter{W: stdout}
	var pass, skip int
	report := odmrtest.ReporterFunc(func(r odmrtest.Result) {
		switch r.Status {
		case odmrtest.Pass:
			pass++
		case odmrtest.Skip:
			skip++
		}
		fmt.Fprintln(stdout, formatResult(r))
	})
	var failed int
	if o.customer {
		var cfg odmrtest.CustomerConfig
		var closeAll func()
		cfg, closeAll, err = o.customerConfig(stdout)
		if err != nil {
			fmt.Fprintln(stderr, "odmr-conformance:", err)
			return exitUsage
		}
		defer closeAll()
		if o.verbose {
			cfg.Debug = stderr
		}
		failed, err = odmrtest.RunCustomer(ctx, cfg, report)
	} else {
		var cfg odmrtest.ProviderConfig
		cfg, err = o.config()
		if err != nil {
			fmt.Fprintln(stderr, "odmr-conformance:", err)
			return exitUsage
		}
		failed, err = odmrtest.RunProvider(ctx, cfg, report)
	}
	if err != nil {
		fmt.Fprintln(stderr, "odmr-conformance:", err)
		return exitUsage
	}
	fmt.Fprintf(stdout, "%d checks: %d passed, %d failed, %d skipped\n", pass+failed+skip, pass, failed, skip)
	if failed > 0 {
		return exitFail
	}
	return exitOK
}

// formatResult prints a result as: check, level, status, the reply seen
// and, for failures and skips, why.
func formatResult(r odmrtest.Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-48s %-6s %s", r.Check.ID(), r.Check.Level, r.Status)
	if r.Seen != "" {
		fmt.Fprintf(&b, "  %s", r.Seen)
	}
	if r.Detail != "" {
		fmt.Fprintf(&b, "  [%s]", r.Detail)
	}
	return b.String()
}
