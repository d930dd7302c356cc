package smtpsink

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/sockaddr"
)

// errInsecureAuth refuses to authenticate over a connection without TLS.
var errInsecureAuth = errors.New("odmr: local delivery: refusing to authenticate without TLS (set AllowInsecureAuth)")

// tlsConfig returns the configuration for the connection's TLS, nil for
// none: TLS, or an empty one for ImplicitTLS, with the host of Addr as
// the server name when it has none.
func (s *Sink) tlsConfig() *tls.Config {
	cfg := s.TLS
	if cfg == nil {
		if !s.ImplicitTLS {
			return nil
		}
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		if network, address := sockaddr.Split(s.Addr); network == "tcp" {
			if host, _, err := net.SplitHostPort(address); err == nil {
				cfg = cfg.Clone()
				cfg.ServerName = host
			}
		}
	}
	return cfg
}

// implicitTLS starts TLS on conn, the first thing it does, when the sink
// speaks TLS from the first byte; otherwise it returns conn.
func (s *Sink) implicitTLS(ctx context.Context, conn net.Conn) (net.Conn, error) {
	if !s.ImplicitTLS {
		return conn, nil
	}
	tc := tls.Client(conn, s.tlsConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, s.fail("TLS", err)
	}
	return tc, nil
}

// newClient returns the client of a connection that connect opens: with
// STARTTLS, given before anything else (after an EHLO as "localhost"),
// when TLS is set without ImplicitTLS. The server must offer it.
func (s *Sink) newClient(conn net.Conn) (*smtp.Client, error) {
	cfg := s.tlsConfig()
	switch {
	case cfg != nil && !s.ImplicitTLS && s.LMTP:
		conn.Close()
		return nil, errLMTPStartTLS
	case cfg != nil && !s.ImplicitTLS:
		c, err := smtp.NewClientStartTLS(conn, cfg)
		if err != nil {
			conn.Close()
			return nil, s.fail("STARTTLS", err)
		}
		return c, nil
	case s.LMTP:
		return smtp.NewClientLMTP(conn), nil
	}
	return smtp.NewClient(conn), nil
}

// errLMTPStartTLS refuses STARTTLS with LMTP, which the client does not
// give.
var errLMTPStartTLS = errors.New("odmr: local delivery: STARTTLS is not given with LMTP; set ImplicitTLS")

// authenticate authenticates c with Auth, if set: only over TLS unless
// AllowInsecureAuth is set.
func (s *Sink) authenticate(c *smtp.Client) error {
	if s.Auth == nil {
		return nil
	}
	if _, isTLS := c.TLSConnectionState(); !isTLS && !s.AllowInsecureAuth {
		return errInsecureAuth
	}
	if err := c.Auth(s.Auth); err != nil {
		return s.fail("AUTH", err)
	}
	return nil
}

// errNoSTARTTLS refuses a server that does not offer STARTTLS when TLS is
// set: nothing is sent in clear to a server meant to take it over TLS.
var errNoSTARTTLS = errors.New("odmr: local delivery: the server does not offer STARTTLS")

// secure gives a session's client, greeted and introduced as name, what
// connect gives go-smtp's: STARTTLS when TLS is set without ImplicitTLS,
// then AUTH when Auth is set.
func (s *Sink) secure(ctx context.Context, c *client, name string) error {
	if cfg := s.tlsConfig(); cfg != nil && !s.ImplicitTLS {
		if s.LMTP {
			return errLMTPStartTLS
		}
		if !c.has("STARTTLS") {
			return errNoSTARTTLS
		}
		if err := c.startTLS(ctx, cfg, name); err != nil {
			return s.fail("STARTTLS", err)
		}
	}
	if s.Auth == nil {
		return nil
	}
	if _, isTLS := c.conn.(*tls.Conn); !isTLS && !s.AllowInsecureAuth {
		return errInsecureAuth
	}
	if err := c.auth(s.Auth); err != nil {
		return s.fail("AUTH", err)
	}
	return nil
}

// startTLS gives STARTTLS, and EHLO again as name over TLS.
func (c *client) startTLS(ctx context.Context, cfg *tls.Config, name string) error {
	r, err := c.cmd("STARTTLS")
	if err != nil {
		return err
	}
	if err := r.Check(220); err != nil {
		return err
	}
	if c.br.Buffered() > 0 {
		// Bytes sent before TLS that would be read as if after it.
		return errors.New("data after the reply to STARTTLS")
	}
	tc := tls.Client(c.conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	c.conn = tc
	c.br.Reset(tc)
	c.bw.Reset(tc)
	return c.ehlo(name)
}

// auth runs the SASL exchange of a (RFC 4954).
func (c *client) auth(a sasl.Client) error {
	mech, resp, err := a.Start()
	if err != nil {
		return err
	}
	line := "AUTH " + mech
	if resp != nil {
		line += " " + cmp.Or(base64.StdEncoding.EncodeToString(resp), "=")
	}
	for {
		r, err := c.cmd(line)
		if err != nil {
			return err
		}
		if r.Code != 334 {
			return r.Check(235)
		}
		challenge, err := base64.StdEncoding.DecodeString(r.Text)
		if err == nil {
			resp, err = a.Next(challenge)
		}
		if err != nil {
			c.cmd("*") // cancels the exchange (RFC 4954 section 4)
			return err
		}
		line = base64.StdEncoding.EncodeToString(resp)
	}
}
