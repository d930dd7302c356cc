package odmr

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/go-odmr/odmr/internal/wire"
)

// Default timeouts of a [Customer]; a zero field in the struct means these.
// The customer's CommandTimeout defaults to [DefaultCommandTimeout].
const (
	// DefaultATRNTimeout is how long the customer waits for the reply to
	// ATRN. RFC 2645 section 5.2.1 requires at least 10 minutes, the time
	// a provider may need to go through its queue.
	DefaultATRNTimeout = 10 * time.Minute
	// DefaultIdleTimeout is how long the customer, once it is the SMTP
	// server, waits for the provider's next command or data: the server
	// timeout of RFC 5321 section 4.5.3.2.7.
	DefaultIdleTimeout = 5 * time.Minute
)

// Errors of a [Customer] that are not replies from the provider.
var (
	// ErrNoATRN: the provider's EHLO reply does not list ATRN, so it is
	// not an ODMR provider (RFC 2645 section 5.1.1). The customer quits
	// before it authenticates.
	ErrNoATRN = errors.New("odmr: provider does not offer ATRN")
	// ErrNoAuthMechanism: the provider offers no SASL mechanism the
	// customer may use: none it implements, or only PLAIN and LOGIN on a
	// connection without TLS while AllowInsecureAuth is off.
	ErrNoAuthMechanism = errors.New("odmr: provider offers no usable authentication mechanism")
	// ErrNoStartTLS: the customer has a TLSConfig, without
	// OpportunisticTLS, but the provider does not offer STARTTLS. The customer quits without sending anything else.
	ErrNoStartTLS = errors.New("odmr: provider does not offer STARTTLS")
	// ErrProtocol: the provider broke the protocol: a malformed or
	// unexpected reply.
	ErrProtocol = errors.New("odmr: protocol error")
	// ErrNoAcceptDomains: the customer was asked for a bare ATRN (no
	// Domains) without AcceptDomains, so it could not tell its own
	// recipients from those of others after the swap. Fetch returns it
	// before it connects.
	ErrNoAcceptDomains = errors.New("odmr: a bare ATRN needs AcceptDomains: the domains the customer takes mail for")
	// ErrLocalDelivery: the local mail server a [Handler] passes the
	// session to could not be reached, or failed in the middle of it. The
	// mail it had not taken stays queued at the provider. The errors of
	// [Relay] about its local server match it.
	ErrLocalDelivery = errors.New("odmr: the local mail server could not take the mail")
)

// localError is an error of the local side of a delivery; it matches
// ErrLocalDelivery.
type localError struct{ err error }

func (e *localError) Error() string        { return e.err.Error() }
func (e *localError) Unwrap() error        { return e.err }
func (e *localError) Is(target error) bool { return target == ErrLocalDelivery }

// localErrorf formats an error of the local side of a delivery.
func localErrorf(format string, args ...any) error {
	return &localError{fmt.Errorf(format, args...)}
}

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
	// means DefaultMechanisms.
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
	// refuse recipients one by one.
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

	// CommandTimeout bounds the connection set-up and the wait for each
	// reply before ATRN. 0 means DefaultCommandTimeout.
	CommandTimeout time.Duration
	// ATRNTimeout is how long the customer waits for the reply to ATRN.
	// 0 means DefaultATRNTimeout; RFC 2645 requires at least 10 minutes.
	ATRNTimeout time.Duration
	// IdleTimeout is how long the customer waits, after the swap, for the
	// provider to send something; each byte received or sent starts it
	// again. 0 means DefaultIdleTimeout. It also applies to a Handler.
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

