package smtptest

import (
	"bytes"
	"io"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"
)

// Message is what a test server noted of one message it took.
type Message struct {
	From string
	To   []string
	Body string

	// What a Smarthost notes besides.
	TLS      bool   // it came over TLS
	User     string // who had authenticated; "" for nobody
	Hostname string // the name given in EHLO
}

// Refusing is a go-smtp backend playing a receiving MTA: it refuses
// recipients whose local part starts with "temp" (450 4.2.1) or "perm"
// (550 5.1.1), and bodies that contain "virus" (554 5.7.1), and keeps the
// rest. The zero value is ready to use.
type Refusing struct {
	mu  sync.Mutex
	got []Message
}

// Messages returns the messages b has taken, in order.
func (b *Refusing) Messages() []Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Message(nil), b.got...)
}

// NewSession implements smtp.Backend.
func (b *Refusing) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &refusingSession{b: b}, nil
}

type refusingSession struct {
	b    *Refusing
	from string
	to   []string
}

func (s *refusingSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from, s.to = from, nil
	return nil
}

func (s *refusingSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	switch {
	case strings.HasPrefix(to, "temp"):
		return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "busy"}
	case strings.HasPrefix(to, "perm"):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *refusingSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if bytes.Contains(b, []byte("virus")) {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "rejected"}
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.got = append(s.b.got, Message{From: s.from, To: s.to, Body: string(b)})
	return nil
}

func (s *refusingSession) Reset()        { s.from, s.to = "", nil }
func (s *refusingSession) Logout() error { return nil }
