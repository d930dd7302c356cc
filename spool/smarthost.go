package spool

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/smtpsink"
)

// Security says how an [SMTPBouncer] protects its connection.
type Security int

const (
	// StartTLS requires the smarthost to offer STARTTLS and uses it before
	// anything else is sent. It is the zero value.
	StartTLS Security = iota
	// ImplicitTLS speaks TLS from the first byte (submissions, port 465).
	ImplicitTLS
	// Plaintext sends everything in clear: for a smarthost on the same
	// host or a trusted network.
	Plaintext
)

// DefaultBounceTimeout bounds one DSN sent by an [SMTPBouncer] whose
// Timeout is zero.
const DefaultBounceTimeout = 5 * time.Minute

// SMTPBouncer is a [Bouncer] that relays each DSN through an SMTP
// smarthost, one connection per DSN, with the client of package
// [smtpsink].
type SMTPBouncer struct {
	// Addr is the smarthost's host:port.
	Addr string
	// Security selects TLS; the zero value requires STARTTLS.
	Security Security
	// TLSConfig configures TLS. nil means the system's roots and the host
	// of Addr as the server name.
	TLSConfig *tls.Config
	// Auth, if set, authenticates to the smarthost. It is refused over a
	// connection without TLS unless AllowInsecureAuth is set. nil means no
	// AUTH.
	Auth sasl.Client
	// AllowInsecureAuth lets Auth run over Plaintext. false refuses it.
	AllowInsecureAuth bool
	// Hostname is the name sent with EHLO. "" means the name os.Hostname
	// returns. (With StartTLS, the EHLO before TLS says "localhost".)
	Hostname string
	// Timeout bounds one DSN, from dialing to QUIT. 0 means
	// DefaultBounceTimeout.
	Timeout time.Duration
	// Dial opens the connection. nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Bounce sends dsn to env.To through the smarthost. A refusal by the
// smarthost comes back as an *odmr.Error, so a 5xx makes the spool give
// the DSN up and a 4xx makes it try again.
func (b *SMTPBouncer) Bounce(ctx context.Context, env odmr.Envelope, dsn io.Reader) error {
	timeout := b.Timeout
	if timeout <= 0 {
		timeout = DefaultBounceTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	host, _, err := net.SplitHostPort(b.Addr)
	if err != nil {
		return fmt.Errorf("spool: smarthost address: %w", err)
	}
	sink := &smtpsink.Sink{
		Addr:              b.Addr,
		LocalName:         b.Hostname,
		Dial:              b.Dial,
		Timeout:           timeout,
		NoDSN:             true, // a DSN asks for no DSN of its own
		Auth:              b.Auth,
		AllowInsecureAuth: b.AllowInsecureAuth,
	}
	if sink.LocalName == "" {
		sink.LocalName, _ = os.Hostname()
	}
	switch b.Security {
	case StartTLS, ImplicitTLS:
		cfg := b.TLSConfig
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		sink.TLS, sink.ImplicitTLS = cfg, b.Security == ImplicitTLS
	case Plaintext:
	default:
		return fmt.Errorf("spool: unknown Security %d", b.Security)
	}
	if err := sink.Deliver(ctx, env, dsn); err != nil {
		if e := odmr.AsError(err); e != nil {
			return fmt.Errorf("spool: smarthost %s refused the DSN: %w", b.Addr, e)
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("spool: smarthost %s: %w", b.Addr, err)
	}
	return nil
}
