// Command odmr-provider runs an ODMR provider (RFC 2645): it accepts mail
// for its customers' domains over SMTP and holds it until a customer
// connects to the ODMR port, authenticates and pulls it with ATRN.
//
// Usage:
//
//	odmr-provider -accounts FILE [-listen :366] [-smtp :25] [-hostname NAME]
//
// The accounts file has one account a line, NAME SECRET DOMAIN[,DOMAIN...],
// and # comments.
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
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "odmr-provider:", err)
		os.Exit(1)
	}
}

type config struct {
	listen, smtpAddr, accounts, hostname string
	tlsCert, tlsKey, tlsListen           string
	allowInsecureAuth, verbose           bool
	requireTLS                           bool
	maxMessageBytes                      int64
	hashUser                             string
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
	fs.StringVar(&c.hashUser, "hash-secret", "", "print SCRAM credentials for `USER` from a secret read on standard input, for the accounts file, and exit")
	fs.Int64Var(&c.maxMessageBytes, "max-message-size", 50<<20, "largest message the SMTP intake accepts, in `BYTES`")
	fs.BoolVar(&c.verbose, "v", false, "log every session event")
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
	if c.hashUser != "" {
		return &c, nil
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if (c.tlsListen != "" || c.requireTLS) && c.tlsCert == "" {
		return nil, errors.New("-tls-listen and -require-tls need -tls-cert and -tls-key")
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
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	accounts, err := odmr.LoadAccounts(cfg.accounts)
	if err != nil {
		return err
	}
	if len(accounts) == 0 {
		return fmt.Errorf("%s defines no accounts", cfg.accounts)
	}
	queue := &odmr.MemoryQueue{
		OnFailure: func(env odmr.Envelope, failed []odmr.RecipientResult) {
			for _, f := range failed {
				log.Warn("odmr-provider: delivery failed permanently; no bounce is sent by the in-memory queue",
					"id", env.ID, "from", env.From, "to", f.Recipient, "err", f.Err)
			}
		},
	}
	log.Warn("odmr-provider: using the in-memory queue: queued mail will not survive a restart")

	var tlsConfig *tls.Config
	if cfg.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.tlsCert, cfg.tlsKey)
		if err != nil {
			return fmt.Errorf("loading -tls-cert/-tls-key: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	p := &odmr.Provider{
		Hostname:          cfg.hostname,
		Authenticator:     accounts,
		Authorizer:        accounts,
		Queue:             queue,
		AllowInsecureAuth: cfg.allowInsecureAuth,
		TLSConfig:         tlsConfig,
		RequireTLS:        cfg.requireTLS,
		Logger:            log,
	}
	odmrLn, err := listen(cfg.listen, "listen")
	if err != nil {
		return err
	}
	errc := make(chan error, 3)
	go func() { errc <- p.ServeListener(odmrLn) }()
	log.Info("odmr-provider: ODMR listening", "addr", odmrLn.Addr().String(), "accounts", len(accounts), "starttls", tlsConfig != nil)
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
		intakeSrv = smtp.NewServer(&intake{
			accounts: accounts,
			log:      log,
			enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
				_, err := queue.Enqueue(env, body)
				return err
			},
		})
		intakeSrv.Domain = p.Hostname
		if intakeSrv.Domain == "" {
			intakeSrv.Domain, _ = os.Hostname()
		}
		intakeSrv.MaxMessageBytes = cfg.maxMessageBytes
		intakeSrv.MaxRecipients = 100
		intakeSrv.ReadTimeout = 5 * time.Minute
		intakeSrv.WriteTimeout = time.Minute
		intakeSrv.EnableSMTPUTF8 = true
		intakeSrv.TLSConfig = tlsConfig
		go func() { errc <- intakeSrv.Serve(smtpLn) }()
		log.Info("odmr-provider: SMTP intake listening", "addr", smtpLn.Addr().String())
	} else {
		log.Warn("odmr-provider: no SMTP intake (-smtp \"\"): nothing can be queued")
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		log.Info("odmr-provider: stopping", "signal", s.String())
	case err := <-errc:
		p.Close()
		if intakeSrv != nil {
			intakeSrv.Close()
		}
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if intakeSrv != nil {
		intakeSrv.Shutdown(ctx)
	}
	if err := p.Shutdown(ctx); err != nil {
		log.Warn("odmr-provider: sessions still running at the deadline; closing them", "err", err)
		p.Close()
	}
	log.Info("odmr-provider: stopped")
	return nil
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