// maxReplyLine and maxReplyLines bound what the customer reads of one
// reply before the swap; maxAuthSteps bounds the challenges of one AUTH.
const (
	maxReplyLine  = 4096
	maxReplyLines = 100
	maxAuthSteps  = 8
)

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
	domains, err := parseDomainList(c.Domains)
	if err != nil {
		return res, err
	}
	res.Domains = domains
	accept, err := parseDomainList(c.AcceptDomains)
	if err != nil {
		return res, fmt.Errorf("odmr: AcceptDomains: %s", strings.TrimPrefix(err.Error(), "odmr: "))
	}
	if len(domains) == 0 && len(accept) == 0 {
		return res, ErrNoAcceptDomains
	}
	accept = append(accept, domains...)
	ctx = context.WithValue(ctx, acceptedDomainsKey{}, slices.Clone(accept))
	ctx = context.WithValue(ctx, routedLocalPartsKey{}, c.AllowRoutedLocalParts)

	addr := c.addr()
	log := c.logger().With("provider", addr)
	dialCtx, cancel := context.WithTimeout(ctx, orDefault(c.CommandTimeout, DefaultCommandTimeout))
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
			log.Info("odmr: fetch failed", "err", err, "messages", res.Messages)
		}
	}()

	s := &customerSession{c: c, ctx: ctx, conn: conn, br: bufio.NewReaderSize(conn, 4096), log: log, addr: addr}
	reversed, err := s.initial(domains, res)
	if err != nil || !reversed {
		return res, err
	}

	// The reversed state: the customer is now the SMTP server.
	buffered, _ := s.br.Peek(s.br.Buffered())
	rconn := Reverse(s.conn, buffered)
	if c.Debug != nil {
		rconn = &transcriptConn{Conn: rconn, in: "P: ", out: "C: ", emit: s.debug}
	}
	rc := &idleConn{Conn: rconn, ctx: ctx, idle: orDefault(c.IdleTimeout, DefaultIdleTimeout)}
	if c.Handler != nil {
		hc := &handlerCounts{}
		err = c.Handler.ServeReversed(context.WithValue(ctx, handlerCountsKey{}, hc), rc)
		hc.add(res)
	} else {
		err = c.receive(ctx, rc, res, log)
	}
	if err != nil {
		return res, err
	}
	log.Info("odmr: fetch done", "messages", res.Messages, "recipients", res.Recipients,
		"bytes", res.Bytes, "refused", res.Refused, "refused_locally", res.LocalRefused, "no_mail", res.NoMail)
	return res, nil
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

func (c *Customer) hostname() string     { return hostnameOr(c.Hostname) }
func (c *Customer) logger() *slog.Logger { return loggerOr(c.Logger) }

// customerSession is the initial and authenticated states of one fetch,
// in which the customer is the client.
type customerSession struct {
	c      *Customer
	ctx    context.Context
	conn   net.Conn
	br     *bufio.Reader
	log    *slog.Logger
	addr   string // the provider's, for the debug transcript
	secure bool   // the connection runs over TLS
}

// reply is one reply read off the wire: its code and its lines of text.
type reply struct {
	code  int
	lines []string
}

func (r *reply) text() string { return strings.Join(r.lines, "\n") }

// err returns a failure reply as an *Error.
func (r *reply) err() *Error { return parseReplyText(r.code, r.text()) }

// commandError is a failure reply to one of the customer's commands. It
// unwraps to the reply's *Error.
type commandError struct {
	what string
	err  *Error
}

func (e *commandError) Error() string {
	return "odmr: " + e.what + ": " + strings.TrimPrefix(e.err.Error(), "odmr: ")
}

func (e *commandError) Unwrap() error { return e.err }

