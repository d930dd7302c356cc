package odmr

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/go-odmr/odmr/internal/defaults"
)

// Customer is the side of ODMR that collects mail (RFC 2645 section 4): it
// connects to a provider, authenticates, asks for its domains with ATRN
// and, once the roles reverse, receives the mail as an SMTP server on the
// same connection.
//
// Set its fields and call [Customer.Fetch] once per collection. Either
// Sink or Handler receives the mail: Sink for an SMTP server run by this
// package that hands each message to a [MessageSink], Handler to give the
// connection itself to another SMTP stack (see [Relay]). Every other field
// has a documented zero value. A Customer is safe for concurrent use; its
// fields must not change while it fetches.
type Customer struct {
	// Addr is the provider, as "host" or "host:port". Without a port the
	// ODMR port, 366, is used.
	Addr string
	// Dial opens the connection to the provider. nil means a net.Dialer.
	// It may return a *tls.Conn, which the customer treats as ImplicitTLS:
	// it completes the handshake before it reads the greeting. (To use
	// EXTERNAL over such a connection, set the client certificate in
	// TLSConfig too: that is where the customer looks for one.)
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ImplicitTLS makes the customer start TLS as soon as it has connected,
	// before the provider's greeting, for a provider that speaks TLS from
	// the first byte (see [Provider.ListenAndServeTLS]). The handshake uses
	// TLSConfig; a nil TLSConfig means crypto/tls's defaults, which verify
	// the provider's certificate against the system's roots for the host
	// of Addr. No port is registered for ODMR over TLS: give the port in
	// Addr. False means the connection starts in clear text.
	ImplicitTLS bool
	// TLSConfig configures TLS with the provider. Without ImplicitTLS it
	// makes the customer upgrade the connection with STARTTLS (RFC 3207)
	// before it authenticates, and quit with ErrNoStartTLS when the
	// provider does not offer it; with ImplicitTLS it configures the
	// handshake that starts the connection. A config without ServerName
	// gets the host of Addr. The provider's certificate is verified (unless
	// the config sets InsecureSkipVerify), and a failure is an error naming
	// the host that wraps crypto/tls's error. A client certificate in the
	// config (Certificates or GetClientCertificate) lets the customer
	// authenticate with SASL EXTERNAL. nil means no STARTTLS, unless
	// OpportunisticTLS.
	TLSConfig *tls.Config
	// OpportunisticTLS makes STARTTLS depend on the provider: the customer
	// upgrades the connection whenever the provider offers STARTTLS, with
	// TLSConfig (nil means crypto/tls's defaults, which verify the
	// provider's certificate for the host of Addr), and goes on in clear
	// text, with a warning in the log, when it does not. A handshake or a
	// certificate that fails is an error all the same: the customer never
	// falls back to clear text once it has asked for TLS. False means
	// STARTTLS only with a TLSConfig, and then required. It does nothing
	// with ImplicitTLS.
	OpportunisticTLS bool

	// Username and Secret are the credentials for AUTH. Username may be
	// empty when TLSConfig holds a client certificate: only EXTERNAL can
	// then be used.
	Username string
	Secret   string
	// Mechanisms lists the SASL mechanisms the customer may use, most
	// preferred first; the first one the provider offers is used. It knows
	// EXTERNAL, SCRAM-SHA-256, SCRAM-SHA-1, CRAM-MD5, PLAIN and LOGIN. nil
	// means that order, with EXTERNAL only over TLS with a client
	// certificate: SCRAM proves the provider knows the secret too, and
	// CRAM-MD5 is the one RFC 2645 makes mandatory.
	//
	// EXTERNAL (RFC 4422 appendix A) is used only over TLS with a client
	// certificate in TLSConfig. The customer sends it with an empty
	// authorization identity, "AUTH EXTERNAL =", so that the provider
	// takes the identity it maps the certificate to; Username is not sent.
	Mechanisms []string
	// AllowInsecureAuth permits PLAIN and LOGIN, which send the secret
	// itself, on a connection without TLS. False means they are used only
	// under TLS.
	AllowInsecureAuth bool

	// Domains are the domains to pull with ATRN. None means a bare ATRN,
	// which asks for every domain the account may pull, and needs
	// AcceptDomains.
	//
	// After the swap the customer takes mail only for these domains: a
	// provider that sends a recipient in any other domain (a hostile one,
	// or anyone who can change a clear-text session) would otherwise use
	// the customer's own mail server as an open relay. Such a RCPT gets
	// 550 5.7.1 and the sink never sees it. Domains match without regard to
	// case, and an internationalized domain in U-labels (bücher.example)
	// matches its A-labels (xn--bcher-kva.example). This holds for Sink and
	// for [Relay]; a Handler of your own must check recipients itself (it
	// finds the domains with [AcceptedDomainsFromContext]).
	Domains []string
	// AcceptDomains are more domains the customer takes mail for after the
	// swap, besides Domains. A bare ATRN (no Domains) leaves the customer
	// no other way to know which recipients are its own, so Fetch refuses
	// to run one without AcceptDomains: it returns [ErrNoAcceptDomains]
	// before it connects. nil means none.
	AcceptDomains []string
	// AllowRoutedLocalParts takes, after the swap, recipients whose local
	// part has '%', '!' or '@' (x%evil.test@example.org,
	// "x@evil.test"@example.org). False, the default, refuses them with
	// 550 5.7.1, as it refuses a domain that is written otherwise than as
	// one of the customer's (ｅｘａｍｐｌｅ.org): a local mail server that
	// trusts the customer would send them on elsewhere (sender-specified
	// routing), which makes it an open relay for the provider. Set it
	// only for a sink that never forwards mail.
	AllowRoutedLocalParts bool
	// Hostname is the name the customer gives in EHLO and in its SMTP
	// greeting after the swap. "" means os.Hostname(), or "localhost".
	Hostname string

	// Sink receives each message after the swap. The customer's SMTP
	// server acknowledges a message to the provider only once Deliver has
	// returned nil. A Sink that also implements [RecipientChecker] can
	// refuse recipients one by one; one that implements [SessionSink]
	// (package smtpsink's) is given each step of each transaction instead,
	// in one session per fetch.
	Sink MessageSink
	// Handler, if set instead of Sink, is given the connection after the
	// swap and runs the SMTP session itself, greeting included.
	Handler Handler
	// MaxMessageSize is the largest message, in bytes, the customer's
	// SMTP server accepts; it is advertised with SIZE, and a larger
	// message is refused with 552. 0 means no limit. It does not apply
	// to a Handler.
	MaxMessageSize int64
	// NoReceivedHeader stops the customer from prepending a Received:
	// header field to each message it hands to Sink. By default it does,
	// as RFC 5321 section 4.4 requires of an SMTP server: the provider's
	// EHLO name and address, the customer's Hostname, ESMTP or ESMTPS
	// (RFC 3848), the message's ID, the recipient when there is one, and
	// the time. Set it when the sink adds that trace itself.
	NoReceivedHeader bool
	// Progress, if set, is called after each message the local target
	// took (Sink, or the local server behind a [Relay]) with the counts
	// of the fetch so far, Duration being the time since it started, so
	// that a program can report on a long fetch. It is called from the
	// session's goroutine and must return quickly. nil means none.
	Progress func(FetchResult)

	// CommandTimeout bounds the connection set-up and the wait for each
	// reply before ATRN. 0 means 5 minutes.
	CommandTimeout time.Duration
	// ATRNTimeout is how long the customer waits for the reply to ATRN.
	// 0 means 10 minutes, the least RFC 2645 allows.
	ATRNTimeout time.Duration
	// IdleTimeout is how long the customer waits, after the swap, for the
	// provider to send something; each byte received or sent starts it
	// again. 0 means 5 minutes. It also applies to a Handler.
	IdleTimeout time.Duration

	// Debug, if set, receives a transcript of each fetch in the RFC's
	// notation, each line after the provider's address: "C: " for what the
	// customer sends, "P: " for what the provider sends, before the role
	// swap and after it, messages included. The TLS handshake does not
	// show. AUTH exchanges are redacted: an initial response shows as
	// "AUTH MECH <redacted>", the customer's other SASL lines as
	// "<redacted>" and the provider's 334 replies as "334 <redacted>".
	// Lines are written whole, one Write each, and the writes of
	// concurrent fetches are serialized.
	Debug io.Writer

	// Logger receives a record for each step of a fetch. The secret and
	// the SASL exchange are never logged. nil means slog.Default().
	Logger *slog.Logger
}

