// Package smtpserver serves one established connection as an SMTP server,
// with github.com/emersion/go-smtp underneath. It is the only part of the
// customer that knows go-smtp: the types it shows are its own, and the
// work-arounds for go-smtp's bugs live here, in workaround.go, each pinned
// by a test of go-smtp's behaviour that fails once go-smtp is fixed.
// UPSTREAM.md beside this file holds the bug reports.
package smtpserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/oneconn"
)

// Config is what Serve needs besides the connection.
type Config struct {
	// Domain is the server's name, in the greeting and at the head of the
	// EHLO and HELO replies.
	Domain string
	// MaxMessageBytes is the largest message taken, advertised with SIZE.
	// 0 means no limit. The session must enforce it too while it reads a
	// message: a message of MaxMessageBytes+1 bytes may reach Data.
	MaxMessageBytes int64
	// MaxLineLength bounds a line, command or message; 0 means go-smtp's
	// 2000 bytes.
	MaxLineLength int
	// SMTPUTF8 and DSN offer those extensions.
	SMTPUTF8, DSN bool
	// TransferWait bounds the wait, in Mail, for the goroutine of a BDAT
	// transfer that was abandoned (see waitTransfer). 0 means 5 minutes.
	TransferWait time.Duration
	// ChunkTooLarge, when not nil, is called when the server itself refuses
	// a BDAT chunk that would take the message over MaxMessageBytes; the
	// session does not see that refusal otherwise, but sees Reset next.
	ChunkTooLarge func()
	// Logger receives the server's own messages: panics as errors, the
	// rest at debug level. nil means slog.Default().
	Logger *slog.Logger
}

// Backend makes the session of a connection at the client's first EHLO
// or HELO. An error refuses the greeting.
type Backend interface {
	NewSession(c *Conn) (Session, error)
}

// BackendFunc is a Backend made of a function.
type BackendFunc func(c *Conn) (Session, error)

// NewSession calls f.
func (f BackendFunc) NewSession(c *Conn) (Session, error) { return f(c) }

var _ Backend = BackendFunc(nil)

// Session receives the transactions of a connection, one at a time. Its
// methods return nil, an *Error for the reply, or another error, which
// go-smtp answers with 554 and the error's text.
type Session interface {
	// Mail starts a transaction.
	Mail(from string, opts MailOptions) error
	// Rcpt adds a recipient to it.
	Rcpt(to string, opts RcptOptions) error
	// Data takes the message, which it must read to its end. With BDAT
	// it runs in a goroutine of its own, and the reader may end with
	// ErrDataReset when the transfer is abandoned.
	Data(r io.Reader) error
	// Reset ends the transaction: RSET, the end of the data, a refusal.
	Reset()
	// Logout is called once when the connection ends.
	Logout() error
}

// MailOptions are the parameters of MAIL FROM.
type MailOptions struct {
	Size       int64  // SIZE, 0 when not given
	Body       string // BODY: "", "7BIT", "8BITMIME" or "BINARYMIME"
	UTF8       bool   // SMTPUTF8
	Return     string // DSN RET: "", "FULL" or "HDRS"
	EnvelopeID string // DSN ENVID, decoded
}

// RcptOptions are the parameters of RCPT TO.
type RcptOptions struct {
	Notify                []string // DSN NOTIFY values, nil when not given
	OriginalRecipientType string   // DSN ORCPT address type
	OriginalRecipient     string   // DSN ORCPT address, decoded
}

// Error is a reply with its code. A zero EnhancedCode is sent as X.0.0,
// X being the class of Code.
type Error struct {
	Code         int
	EnhancedCode [3]int
	Message      string
}

func (e *Error) Error() string {
	return fmt.Sprintf("odmr: %03d %s", e.Code, e.Message)
}

var (
	// ErrDataTooLarge is go-smtp's refusal of a message over
	// MaxMessageBytes; the session may return it too.
	ErrDataTooLarge = fromSMTPError(smtp.ErrDataTooLarge)
	// ErrLineTooLong ends a message with a line over MaxLineLength.
	ErrLineTooLong = errors.New("odmr: line too long")
	// ErrDataReset ends the message of a BDAT transfer that was abandoned:
	// the client sent RSET or QUIT, a chunk was refused, or the connection
	// failed.
	ErrDataReset = errors.New("odmr: message transmission aborted")
)

// Conn is what a session can learn of its connection.
type Conn struct {
	c    *smtp.Conn
	wire *wireConn
}

// Hostname is the name the client gave in its latest EHLO or HELO.
func (c *Conn) Hostname() string { return c.c.Hostname() }

// RemoteAddr is the client's address.
func (c *Conn) RemoteAddr() net.Addr { return c.c.Conn().RemoteAddr() }

// HELO reports whether the client's latest greeting was HELO, not EHLO.
func (c *Conn) HELO() bool { return c.wire.heloGreeting() }

