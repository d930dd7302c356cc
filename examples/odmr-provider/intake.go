package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/crlf"
	"github.com/go-odmr/odmr/internal/mailbox"
)

// enqueuer stores an accepted message and returns its queue ID; it returns
// only once the message is safely queued.
type enqueuer func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error)

// intake is the SMTP server that accepts mail for the customers' domains:
// it is the MX the customers' domains point at. It relays nothing: a
// recipient outside the accounts' domains gets 550 5.7.1.
type intake struct {
	// accounts names the domains served: odmr.Accounts, or the
	// program's accountStore, which SIGHUP reloads.
	accounts interface {
		Owner(domain string) (odmr.Account, bool)
	}
	enqueue enqueuer
	// checkQuota, if set, refuses a recipient whose domain is over quota
	// (452) before the data is sent.
	checkQuota func(rcpt string) error
	log        *slog.Logger
	// hostname names the intake in the Received field it stamps; ""
	// means "localhost".
	hostname string
}

func (in *intake) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &intakeSession{in: in, conn: c, remote: c.Conn().RemoteAddr().String()}, nil
}

type intakeSession struct {
	in     *intake
	conn   *smtp.Conn
	remote string
	env    odmr.Envelope
}

var (
	errRelayDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied: not a domain served here"}
	errBadSender   = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	errBadRcpt     = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	// errBareLineEnding refuses a message with a CR or LF outside a CRLF
	// pair (RFC 5321 section 2.3.8), as Postfix's
	// smtpd_forbid_bare_newline does: passed on, such a message is how
	// SMTP smuggling works. The same reply as the customer's.
	errBareLineEnding = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message contains a bare CR or LF; lines must end with CRLF"}
)

// Mail starts a transaction. go-smtp hands over addresses with a quoted
// local part unquoted ("a b"@x as a b@x): mailbox.Quote puts the quotes
// back, so the queue keeps the address as the sender meant it.
func (s *intakeSession) Mail(from string, opts *smtp.MailOptions) error {
	from, ok := mailbox.Quote(from)
	if !ok {
		return errBadSender
	}
	s.env = odmr.Envelope{From: from}
	if opts != nil {
		s.env.Size = opts.Size
		s.env.Body = odmr.BodyType(opts.Body)
		s.env.UTF8 = opts.UTF8
		if opts.Return != "" || opts.EnvelopeID != "" {
			s.env.DSN = &odmr.DSN{Return: odmr.DSNReturn(opts.Return), EnvID: opts.EnvelopeID}
		}
	}
	return nil
}

// addDSN keeps the DSN requests of one RCPT (RFC 3461) in the envelope.
func (s *intakeSession) addDSN(to string, opts *smtp.RcptOptions) {
	if opts == nil || (opts.Notify == nil && opts.OriginalRecipient == "") {
		return
	}
	if s.env.DSN == nil {
		s.env.DSN = &odmr.DSN{}
	}
	if s.env.DSN.Recipients == nil {
		s.env.DSN.Recipients = make(map[string]odmr.RecipientDSN)
	}
	r := odmr.RecipientDSN{ORcptType: string(opts.OriginalRecipientType), ORcpt: opts.OriginalRecipient}
	for _, n := range opts.Notify {
		r.Notify = append(r.Notify, odmr.DSNNotify(n))
	}
	s.env.DSN.Recipients[to] = r
}

// Rcpt adds a recipient of one of the accounts' domains, in either form
// of an internationalized domain (odmr.RecipientDomain maps both to one).
func (s *intakeSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	to, ok := mailbox.Quote(to)
	if !ok {
		return errBadRcpt
	}
	if _, ok := s.in.accounts.Owner(odmr.RecipientDomain(to)); !ok {
		return errRelayDenied
	}
	if s.in.checkQuota != nil {
		if err := s.in.checkQuota(to); err != nil {
			return toSMTPError(s.in.log, err)
		}
	}
	s.env.To = append(s.env.To, to)
	s.addDSN(to, opts)
	return nil
}

// Data queues the message; by DATA or BDAT alike, a bare CR or LF in it
// refuses it with 554 5.6.0 and nothing is queued.
func (s *intakeSession) Data(r io.Reader) error {
	env := s.env
	env.Size = 0 // the queue measures what it stores
	now := time.Now()
	id := newIntakeID(now)
	_, isTLS := s.conn.TLSConnectionState()
	host := s.in.hostname
	if host == "" {
		host = "localhost"
	}
	trace := receivedField(s.conn.Hostname(), s.conn.Conn().RemoteAddr(), host, id, isTLS, env.UTF8, env.To, now)
	size := &countReader{R: io.MultiReader(strings.NewReader(trace), r)}
	body := &crlf.Checker{R: size}
	qid, err := s.in.enqueue(context.Background(), env, body)
	if err != nil {
		if body.Err() != nil {
			s.in.log.Warn("odmr-provider: message refused: bare CR or LF", "remote", s.remote, "from", env.From)
			return errBareLineEnding
		}
		return toSMTPError(s.in.log, err)
	}
	s.in.log.Info("odmr-provider: queued", "id", qid, "intake-id", id, "remote", s.remote, "from", env.From, "to", env.To, "size", size.N)
	return nil
}

// countReader counts the bytes read through it.
type countReader struct {
	R io.Reader
	N int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}

var errNoSpace = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage, try again later"}

// toSMTPError turns a queue's refusal into a reply; other errors are
// logged and answered 451 without their text.
func toSMTPError(log *slog.Logger, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	if e := odmr.AsError(err); e != nil {
		ec := smtp.EnhancedCode(e.EnhancedCode)
		if e.EnhancedCode == (odmr.EnhancedCode{}) {
			ec = smtp.EnhancedCodeNotSet
		}
		return &smtp.SMTPError{Code: e.Code, EnhancedCode: ec, Message: e.Message}
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		// RFC 3463: 4.3.1, mail system full; RFC 5321: 452, insufficient
		// system storage. The sender retries later, as with a 451.
		log.Error("odmr-provider: cannot queue message: no space left", "err", err)
		return errNoSpace
	}
	log.Error("odmr-provider: cannot queue message", "err", err)
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Local error, try again later"}
}

func (s *intakeSession) Reset()        { s.env = odmr.Envelope{} }
func (s *intakeSession) Logout() error { return nil }
