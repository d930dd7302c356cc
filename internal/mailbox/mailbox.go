// Package mailbox puts back the quoting of an address's local part.
//
// The SMTP server that the customer and the intake run hands a session
// the addresses of MAIL and RCPT with a quoted local part unquoted
// (internal/smtpserver/UPSTREAM.md): <"a b"@example.org> arrives as
// "a b@example.org" and <"q@example.net"@example.org> as
// "q@example.net@example.org". Written back on the wire as they are, the
// first is a syntax error and the second names another mailbox. Quote
// restores the form RFC 5321 section 4.1.2 requires, which means the same
// mailbox (a quoted local part and its unquoted form are equivalent).
package mailbox

import "strings"

// Quote returns addr with its local part, everything before the last '@',
// quoted when it is not a dot-string, and whether the address can be
// written in an SMTP command at all: a local part with a control character
// cannot. An address without '@' (postmaster) is all local part; the empty
// address (the null reverse-path) stays empty.
func Quote(addr string) (string, bool) {
	if addr == "" {
		return "", true
	}
	local, domain, hasAt := addr, "", false
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		local, domain, hasAt = addr[:i], addr[i:], true
	}
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c < ' ' || c == 0x7f {
			return "", false
		}
	}
	if hasAt && strings.ContainsAny(domain, " \"\\<>") {
		return "", false
	}
	if isDotString(local) {
		return addr, true
	}
	var b strings.Builder
	b.Grow(len(addr) + 4)
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if c := local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(local[i])
	}
	b.WriteByte('"')
	b.WriteString(domain)
	return b.String(), true
}

// isDotString reports whether s is a Dot-string of RFC 5321 (atoms of
// atext joined by single dots), UTF-8 allowed as RFC 6531 does.
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c >= 0x80, c == '.':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
