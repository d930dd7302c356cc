// Package smtprecorder is a go-smtp backend that keeps every message it
// receives: the local mail server behind a customer that the conformance
// suite checks (fetchmail's smtphost, odmr-customer's -smtp), so that the
// suite can compare what arrived with what it sent.
package smtprecorder

import (
	"io"
	"net"
	"slices"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/odmrtest"
)

// Recorder is a go-smtp backend that keeps the messages it receives. The
// zero value takes every recipient.
type Recorder struct {
	// Refuse, if set, is a recipient refused at RCPT with 550 5.1.1, for
	// the check 5.3/per-recipient-refusal.
	Refuse string

	mu   sync.Mutex
	msgs []odmrtest.Message
}

var _ smtp.Backend = (*Recorder)(nil)

// Mark returns the position from which Since reports messages.
func (r *Recorder) Mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

// Since returns the messages received after mark, in order.
func (r *Recorder) Since(mark int) []odmrtest.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs[mark:])
}

// Messages returns every message received, in order.
func (r *Recorder) Messages() []odmrtest.Message { return r.Since(0) }

// NewSession starts a session of the backend.
func (r *Recorder) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &session{r: r}, nil
}

type session struct {
	r   *Recorder
	cur odmrtest.Message
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.cur = odmrtest.Message{From: from}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.r.Refuse != "" && strings.EqualFold(to, s.r.Refuse) {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	}
	s.cur.To = append(s.cur.To, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.Body = string(b)
	s.r.mu.Lock()
	s.r.msgs = append(s.r.msgs, s.cur)
	s.r.mu.Unlock()
	return nil
}

func (s *session) Reset()        { s.cur = odmrtest.Message{} }
func (s *session) Logout() error { return nil }

// StrictEOFListener hands the server connections whose end reads as an
// error instead of io.EOF. go-smtp copies a BDAT chunk with io.Copy,
// which takes io.EOF for the chunk's end (internal/smtpserver/UPSTREAM.md):
// without this the server would store a message cut inside its last
// chunk as if it were whole, and RFC3030/provider-cuts-mid-BDAT would
// fail on the server rather than on the customer in front of it.
// odmr.Customer does the same for itself.
type StrictEOFListener struct{ net.Listener }

// Accept wraps the next connection.
func (l StrictEOFListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return strictEOFConn{c}, nil
}

type strictEOFConn struct{ net.Conn }

func (c strictEOFConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		err = net.ErrClosed
	}
	return n, err
}