type acceptedDomainsKey struct{}

// AcceptedDomainsFromContext returns the domains a [Customer] takes mail
// for in the fetch whose context is ctx: its Domains and AcceptDomains in
// canonical form (lower case, A-labels), as [RecipientDomain] gives a
// recipient's. A [Handler] uses them to refuse other recipients. ok is
// false outside a fetch.
func AcceptedDomainsFromContext(ctx context.Context) (domains []string, ok bool) {
	d, ok := ctx.Value(acceptedDomainsKey{}).([]string)
	return d, ok
}

// Handler runs the reversed state of an ODMR session (RFC 2645 section
// 5.3), in which the customer is the SMTP server and the provider the
// client. Use it to give the session to an SMTP stack of your own or to
// a local mail server ([Relay]).
type Handler interface {
	// ServeReversed is called once the provider has accepted ATRN. The
	// handler owns conn until it returns; it must send the SMTP greeting
	// (220) first and serve until the provider quits. Reads return any
	// bytes the provider sent ahead of the swap first. The customer closes
	// conn afterwards. ctx is the context of the fetch; its cancellation
	// already sets a past deadline on conn. conn has a method
	// ConnectionState() (tls.ConnectionState, bool) that reports the TLS
	// state when the session runs over TLS.
	ServeReversed(ctx context.Context, conn net.Conn) error
}