// Serve serves conn until it is closed, and closes it. Every goroutine
// it started has ended when it returns, the sessions' Data calls
// included. ctx bounds the waits of the work-arounds; cancel it and
// close conn to stop.
func Serve(ctx context.Context, conn net.Conn, cfg Config, b Backend) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	wait := cfg.TransferWait
	if wait == 0 {
		wait = 5 * time.Minute
	}
	a := &adapter{ctx: ctx, b: b, log: log, wait: wait}
	a.wire = &wireConn{Conn: conn, domain: cfg.Domain, maxSize: cfg.MaxMessageBytes, chunkTooLarge: cfg.ChunkTooLarge}
	srv := smtp.NewServer(a)
	srv.Domain = cfg.Domain
	srv.MaxMessageBytes = sizeLimit(cfg.MaxMessageBytes)
	if cfg.MaxLineLength > 0 {
		srv.MaxLineLength = cfg.MaxLineLength
	}
	srv.EnableSMTPUTF8 = cfg.SMTPUTF8
	srv.EnableDSN = cfg.DSN
	srv.ErrorLog = logger{log}

	l := oneconn.New(a.wire)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	<-l.Done()
	// The session has closed the connection; Shutdown closes the listener
	// and waits for the session's goroutine, and Serve then returns.
	srv.Shutdown(context.Background())
	<-served
	// A BDAT transfer runs Data in a goroutine of its own that the server
	// does not wait for.
	a.inflight.Wait()
}

// adapter is the go-smtp backend of one connection.
type adapter struct {
	ctx      context.Context
	b        Backend
	log      *slog.Logger
	wait     time.Duration
	wire     *wireConn
	inflight sync.WaitGroup // Data calls under way
}

func (a *adapter) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s, err := a.b.NewSession(&Conn{c: c, wire: a.wire})
	if err != nil {
		return nil, toSMTPError(err)
	}
	as := &session{a: a, s: s}
	as.changed = sync.NewCond(&as.mu)
	a.wire.setSession(as)
	return as, nil
}

// session passes go-smtp's calls on to the Session, in this package's
// types, and carries the BDAT work-around.
type session struct {
	a *adapter
	s Session
	transfer
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.waitTransfer()
	var o MailOptions
	if opts != nil {
		o = MailOptions{Size: opts.Size, Body: string(opts.Body), UTF8: opts.UTF8, Return: string(opts.Return), EnvelopeID: opts.EnvelopeID}
	}
	return s.reply(s.s.Mail(from, o))
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	var o RcptOptions
	if opts != nil {
		o = RcptOptions{OriginalRecipientType: string(opts.OriginalRecipientType), OriginalRecipient: opts.OriginalRecipient}
		for _, n := range opts.Notify {
			o.Notify = append(o.Notify, string(n))
		}
	}
	return s.reply(s.s.Rcpt(to, o))
}

func (s *session) Data(r io.Reader) error {
	s.a.inflight.Add(1)
	defer s.a.inflight.Done()
	if pr, ok := r.(*io.PipeReader); ok {
		s.entered(pr)
		defer s.returned()
	}
	return s.reply(s.s.Data(dataReader{r}))
}

func (s *session) Reset() { s.s.Reset() }

func (s *session) Logout() error { return s.s.Logout() }

// reply turns the session's error into go-smtp's. It notes a refusal in
// the words go-smtp uses for a chunk over the limit, so that the reply is
// not taken for go-smtp's own (see wireConn).
func (s *session) reply(err error) error {
	se := toSMTPError(err)
	if se, ok := se.(*smtp.SMTPError); ok && isChunkRefusal(se.Code, se.EnhancedCode, se.Message) {
		s.a.wire.sessionRefused()
	}
	return se
}

// toSMTPError converts a session's error for go-smtp.
func toSMTPError(err error) error {
	var e *Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e):
		return &smtp.SMTPError{Code: e.Code, EnhancedCode: smtp.EnhancedCode(e.EnhancedCode), Message: e.Message}
	case errors.Is(err, ErrDataReset):
		return smtp.ErrDataReset
	case errors.Is(err, ErrLineTooLong):
		return smtp.ErrTooLongLine
	}
	return err
}

// AsError finds a go-smtp SMTPError in err's chain, as a sink built on
// go-smtp's client returns, and converts it; ok is false when there is
// none. A missing enhanced code is left zero.
func AsError(err error) (e *Error, ok bool) {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return nil, false
	}
	e = &Error{Code: se.Code, Message: se.Message}
	if se.EnhancedCode != smtp.EnhancedCodeNotSet && se.EnhancedCode != smtp.NoEnhancedCode {
		e.EnhancedCode = [3]int(se.EnhancedCode)
	}
	return e, true
}

func fromSMTPError(e *smtp.SMTPError) *Error {
	return &Error{Code: e.Code, EnhancedCode: [3]int(e.EnhancedCode), Message: e.Message}
}

// dataReader gives the session this package's errors for go-smtp's.
type dataReader struct{ r io.Reader }

func (d dataReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	switch {
	case err == nil || err == io.EOF:
	case err == smtp.ErrDataTooLarge:
		err = ErrDataTooLarge
	case errors.Is(err, smtp.ErrTooLongLine):
		err = ErrLineTooLong
	case errors.Is(err, smtp.ErrDataReset):
		err = ErrDataReset
	}
	return n, err
}

// logger passes go-smtp's server log to slog: panics as errors, the rest
// (mostly connections that ended abruptly) at debug level.
type logger struct{ log *slog.Logger }

func (l logger) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }

func (l logger) Println(v ...any) { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l logger) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		l.log.Error("odmr: smtp server: " + msg)
		return
	}
	l.log.Debug("odmr: smtp server: " + msg)
}

// ErrorLog returns the go-smtp server log that Serve uses, for the
// go-smtp servers of tests.
func ErrorLog(log *slog.Logger) smtp.Logger { return logger{log} }