// initial runs the session up to the role swap. It reports whether the
// roles reversed; false with a nil error means there is no mail.
func (s *customerSession) initial(domains []string, res *FetchResult) (bool, error) {
	c := s.c
	cmdTimeout := orDefault(c.CommandTimeout, DefaultCommandTimeout)
	if tc, ok := s.conn.(*tls.Conn); ok {
		// Implicit TLS: the handshake comes before the greeting.
		if err := s.handshake(tc, cmdTimeout); err != nil {
			return false, err
		}
	}
	r, err := s.read(cmdTimeout)
	if err != nil {
		return false, s.readErr("greeting", err)
	}
	if r.code != 220 {
		if r.code >= 400 {
			return false, &commandError{"provider not ready", r.err()}
		}
		return false, fmt.Errorf("%w: greeting %d %s", ErrProtocol, r.code, r.text())
	}
	ext, err := s.ehlo(cmdTimeout)
	if err != nil {
		return false, err
	}
	if (c.TLSConfig != nil || c.OpportunisticTLS) && !s.secure {
		_, offered := ext["STARTTLS"]
		switch {
		case !offered && c.OpportunisticTLS:
			s.log.Warn("odmr: the provider does not offer STARTTLS; the session runs in clear text")
		case !offered:
			s.quit()
			return false, ErrNoStartTLS
		default:
			if err := s.startTLS(cmdTimeout); err != nil {
				return false, err
			}
			if ext, err = s.ehlo(cmdTimeout); err != nil {
				return false, err
			}
		}
	}
	if s.secure {
		cs := s.conn.(*tls.Conn).ConnectionState()
		res.TLS = &cs
	}
	if _, ok := ext["ATRN"]; !ok {
		s.quit()
		return false, ErrNoATRN
	}
	client, err := c.saslClient(ext["AUTH"], s.secure)
	if err != nil {
		s.quit()
		return false, err
	}
	mech, err := s.auth(client, cmdTimeout)
	if err != nil {
		return false, err
	}
	res.Mechanism = mech
	s.log.Info("odmr: authenticated", "mechanism", mech)

	atrn := FormatATRN(domains)
	r, err = s.cmd(orDefault(c.ATRNTimeout, DefaultATRNTimeout), atrn, atrn)
	if err != nil {
		return false, s.readErr("ATRN", err)
	}
	switch {
	case r.code == 250:
		s.log.Info("odmr: ATRN accepted, serving the provider", "domains", domains)
		return true, nil
	case r.code == 453:
		s.log.Info("odmr: no mail waiting", "domains", domains)
		res.NoMail = true
		s.quit()
		return false, nil
	case r.code >= 400:
		s.quit()
		return false, &commandError{atrn + " refused", r.err()}
	}
	return false, fmt.Errorf("%w: unexpected reply to ATRN: %d %s", ErrProtocol, r.code, r.text())
}

// ehlo says EHLO and returns the extensions offered, keyed by upper-case
// keyword. AUTH holds the mechanisms offered, upper-cased, also those of
// the old "AUTH=" form.
func (s *customerSession) ehlo(timeout time.Duration) (map[string]string, error) {
	line := "EHLO " + s.c.hostname()
	r, err := s.cmd(timeout, line, line)
	if err != nil {
		return nil, s.readErr("EHLO", err)
	}
	if r.code != 250 {
		s.quit()
		if r.code >= 400 {
			return nil, &commandError{"EHLO refused", r.err()}
		}
		return nil, fmt.Errorf("%w: unexpected reply to EHLO: %d %s", ErrProtocol, r.code, r.text())
	}
	ext := make(map[string]string)
	var mechs []string
	for _, l := range r.lines[1:] {
		kw, param, _ := strings.Cut(strings.TrimSpace(l), " ")
		kw = strings.ToUpper(kw)
		if m, ok := strings.CutPrefix(kw, "AUTH="); ok {
			kw, param = "AUTH", m+" "+param
		}
		if kw == "AUTH" {
			mechs = append(mechs, strings.Fields(strings.ToUpper(param))...)
			continue
		}
		ext[kw] = param
	}
	if len(mechs) > 0 {
		ext["AUTH"] = strings.Join(mechs, " ")
	}
	return ext, nil
}

// startTLS upgrades the connection.
func (s *customerSession) startTLS(timeout time.Duration) error {
	r, err := s.cmd(timeout, "STARTTLS", "STARTTLS")
	if err != nil {
		return s.readErr("STARTTLS", err)
	}
	if r.code != 220 {
		s.quit()
		if r.code >= 400 {
			return &commandError{"STARTTLS refused", r.err()}
		}
		return fmt.Errorf("%w: unexpected reply to STARTTLS: %d %s", ErrProtocol, r.code, r.text())
	}
	if n := s.br.Buffered(); n > 0 {
		// Bytes that came in clear after the 220 are not part of the TLS
		// session: reading them as replies after the handshake would let
		// an attacker inject them (the STARTTLS injection of
		// CVE-2011-0411, against a client). Drop them.
		s.br.Discard(n)
		s.log.Warn("odmr: discarded bytes the provider sent after its reply to STARTTLS", "bytes", n)
	}
	tc := tls.Client(s.conn, s.c.tlsConfig())
	if err := s.handshake(tc, timeout); err != nil {
		return err
	}
	s.conn = tc
	s.br.Reset(tc)
	return nil
}

