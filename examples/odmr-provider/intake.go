package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"syscall"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
)

// enqueuer stores an accepted message; it returns only once the message is
// safely queued.
type enqueuer func(ctx context.Context, env odmr.Envelope, body io.Reader) error

// intake is the SMTP server that accepts mail for the customers' domains:
// it is the MX the customers' domains point at. It relays nothing: a
// recipient outside the accounts' domains gets 550 5.7.1.
type intake struct {
	accounts odmr.Accounts
	enqueue  enqueuer
	// checkQuota, if set, refuses a recipient whose domain is over quota
	// (452) before the data is sent.
	checkQuota func(rcpt string) error
	log        *slog.Logger
}

func (in *intake) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &intakeSession{in: in, remote: c.Conn().RemoteAddr().String()}, nil
}

type intakeSession struct {
	in     *intake
	remote string
	env    odmr.Envelope
}

var errRelayDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied: not a domain served here"}

func (s *intakeSession) Mail(from string, opts *smtp.MailOptions) error {
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

func (s *intakeSession) Rcpt(to string, opts *smtp.RcptOptions) error {
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

func (s *intakeSession) Data(r io.Reader) error {
	env := s.env
	env.Size = 0 // the queue measures what it stores
	if err := s.in.enqueue(context.Background(), env, r); err != nil {
		return toSMTPError(s.in.log, err)
	}
	s.in.log.Info("odmr-provider: queued", "remote", s.remote, "from", env.From, "to", env.To)
	return nil
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
