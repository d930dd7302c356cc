package odmr

import (
	"github.com/go-odmr/odmr/internal/dsnparam"
	"github.com/go-odmr/odmr/internal/smtpserver"
)

// This file carries RFC 3461 delivery status notification parameters,
// MAIL's RET and ENVID and RCPT's NOTIFY and ORCPT, to and from
// Envelope.DSN. The provider's delivery engine writes its own commands
// with dsnMailParams and dsnRcptParams (package internal/xtext encodes);
// the customer's intake reads its SMTP server's options (dsnFromMail,
// addRcptDSN). Package smtpsink gives its clients the parameters itself.

// dsnFromMail starts the DSN of a transaction from MAIL's options; nil
// when MAIL had no DSN parameter.
func dsnFromMail(opts smtpserver.MailOptions) *DSN {
	if opts.Return == "" && opts.EnvelopeID == "" {
		return nil
	}
	return &DSN{Return: DSNReturn(opts.Return), EnvID: opts.EnvelopeID}
}

// addRcptDSN records rcpt's NOTIFY and ORCPT in *d, creating it when
// needed.
func addRcptDSN(d **DSN, rcpt string, opts smtpserver.RcptOptions) {
	if opts.Notify == nil && opts.OriginalRecipient == "" {
		return
	}
	if *d == nil {
		*d = &DSN{}
	}
	if (*d).Recipients == nil {
		(*d).Recipients = make(map[string]RecipientDSN)
	}
	r := RecipientDSN{ORcptType: opts.OriginalRecipientType, ORcpt: opts.OriginalRecipient}
	for _, n := range opts.Notify {
		r.Notify = append(r.Notify, DSNNotify(n))
	}
	(*d).Recipients[rcpt] = r
}

// dsnMailParams are the MAIL parameters of env's DSN for the delivery
// engine, each with a leading space.
func dsnMailParams(env Envelope) string {
	if env.DSN == nil {
		return ""
	}
	return dsnparam.MailParams(env.DSN.Return, env.DSN.EnvID)
}

// dsnRcptParams are the RCPT parameters of rcpt's DSN requests for the
// delivery engine; utf8 tells that the receiver offers SMTPUTF8.
func dsnRcptParams(env Envelope, rcpt string, utf8 bool) string {
	if env.DSN == nil {
		return ""
	}
	r, ok := env.DSN.Recipients[rcpt]
	if !ok {
		return ""
	}
	return dsnparam.RcptParams(r.Notify, r.ORcptType, r.ORcpt, utf8)
}