// handshake runs the TLS handshake on tc, the connection's TLS layer.
func (s *customerSession) handshake(tc *tls.Conn, timeout time.Duration) error {
	if err := s.deadline(timeout); err != nil {
		return err
	}
	if err := tc.HandshakeContext(s.ctx); err != nil {
		if s.ctx.Err() != nil {
			return s.ctx.Err()
		}
		return &tlsError{host: s.c.tlsConfig().ServerName, err: err}
	}
	s.secure = true
	s.log.Debug("odmr: TLS started", "version", tls.VersionName(tc.ConnectionState().Version))
	return nil
}

// tlsError is a failed TLS handshake with the provider. It names the host
// the certificate was checked for and unwraps to crypto/tls's error.
type tlsError struct {
	host string
	err  error
}

func (e *tlsError) Error() string {
	msg := e.err.Error()
	var ve *tls.CertificateVerificationError
	if errors.As(e.err, &ve) {
		msg = ve.Err.Error()
	}
	return "odmr: TLS with " + e.host + ": " + msg
}

func (e *tlsError) Unwrap() error { return e.err }

// DefaultMechanisms is the order in which a [Customer] whose Mechanisms
// field is nil picks a SASL mechanism among those the provider offers:
// EXTERNAL, when the customer has a client certificate and the session
// runs over TLS; the SCRAM mechanisms, which prove the provider knows the
// secret too; then CRAM-MD5, which RFC 2645 makes mandatory; then PLAIN
// and LOGIN.
var DefaultMechanisms = []string{sasl.External, SCRAMSHA256, SCRAMSHA1, CRAMMD5, sasl.Plain, sasl.Login}

// saslClient picks the first mechanism of the customer's list that the
// provider offers: EXTERNAL only under TLS with a client certificate, the
// others only with a Username, PLAIN and LOGIN only under TLS or when
// allowed in clear text.
func (c *Customer) saslClient(offered string, secure bool) (sasl.Client, error) {
	has := make(map[string]bool)
	for _, m := range strings.Fields(offered) {
		has[m] = true
	}
	prefs := c.Mechanisms
	if prefs == nil {
		prefs = DefaultMechanisms
	}
	clearOK := secure || c.AllowInsecureAuth
	inClear, noUser := false, false
	for _, m := range prefs {
		m = strings.ToUpper(m)
		if !has[m] {
			continue
		}
		if m == sasl.External {
			if secure && c.clientCert() {
				return externalClient{}, nil
			}
			continue
		}
		if c.Username == "" {
			noUser = true
			continue
		}
		switch m {
		case SCRAMSHA256, SCRAMSHA1:
			return NewSCRAMClient(m, c.Username, c.Secret), nil
		case CRAMMD5:
			return NewCRAMMD5Client(c.Username, c.Secret), nil
		case sasl.Plain, sasl.Login:
			if !clearOK {
				inClear = true
				continue
			}
			if m == sasl.Plain {
				return sasl.NewPlainClient("", c.Username, c.Secret), nil
			}
			return &loginClient{username: c.Username, password: c.Secret}, nil
		}
	}
	switch {
	case offered == "":
		return nil, fmt.Errorf("%w: the EHLO reply lists no AUTH", ErrNoAuthMechanism)
	case noUser:
		return nil, fmt.Errorf("%w: the provider offers %s; without a Username only EXTERNAL, over TLS with a client certificate, can be used",
			ErrNoAuthMechanism, offered)
	case inClear:
		return nil, fmt.Errorf("%w: the provider offers %s; PLAIN and LOGIN would send the secret in clear text: use TLS or set AllowInsecureAuth",
			ErrNoAuthMechanism, offered)
	}
	return nil, fmt.Errorf("%w: the provider offers %s", ErrNoAuthMechanism, offered)
}