// HandlerFunc adapts a function to [Handler].
type HandlerFunc func(ctx context.Context, conn net.Conn) error

// ServeReversed calls f.
func (f HandlerFunc) ServeReversed(ctx context.Context, conn net.Conn) error {
	return f(ctx, conn)
}

var _ Handler = HandlerFunc(nil)

// FetchResult reports what one [Customer.Fetch] did. The counts are those
// of the customer's own SMTP server, or of [Relay], which counts what the
// local server took; with another Handler they stay zero.
type FetchResult struct {
	// Domains are the domains requested, in canonical form; none for a
	// bare ATRN.
	Domains []string
	// Mechanism is the SASL mechanism that authenticated the session.
	Mechanism string
	// TLS is the state of the session's TLS connection, implicit or
	// started with STARTTLS; nil when the session ran in clear text.
	TLS *tls.ConnectionState
	// NoMail is set when there was nothing to collect: the provider
	// answered ATRN with 453, or it accepted ATRN and then ended the
	// session before sending a message (RFC 2645 section 5.2.1 allows
	// this; Exim does it when its queued mail is not yet due).
	NoMail bool
	// Messages counts the messages the sink accepted, Recipients their
	// recipients and Bytes their size as received (after dot-unstuffing,
	// before any change the sink makes).
	Messages   int
	Recipients int
	Bytes      int64
	// Refused counts the messages the customer refused after DATA (the
	// sink failed, or the message was malformed or too large) and
	// RefusedRecipients the recipients refused at RCPT. The provider keeps
	// or bounces that mail, depending on the reply.
	Refused           int
	RefusedRecipients int
	// LocalRefused counts the refusals, among Refused and
	// RefusedRecipients, that came from the local target rather than from
	// the customer's own checks: a recipient the Sink's CheckRecipient
	// refused, a message its Deliver refused or failed to take, or, with
	// [Relay], a reply of the local server that refused a recipient or a
	// message. A temporary one leaves the mail at the provider, which
	// tries again later; a permanent one makes it bounce the mail.
	// LocalErr is the first of their errors, nil when there is none.
	LocalRefused int
	LocalErr     error
	// Duration is the time the fetch took.
	Duration time.Duration
}

