package smtptest

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Smarthost is a go-smtp server on loopback playing a smarthost: it takes
// AUTH PLAIN with any user name and the password "secret", and notes for
// each message whether it came over TLS, who had authenticated, and the
// name given in EHLO. Set its fields, then call Start; they must not
// change after.
type Smarthost struct {
	// TLS is offered with STARTTLS, or spoken from the first byte when
	// ImplicitTLS is set; nil means neither.
	TLS         *tls.Config
	ImplicitTLS bool
	// AllowInsecureAuth takes AUTH without TLS.
	AllowInsecureAuth bool
	// Rcpt, if set, answers RCPT TO: an error refuses the recipient. nil
	// takes every recipient.
	Rcpt func(to string) error

	// Addr is where Start listens: 127.0.0.1 and a free port.
	Addr string

	mu  sync.Mutex
	got []Message
}

// Start listens on loopback and serves; the test's cleanup shuts the
// server down.
func (h *Smarthost) Start(t testing.TB) {
	t.Helper()
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &smarthostSession{h: h, conn: c}, nil
	}))
	srv.Domain = "smarthost.test"
	srv.AllowInsecureAuth = h.AllowInsecureAuth
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if h.ImplicitTLS {
		l = tls.NewListener(l, h.TLS)
	} else {
		srv.TLSConfig = h.TLS
	}
	h.Addr = l.Addr().String()
	serve(t, srv, l)
}

// Messages returns the messages h has taken, in order.
func (h *Smarthost) Messages() []Message {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Message(nil), h.got...)
}

type smarthostSession struct {
	h    *Smarthost
	conn *smtp.Conn
	user string
	from string
	to   []string
}

func (s *smarthostSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *smarthostSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if pass != "secret" {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		s.user = user
		return nil
	}), nil
}

func (s *smarthostSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from, s.to = from, nil
	return nil
}

func (s *smarthostSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.h.Rcpt != nil {
		if err := s.h.Rcpt(to); err != nil {
			return err
		}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *smarthostSession) Reset()        { s.from, s.to = "", nil }
func (s *smarthostSession) Logout() error { return nil }

func (s *smarthostSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	_, isTLS := s.conn.TLSConnectionState()
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	s.h.got = append(s.h.got, Message{
		From: s.from, To: s.to, Body: string(b),
		TLS: isTLS, User: s.user, Hostname: s.conn.Hostname(),
	})
	return nil
}