// auth runs the AUTH exchange and returns the mechanism's name.
func (s *customerSession) auth(client sasl.Client, timeout time.Duration) (string, error) {
	mech, ir, err := client.Start()
	if err != nil {
		return "", &authError{"", err}
	}
	line, logged := "AUTH "+mech, "AUTH "+mech
	if ir != nil {
		line += " " + encodeSASL(ir)
		logged += " " + redacted
	}
	r, err := s.cmd(timeout, line, logged)
	for step := 0; ; step++ {
		if err != nil {
			return "", s.readErr("AUTH "+mech, err)
		}
		switch {
		case r.code == 235:
			return mech, nil
		case r.code == 334 && step < maxAuthSteps:
			chal, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(r.text()))
			if derr != nil {
				s.cancelAuth(timeout)
				return "", fmt.Errorf("%w: malformed AUTH %s challenge", ErrProtocol, mech)
			}
			resp, nerr := client.Next(chal)
			if nerr != nil {
				s.cancelAuth(timeout)
				return "", &authError{mech, nerr}
			}
			// An empty response is an empty line; "=" is only for an
			// initial response (RFC 4954 section 4). The assignment is to
			// the loop's r and err: a failed send or read ends the loop.
			r, err = s.cmd(timeout, base64.StdEncoding.EncodeToString(resp), redacted)
			continue
		case r.code >= 400:
			s.quit()
			return "", &commandError{"AUTH " + mech + " refused", r.err()}
		}
		s.quit()
		return "", fmt.Errorf("%w: unexpected reply to AUTH %s: %d %s", ErrProtocol, mech, r.code, r.text())
	}
}

// authError is a failure of the customer's own side of a SASL exchange,
// such as a SCRAM server signature that does not verify.
type authError struct {
	mech string
	err  error
}

func (e *authError) Error() string {
	return strings.TrimSuffix("odmr: AUTH "+e.mech, " ") + ": " + strings.TrimPrefix(e.err.Error(), "odmr: ")
}

func (e *authError) Unwrap() error { return e.err }

func encodeSASL(b []byte) string {
	if len(b) == 0 {
		return "="
	}
	return base64.StdEncoding.EncodeToString(b)
}

// cancelAuth abandons a SASL exchange with "*" (RFC 4954 section 4).
func (s *customerSession) cancelAuth(timeout time.Duration) {
	if _, err := s.cmd(min(timeout, 10*time.Second), "*", redacted); err == nil {
		s.quit()
	}
}

// quit ends the session politely, not waiting long for the reply.
func (s *customerSession) quit() {
	s.cmd(min(orDefault(s.c.CommandTimeout, DefaultCommandTimeout), 10*time.Second), "QUIT", "QUIT")
}

// deadline bounds the next exchange by timeout. It sets the deadline
// before it looks at the context, so that a cancellation cannot slip in
// between and be overwritten.
func (s *customerSession) deadline(timeout time.Duration) error {
	s.conn.SetDeadline(time.Now().Add(timeout))
	return s.ctx.Err()
}

// cmd sends one command line and reads the reply. logged is what the log
// and the debug transcript show of the line.
func (s *customerSession) cmd(timeout time.Duration, line, logged string) (*reply, error) {
	if err := s.deadline(timeout); err != nil {
		return nil, err
	}
	s.log.Debug("odmr: C: " + logged)
	s.debug("C: ", logged)
	if _, err := io.WriteString(s.conn, line+"\r\n"); err != nil {
		return nil, err
	}
	return s.read(timeout)
}

