package spool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
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
// smarthost with go-smtp's client, one connection per DSN.
type SMTPBouncer struct {
	// Addr is the smarthost's host:port.
	Addr string
	// Security selects TLS; the zero value requires STARTTLS.
	Security Security
	// TLSConfig configures TLS. nil means the system's roots and the host
	// of Addr as the server name.
	TLSConfig *tls.Config
	// Auth, if set, authenticates to the smarthost. It is refused over a
	// connection without TLS unless AllowInsecureAuth is set.
	Auth              sasl.Client
	AllowInsecureAuth bool
	// Hostname is the name sent with EHLO. "" means the name os.Hostname
	// returns. (With StartTLS, go-smtp greets as "localhost" before TLS.)
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
	cfg := b.TLSConfig
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	dial := b.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	raw, err := dial(ctx, "tcp", b.Addr)
	if err != nil {
		return fmt.Errorf("spool: smarthost: %w", err)
	}
	conn := &ctxConn{Conn: raw, ctx: ctx}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var c *smtp.Client
	switch b.Security {
	case StartTLS:
		c, err = smtp.NewClientStartTLS(conn, cfg)
		if err != nil {
			conn.Close()
			return b.fail(ctx, "STARTTLS", err)
		}
	case ImplicitTLS:
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return b.fail(ctx, "TLS", err)
		}
		c = smtp.NewClient(tc)
	case Plaintext:
		c = smtp.NewClient(conn)
	default:
		conn.Close()
		return fmt.Errorf("spool: unknown Security %d", b.Security)
	}
	defer c.Close()
	name := b.Hostname
	if name == "" {
		name, _ = os.Hostname()
	}
	if name != "" {
		if err := c.Hello(name); err != nil {
			return b.fail(ctx, "EHLO", err)
		}
	}
	if b.Auth != nil {
		if _, isTLS := c.TLSConnectionState(); !isTLS && !b.AllowInsecureAuth {
			return errors.New("spool: smarthost: refusing to authenticate without TLS (set AllowInsecureAuth)")
		}
		if err := c.Auth(b.Auth); err != nil {
			return b.fail(ctx, "AUTH", err)
		}
	}
	if err := c.Mail(env.From, &smtp.MailOptions{Size: env.Size, UTF8: env.UTF8}); err != nil {
		return b.fail(ctx, "MAIL", err)
	}
	for _, to := range env.To {
		if err := c.Rcpt(to, nil); err != nil {
			return b.fail(ctx, "RCPT", err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return b.fail(ctx, "DATA", err)
	}
	if _, err := io.Copy(w, dsn); err != nil {
		return b.fail(ctx, "DATA", err)
	}
	if err := w.Close(); err != nil {
		return b.fail(ctx, "DATA", err)
	}
	c.Quit()
	return nil
}

// fail wraps err, keeping an SMTP reply as an *odmr.Error.
func (b *SMTPBouncer) fail(ctx context.Context, step string, err error) error {
	if e := odmr.AsError(err); e != nil {
		return fmt.Errorf("spool: smarthost %s refused %s: %w", b.Addr, step, e)
	}
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return fmt.Errorf("spool: smarthost %s: %s: %w", b.Addr, step, err)
}

// ctxConn keeps the deadlines go-smtp sets within ctx's.
type ctxConn struct {
	net.Conn
	ctx context.Context
}

func (c *ctxConn) clamp(t time.Time) time.Time {
	if c.ctx.Err() != nil {
		return time.Unix(1, 0)
	}
	if d, ok := c.ctx.Deadline(); ok && (t.IsZero() || d.Before(t)) {
		return d
	}
	return t
}

func (c *ctxConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *ctxConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(c.clamp(t)) }
func (c *ctxConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.clamp(t)) }
