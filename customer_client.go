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
	"strconv"
	"strings"
	"time"

	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/wire"
)

// customerReplyLimits bound what the customer reads of one reply before
// the swap.
var customerReplyLimits = wire.ReplyLimits{Line: 4096, Lines: 100}

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

// reply is one reply read off the wire.
type reply = wire.Reply

// initial runs the session up to the role swap. It reports whether the
// roles reversed; false with a nil error means there is no mail.
func (s *customerSession) initial(domains []string, res *FetchResult) (bool, error) {
	c := s.c
	cmdTimeout := orDefault(c.CommandTimeout, defaults.CommandTimeout)
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
	if r.Code != 220 {
		if r.Code >= 400 {
			return false, &commandError{"provider not ready", parseReplyText(r.Code, r.Text)}
		}
		return false, fmt.Errorf("%w: greeting %d %s", ErrProtocol, r.Code, r.Text)
	}
	ext, err := s.ehlo(cmdTimeout)
	if err != nil {
		return false, err
	}
	if ext, err = s.maybeStartTLS(ext, cmdTimeout); err != nil {
		return false, err
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
	return s.atrn(domains, res)
}

// maybeStartTLS upgrades the connection when the customer wants TLS and
// the provider's EHLO reply, ext, offers it, and returns the extensions
// of the EHLO said again under TLS. Without the offer, a customer that
// requires TLS quits with ErrNoStartTLS; an opportunistic one goes on
// in clear text.
func (s *customerSession) maybeStartTLS(ext map[string]string, timeout time.Duration) (map[string]string, error) {
	c := s.c
	if (c.TLSConfig == nil && !c.OpportunisticTLS) || s.secure {
		return ext, nil
	}
	_, offered := ext["STARTTLS"]
	switch {
	case !offered && c.OpportunisticTLS:
		s.log.Warn("odmr: the provider does not offer STARTTLS; the session runs in clear text")
		return ext, nil
	case !offered:
		s.quit()
		return nil, ErrNoStartTLS
	}
	if err := s.startTLS(timeout); err != nil {
		return nil, err
	}
	return s.ehlo(timeout)
}

// atrn sends ATRN for domains, in the authenticated state, and reports
// whether the roles reversed; false with a nil error means there is no
// mail.
func (s *customerSession) atrn(domains []string, res *FetchResult) (bool, error) {
	c := s.c
	atrn := FormatATRN(domains)
	r, err := s.cmd(orDefault(c.ATRNTimeout, defaults.ATRNTimeout), atrn, atrn)
	if err != nil {
		return false, s.readErr("ATRN", err)
	}
	switch {
	case r.Code == 250:
		s.log.Info("odmr: ATRN accepted, serving the provider", "domains", domains)
		return true, nil
	case r.Code == 453:
		s.log.Info("odmr: no mail waiting", "domains", domains)
		res.NoMail = true
		s.quit()
		return false, nil
	case r.Code >= 400:
		s.quit()
		return false, &commandError{atrn + " refused", parseReplyText(r.Code, r.Text)}
	}
	return false, fmt.Errorf("%w: unexpected reply to ATRN: %d %s", ErrProtocol, r.Code, r.Text)
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
	if r.Code != 250 {
		s.quit()
		if r.Code >= 400 {
			return nil, &commandError{"EHLO refused", parseReplyText(r.Code, r.Text)}
		}
		return nil, fmt.Errorf("%w: unexpected reply to EHLO: %d %s", ErrProtocol, r.Code, r.Text)
	}
	ext := make(map[string]string)
	var mechs []string
	for _, l := range r.Lines()[1:] {
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
	if r.Code != 220 {
		s.quit()
		if r.Code >= 400 {
			return &commandError{"STARTTLS refused", parseReplyText(r.Code, r.Text)}
		}
		return fmt.Errorf("%w: unexpected reply to STARTTLS: %d %s", ErrProtocol, r.Code, r.Text)
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

// quit ends the session politely, not waiting long for the reply.
func (s *customerSession) quit() {
	s.cmd(min(orDefault(s.c.CommandTimeout, defaults.CommandTimeout), 10*time.Second), "QUIT", "QUIT")
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

// read reads one reply, possibly of several lines, with package wire's
// reply codec. The debug transcript shows each line as it comes, a SASL
// challenge redacted.
func (s *customerSession) read(timeout time.Duration) (*reply, error) {
	if err := s.deadline(timeout); err != nil {
		return nil, err
	}
	code := 0
	r, err := wire.ReadReply(s.br, customerReplyLimits, func(line []byte) {
		c, _, _, ok := wire.ParseReplyLine(line)
		switch {
		case !ok || (code != 0 && c != code):
			s.debug("P: ", wire.Truncate(line, 80))
			return
		case c == 334:
			// A SASL challenge.
			line = []byte("334 " + redacted)
		}
		code = c
		s.debug("P: ", string(line))
	})
	if err != nil {
		return nil, err
	}
	first, _, _ := strings.Cut(r.Text, "\n")
	if r.Code == 334 {
		first = redacted
	}
	s.log.Debug("odmr: P: " + strconv.Itoa(r.Code) + " " + first)
	return &r, nil
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