// read reads one reply, possibly of several lines.
func (s *customerSession) read(timeout time.Duration) (*reply, error) {
	if err := s.deadline(timeout); err != nil {
		return nil, err
	}
	var r reply
	for i := 0; ; i++ {
		if i == maxReplyLines {
			return nil, fmt.Errorf("%w: reply longer than %d lines", ErrProtocol, maxReplyLines)
		}
		line, err := wire.ReadLine(s.br, maxReplyLine)
		switch {
		case errors.Is(err, wire.ErrLineTooLong), errors.Is(err, wire.ErrFlood):
			return nil, fmt.Errorf("%w: reply line longer than %d bytes", ErrProtocol, maxReplyLine)
		case errors.Is(err, wire.ErrBareCR):
			return nil, fmt.Errorf("%w: bare CR or NUL in a reply", ErrProtocol)
		case err != nil:
			return nil, err
		}
		code, cont, text, ok := parseReplyLine(line)
		if !ok || (i > 0 && code != r.code) {
			s.debug("P: ", truncate(line, 80))
			return nil, fmt.Errorf("%w: malformed reply %q", ErrProtocol, truncate(line, 80))
		}
		if code == 334 {
			// A SASL challenge.
			line = []byte("334 " + redacted)
		}
		s.debug("P: ", string(line))
		r.code = code
		r.lines = append(r.lines, text)
		if !cont {
			first := r.lines[0]
			if code == 334 {
				first = redacted
			}
			s.log.Debug("odmr: P: " + strconv.Itoa(r.code) + " " + first)
			return &r, nil
		}
	}
}

// parseReplyLine splits "250-text" or "250 text" (or a bare "250").
func parseReplyLine(line []byte) (code int, cont bool, text string, ok bool) {
	if len(line) < 3 || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
		return 0, false, "", false
	}
	for _, c := range line[:3] {
		if c < '0' || c > '9' {
			return 0, false, "", false
		}
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if code < 200 || code > 599 {
		return 0, false, "", false
	}
	if len(line) > 4 {
		text = string(line[4:])
	}
	return code, len(line) > 3 && line[3] == '-', text, true
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// readErr describes a failure to read a reply.
func (s *customerSession) readErr(what string, err error) error {
	if errors.Is(err, ErrProtocol) || s.ctx.Err() != nil {
		return err
	}
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("odmr: provider closed the connection (waiting for the reply to %s)", what)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("odmr: no reply to %s from the provider in time: %w", what, err)
	case s.secure && errors.As(err, &oe) && oe.Op == "remote error":
		// A TLS alert. In TLS 1.3 the provider's verdict on the client
		// certificate arrives after the handshake, with the first read.
		return &tlsError{host: s.c.tlsConfig().ServerName, err: err}
	}
	return fmt.Errorf("odmr: %s: %w", what, err)
}

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

// idleConn is the connection after the swap. Each read waits at most idle
// for the provider, and any traffic starts that wait again; once ctx is
// done every operation fails. It records why reading ended.
type idleConn struct {
	net.Conn
	ctx  context.Context
	idle time.Duration

	mu      sync.Mutex
	readErr error
}

func (c *idleConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	if err := c.ctx.Err(); err != nil {
		c.setErr(err)
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if err != nil {
		c.setErr(err)
	}
	return n, err
}

func (c *idleConn) Write(p []byte) (int, error) {
	now := time.Now()
	c.Conn.SetWriteDeadline(now.Add(c.idle))
	c.Conn.SetReadDeadline(now.Add(c.idle))
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *idleConn) setErr(err error) {
	c.mu.Lock()
	if c.readErr == nil {
		c.readErr = err
	}
	c.mu.Unlock()
}

// err returns the error that ended reading, if any.
func (c *idleConn) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// CloseWrite half-closes the connection when the one underneath can.
func (c *idleConn) CloseWrite() error { return closeWrite(c.Conn) }

// ConnectionState returns the TLS state when the session runs over TLS.
func (c *idleConn) ConnectionState() (tls.ConnectionState, bool) {
	conn := c.Conn
	for range 8 {
		switch t := conn.(type) {
		case *tls.Conn:
			return t.ConnectionState(), true
		case interface {
			ConnectionState() (tls.ConnectionState, bool)
		}:
			return t.ConnectionState()
		}
		u, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		conn = u.NetConn()
	}
	return tls.ConnectionState{}, false
}

// NetConn returns the connection underneath.
func (c *idleConn) NetConn() net.Conn { return c.Conn }

// closeWrite shuts down the writing side of conn, looking through
// wrappers that expose NetConn; it does nothing for a connection that
// cannot half-close.
func closeWrite(conn net.Conn) error {
	for range 8 {
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
		u, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		conn = u.NetConn()
	}
	return nil
}
