package odmr

import (
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/xtext"
)

// This file carries RFC 3461 delivery status notification parameters
// between Envelope.DSN and go-smtp's options, in both roles: MAIL's RET
// and ENVID, RCPT's NOTIFY and ORCPT. go-smtp decodes and encodes xtext
// itself; the pipelined path writes its own commands, with package
// internal/xtext.

// only returns a copy of d with the requests of the recipients in to
// alone; nil when nothing is left.
func (d *DSN) only(to []string) *DSN {
	if d == nil {
		return nil
	}
	c := &DSN{Return: d.Return, EnvID: d.EnvID}
	for _, r := range to {
		if rd, ok := d.Recipients[r]; ok {
			if c.Recipients == nil {
				c.Recipients = make(map[string]RecipientDSN)
			}
			rd.Notify = slices.Clone(rd.Notify)
			c.Recipients[r] = rd
		}
	}
	if c.Return == "" && c.EnvID == "" && c.Recipients == nil {
		return nil
	}
	return c
}

// dsnFromMail starts the DSN of a transaction from MAIL's options; nil
// when MAIL had no DSN parameter.
func dsnFromMail(opts *smtp.MailOptions) *DSN {
	if opts == nil || (opts.Return == "" && opts.EnvelopeID == "") {
		return nil
	}
	return &DSN{Return: DSNReturn(opts.Return), EnvID: opts.EnvelopeID}
}

// addRcptDSN records rcpt's NOTIFY and ORCPT in *d, creating it when
// needed.
func addRcptDSN(d **DSN, rcpt string, opts *smtp.RcptOptions) {
	if opts == nil || (opts.Notify == nil && opts.OriginalRecipient == "") {
		return
	}
	if *d == nil {
		*d = &DSN{}
	}
	if (*d).Recipients == nil {
		(*d).Recipients = make(map[string]RecipientDSN)
	}
	r := RecipientDSN{ORcptType: string(opts.OriginalRecipientType), ORcpt: opts.OriginalRecipient}
	for _, n := range opts.Notify {
		r.Notify = append(r.Notify, DSNNotify(n))
	}
	(*d).Recipients[rcpt] = r
}

// dsnMailOptions adds env's RET and ENVID to opts. go-smtp's client
// sends them only to a server that offers DSN.
func dsnMailOptions(opts *smtp.MailOptions, env Envelope) *smtp.MailOptions {
	if env.DSN != nil {
		opts.Return = smtp.DSNReturn(validReturn(env.DSN.Return))
		if sendableEnvID(env.DSN.EnvID) {
			opts.EnvelopeID = env.DSN.EnvID
		}
	}
	return opts
}

// dsnRcptOptions returns rcpt's NOTIFY and ORCPT as go-smtp options, nil
// when there are none. go-smtp's client sends them only to a server that
// offers DSN.
func dsnRcptOptions(env Envelope, rcpt string) *smtp.RcptOptions {
	if env.DSN == nil {
		return nil
	}
	r, ok := env.DSN.Recipients[rcpt]
	if !ok {
		return nil
	}
	opts := &smtp.RcptOptions{}
	if validNotify(r.Notify) {
		for _, n := range r.Notify {
			opts.Notify = append(opts.Notify, smtp.DSNNotify(n))
		}
	}
	if t := orcptType(r); t != "" && len(orcptValue(t, r.ORcpt, false)) <= maxORcpt {
		opts.OriginalRecipientType, opts.OriginalRecipient = smtp.DSNAddressType(t), r.ORcpt
	}
	return opts
}

// dsnMailParams are the MAIL parameters of env's DSN for the pipelined
// path, each with a leading space, as go-smtp's client would send them.
func dsnMailParams(env Envelope) string {
	if env.DSN == nil {
		return ""
	}
	var b strings.Builder
	if r := validReturn(env.DSN.Return); r != "" {
		b.WriteString(" RET=" + string(r))
	}
	if id := env.DSN.EnvID; id != "" && sendableEnvID(id) {
		b.WriteString(" ENVID=" + xtext.Encode(id))
	}
	return b.String()
}

// dsnRcptParams are the RCPT parameters of rcpt's DSN requests for the
// pipelined path, spelled as go-smtp's client spells them; utf8 tells that
// the receiver offers SMTPUTF8.
func dsnRcptParams(env Envelope, rcpt string, utf8 bool) string {
	if env.DSN == nil {
		return ""
	}
	r, ok := env.DSN.Recipients[rcpt]
	if !ok {
		return ""
	}
	var b strings.Builder
	if validNotify(r.Notify) {
		b.WriteString(" NOTIFY=")
		for i, n := range r.Notify {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(string(n))
		}
	}
	if t := orcptType(r); t != "" {
		if v := orcptValue(t, r.ORcpt, utf8); len(v) <= maxORcpt {
			b.WriteString(" ORCPT=" + v)
		}
	}
	return b.String()
}

// validReturn is r as RET takes it, FULL or HDRS; "" for anything else.
func validReturn(r DSNReturn) DSNReturn {
	switch r := DSNReturn(strings.ToUpper(string(r))); r {
	case ReturnFull, ReturnHeaders:
		return r
	}
	return ""
}

// RFC 3461 bounds the encoded values: ENVID to 100 characters (section
// 4.4), ORCPT to 500 (section 4.2). A longer one is left out.
const (
	maxEnvID = 100
	maxORcpt = 500
)

func sendableEnvID(id string) bool {
	return printableASCII(id) && len(xtext.Encode(id)) <= maxEnvID
}

// orcptValue is the ORCPT parameter's value, type and encoded address.
func orcptValue(typ, addr string, unitext bool) string {
	if typ == "RFC822" {
		return "RFC822;" + xtext.Encode(addr)
	}
	return "UTF-8;" + xtext.UTF8Addr(addr, unitext)
}

// validNotify reports whether n is a NOTIFY value RFC 3461 section 4.1
// allows: NEVER alone, or SUCCESS, FAILURE and DELAY each at most once.
func validNotify(n []DSNNotify) bool {
	if len(n) == 0 {
		return false
	}
	seen := map[DSNNotify]bool{}
	for _, v := range n {
		switch v {
		case NotifyNever, NotifySuccess, NotifyFailure, NotifyDelay:
		default:
			return false
		}
		if seen[v] {
			return false
		}
		seen[v] = true
	}
	return !seen[NotifyNever] || len(n) == 1
}

// orcptType is r's ORCPT address type in go-smtp's spelling, "" when r
// has no ORCPT this package can send: an rfc822 address must be
// printable ASCII.
func orcptType(r RecipientDSN) string {
	if r.ORcpt == "" || strings.ContainsAny(r.ORcpt, "\r\n") {
		return ""
	}
	switch strings.ToUpper(r.ORcptType) {
	case "RFC822":
		if printableASCII(r.ORcpt) {
			return "RFC822"
		}
	case "UTF-8":
		// go-smtp's client cannot send a backslash, nor either encoder
		// a control character: leave the ORCPT out rather than have the
		// recipient refused for it.
		if utf8.ValidString(r.ORcpt) && !strings.ContainsFunc(r.ORcpt, func(c rune) bool { return c < ' ' || c == 0x7f || c == '\\' }) {
			return "UTF-8"
		}
	}
	return ""
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