// Fetch connects to the provider, pulls the mail for c.Domains and hands
// it to c.Sink or c.Handler. It returns when the provider has ended the
// session.
//
// Fetch returns a nil error when the session ran to its end, also when
// there was no mail: result.NoMail tells. A reply that refused a command
// comes back as an error wrapping an [*Error], which [errors.Is] matches
// with the sentinels: [ErrATRNRefused] (450, a domain the account may not
// pull), [ErrTryLater] (451), [ErrAuthRequired] (530), [ErrAuthFailed]
// (535) and so on. [ErrNoATRN], [ErrNoAuthMechanism], [ErrNoStartTLS] and
// [ErrProtocol] report a provider that cannot serve the request. A failed
// TLS handshake names the provider's host and wraps crypto/tls's error (a
// [*tls.CertificateVerificationError] for a certificate that does not
// verify). When ctx ends, the error matches ctx.Err(). A connection lost
// in the middle of a message is an error, and that message stays queued
// at the provider.
//
// The result is never nil: after an error it counts what was received
// before it.
func (c *Customer) Fetch(ctx context.Context) (res *FetchResult, err error) {
	start := time.Now()
	res = &FetchResult{}
	defer func() { res.Duration = time.Since(start) }()

	if err := c.check(); err != nil {
		return res, err
	}
	domains, accept, err := c.domains()
	if err != nil {
		return res, err
	}
	res.Domains = domains
	ctx = context.WithValue(ctx, acceptedDomainsKey{}, accept)
	ctx = context.WithValue(ctx, routedLocalPartsKey{}, c.AllowRoutedLocalParts)

	addr := c.addr()
	log := c.logger().With("provider", addr)
	dialCtx, cancel := context.WithTimeout(ctx, orDefault(c.CommandTimeout, defaults.CommandTimeout))
	conn, err := c.dial(dialCtx, "tcp", addr)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("odmr: fetch from %s stopped: %w", addr, ctx.Err())
		}
		return res, fmt.Errorf("odmr: connecting to %s: %w", addr, err)
	}
	if _, isTLS := conn.(*tls.Conn); c.ImplicitTLS && !isTLS {
		conn = tls.Client(conn, c.tlsConfig())
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() {
		if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("odmr: fetch from %s stopped: %w", addr, ctx.Err())
		}
		if err != nil {
			log.Warn("odmr: fetch failed", "err", err, "messages", res.Messages)
		}
	}()

	s := &customerSession{c: c, ctx: ctx, conn: conn, br: bufio.NewReaderSize(conn, 4096), log: log, addr: addr}
	reversed, err := s.initial(domains, res)
	if err != nil || !reversed {
		return res, err
	}

	if err := c.serveReversed(ctx, s, res, c.progress(res, start), log); err != nil {
		return res, err
	}
	log.Info("odmr: fetch done", "messages", res.Messages, "recipients", res.Recipients,
		"bytes", res.Bytes, "refused", res.Refused, "refused_locally", res.LocalRefused, "no_mail", res.NoMail)
	return res, nil
}

// domains returns the domains to ask for, in canonical form, and the
// domains to take mail for after the swap: those and AcceptDomains.
func (c *Customer) domains() (domains, accept []string, err error) {
	domains, err = parseDomainList(c.Domains)
	if err != nil {
		return nil, nil, err
	}
	accept, err = parseDomainList(c.AcceptDomains)
	if err != nil {
		return nil, nil, fmt.Errorf("odmr: AcceptDomains: %s", errText(err))
	}
	if len(domains) == 0 && len(accept) == 0 {
		return nil, nil, ErrNoAcceptDomains
	}
	return domains, slices.Concat(accept, domains), nil
}

// serveReversed runs the reversed state, in which the customer is the
// SMTP server, on the connection of s: with the customer's own server
// and Sink, or with Handler.
func (c *Customer) serveReversed(ctx context.Context, s *customerSession, res *FetchResult, progress func(fetchCounts), log *slog.Logger) error {
	buffered, _ := s.br.Peek(s.br.Buffered())
	rconn := Reverse(s.conn, buffered)
	if c.Debug != nil {
		rconn = &transcriptConn{Conn: rconn, in: "P: ", out: "C: ", emit: s.debug}
	}
	rc := &idleConn{Conn: rconn, ctx: ctx, idle: orDefault(c.IdleTimeout, defaults.IdleTimeout)}
	if c.Handler == nil {
		return c.receive(ctx, rc, res, progress, log)
	}
	hc := &handlerCounts{progress: progress, log: log}
	err := c.Handler.ServeReversed(context.WithValue(ctx, handlerCountsKey{}, hc), rc)
	hc.add(res)
	return err
}

