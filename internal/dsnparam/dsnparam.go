// Package dsnparam checks the values of RFC 3461 delivery status
// notification parameters before they are sent, for both of the
// provider's encoders and for package smtpsink: a value a receiver would
// refuse is left out rather than have the message or recipient refused.
package dsnparam

import (
	"strings"
	"unicode/utf8"

	"github.com/go-odmr/odmr/internal/xtext"
)

// RFC 3461 bounds the encoded values: ENVID to 100 characters (section
// 4.4), ORCPT to 500 (section 4.2). A longer one is left out.
const (
	MaxEnvID = 100
	MaxORcpt = 500
)

// Return is r as RET takes it, FULL or HDRS; "" for anything else.
func Return[S ~string](r S) S {
	switch u := strings.ToUpper(string(r)); u {
	case "FULL", "HDRS":
		return S(u)
	}
	return ""
}

// SendableEnvID reports whether id can go out as ENVID.
func SendableEnvID(id string) bool {
	return printableASCII(id) && len(xtext.Encode(id)) <= MaxEnvID
}

// ORcptValue is the ORCPT parameter's value, type and encoded address.
func ORcptValue(typ, addr string, unitext bool) string {
	if typ == "RFC822" {
		return "RFC822;" + xtext.Encode(addr)
	}
	return "UTF-8;" + xtext.UTF8Addr(addr, unitext)
}

// ValidNotify reports whether n is a NOTIFY value RFC 3461 section 4.1
// allows: NEVER alone, or SUCCESS, FAILURE and DELAY each at most once.
func ValidNotify[S ~string](n []S) bool {
	if len(n) == 0 {
		return false
	}
	seen := map[S]bool{}
	for _, v := range n {
		switch v {
		case "NEVER", "SUCCESS", "FAILURE", "DELAY":
		default:
			return false
		}
		if seen[v] {
			return false
		}
		seen[v] = true
	}
	return !seen["NEVER"] || len(n) == 1
}

// ORcptType is the ORCPT address type of addr, declared as typ, in upper
// case ("RFC822", "UTF-8"); "" when there is no ORCPT that can be sent: an
// rfc822 address must be printable ASCII.
func ORcptType(typ, addr string) string {
	if addr == "" || strings.ContainsAny(addr, "\r\n") {
		return ""
	}
	switch strings.ToUpper(typ) {
	case "RFC822":
		if printableASCII(addr) {
			return "RFC822"
		}
	case "UTF-8":
		// One of the clients cannot encode a backslash (see
		// internal/smtpserver/UPSTREAM.md), nor either encoder a control
		// character: leave the ORCPT out rather than have the recipient
		// refused for it.
		if utf8.ValidString(addr) && !strings.ContainsFunc(addr, func(c rune) bool { return c < ' ' || c == 0x7f || c == '\\' }) {
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

// MailParams are MAIL's RET and ENVID parameters for ret and envID, each
// with a leading space; a value that cannot be sent is left out.
func MailParams[S ~string](ret S, envID string) string {
	var b strings.Builder
	if r := Return(ret); r != "" {
		b.WriteString(" RET=" + string(r))
	}
	if envID != "" && SendableEnvID(envID) {
		b.WriteString(" ENVID=" + xtext.Encode(envID))
	}
	return b.String()
}

// RcptParams are RCPT's NOTIFY and ORCPT parameters, each with a leading
// space; a value that cannot be sent is left out. unitext tells that the
// receiver offers SMTPUTF8, so that ORCPT may be sent as utf-8.
func RcptParams[S ~string](notify []S, orcptType, orcpt string, unitext bool) string {
	var b strings.Builder
	if ValidNotify(notify) {
		b.WriteString(" NOTIFY=")
		for i, n := range notify {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(string(n))
		}
	}
	if t := ORcptType(orcptType, orcpt); t != "" {
		if v := ORcptValue(t, orcpt, unitext); len(v) <= MaxORcpt {
			b.WriteString(" ORCPT=" + v)
		}
	}
	return b.String()
}