// progress returns the function that reports to c.Progress the counts fc
// of the reversed session so far, added to res; nil when c.Progress is.
// res is not written while the reversed session runs.
func (c *Customer) progress(res *FetchResult, start time.Time) func(fc fetchCounts) {
	if c.Progress == nil {
		return nil
	}
	return func(fc fetchCounts) {
		snap := *res
		fc.addTo(&snap)
		snap.Duration = time.Since(start)
		c.Progress(snap)
	}
}

// check reports a configuration the customer cannot run with.
func (c *Customer) check() error {
	switch {
	case c.Sink == nil && c.Handler == nil:
		return errors.New("odmr: Customer needs a Sink or a Handler")
	case c.Sink != nil && c.Handler != nil:
		return errors.New("odmr: Customer has both a Sink and a Handler; set one")
	case c.Username == "" && !c.clientCert():
		return errors.New("odmr: Customer needs a Username, or a client certificate in TLSConfig for EXTERNAL")
	case strings.ContainsAny(c.Username, "\r\n\x00"):
		return errors.New("odmr: Username contains CR, LF or NUL")
	case strings.ContainsAny(c.hostname(), " \t\r\n\x00"):
		return fmt.Errorf("odmr: invalid Hostname %q", c.hostname())
	}
	return nil
}

func (c *Customer) addr() string {
	if _, _, err := net.SplitHostPort(c.Addr); err == nil {
		return c.Addr
	}
	return net.JoinHostPort(strings.Trim(c.Addr, "[]"), strconv.Itoa(Port))
}

// host is the host part of Addr.
func (c *Customer) host() string {
	h, _, _ := net.SplitHostPort(c.addr())
	return h
}

// tlsConfig returns the config of the handshake with the provider:
// TLSConfig, or the defaults, with ServerName set.
func (c *Customer) tlsConfig() *tls.Config {
	cfg := &tls.Config{}
	if c.TLSConfig != nil {
		cfg = c.TLSConfig.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = c.host()
	}
	return cfg
}

// clientCert reports whether TLSConfig carries a client certificate.
func (c *Customer) clientCert() bool {
	return c.TLSConfig != nil && (len(c.TLSConfig.Certificates) > 0 || c.TLSConfig.GetClientCertificate != nil)
}

func (c *Customer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.Dial != nil {
		return c.Dial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func (c *Customer) hostname() string { return hostnameOr(c.Hostname) }

func (c *Customer) logger() *slog.Logger { return loggerOr(c.Logger) }

// externalClient is SASL EXTERNAL with an empty authorization identity:
// "AUTH EXTERNAL =". A provider that asks again with an empty challenge
// (one that does not take an initial response) gets an empty response.
type externalClient struct{}

func (externalClient) Start() (string, []byte, error) { return sasl.External, []byte{}, nil }

func (externalClient) Next(challenge []byte) ([]byte, error) {
	if len(challenge) == 0 {
		return []byte{}, nil
	}
	return nil, sasl.ErrUnexpectedServerChallenge
}

// loginClient is the LOGIN mechanism. Unlike go-sasl's it sends no
// initial response and does not insist on the exact text of the
// challenges: the first is answered with the user name, the second with
// the password.
type loginClient struct {
	username, password string
	step               int
}

func (c *loginClient) Start() (string, []byte, error) { return sasl.Login, nil, nil }

func (c *loginClient) Next(challenge []byte) ([]byte, error) {
	c.step++
	switch c.step {
	case 1:
		return []byte(c.username), nil
	case 2:
		return []byte(c.password), nil
	}
	return nil, sasl.ErrUnexpectedServerChallenge
}
