package odmr

import (
	"strings"

	"golang.org/x/net/idna"

	"github.com/go-odmr/odmr/internal/ascii"
)

// After the swap a recipient is the customer's only when the local server
// will read it as the customer's too. Two things in an address can make
// it read otherwise, and a hostile provider could use either to relay
// through the customer's mail server, which trusts the customer's
// connections:
//
//   - A domain that only maps to one of the customer's: fullwidth letters
//     (ｅｘａｍｐｌｅ.org) or an ideographic full stop (example。org) become
//     example.org under the lookup mapping of UTS #46, but a local server
//     may resolve them otherwise. The domain must be written as one of
//     the customer's: in ASCII, whatever the case, or in exactly the
//     U-labels of its A-labels.
//   - Sender-specified routing in the local part: x%evil.test@example.org,
//     evil.test!x@example.org and "x@evil.test"@example.org are sent on to
//     evil.test by Postfix (allow_percent_hack, swap_bangpath, and the
//     address after the local domain is stripped) and Sendmail from a
//     trusted client, which the customer is. Postfix refuses them from
//     untrusted clients (allow_untrusted_routing = no); the customer
//     refuses them from the provider unless Customer.AllowRoutedLocalParts.

// routedLocalPartsKey marks a fetch whose customer takes routed local parts.
type routedLocalPartsKey struct{}

// recipientRefusal says why addr is not a recipient of the domains accept
// (canonical), or "" when it is. routing lets local parts with '@', '%'
// or '!' through.
func recipientRefusal(addr string, accept []string, routing bool) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return "Relaying denied: not a domain this customer collects"
	}
	if !routing && strings.ContainsAny(addr[:i], "@%!") {
		return "Relaying denied: no sender-specified routing (%, ! or @ in the local part)"
	}
	d, ok := writtenDomain(addr[i+1:])
	if !ok {
		return "Relaying denied: not a domain this customer collects"
	}
	for _, a := range accept {
		if d == a {
			return ""
		}
	}
	return "Relaying denied: not a domain this customer collects"
}

// writtenDomain returns the canonical form of d when d is written in it,
// whatever the case of its ASCII letters and with a trailing dot or not,
// or in the exact U-labels of its A-labels; ok is false for a domain that
// reaches a canonical form only through a mapping.
func writtenDomain(d string) (string, bool) {
	d = strings.TrimSuffix(d, ".")
	if ascii.Is(d) {
		return strings.ToLower(d), true
	}
	lower := asciiLower(d)
	a, err := idna.Registration.ToASCII(lower)
	if err != nil {
		return "", false
	}
	if u, err := idna.Registration.ToUnicode(a); err != nil || u != lower {
		return "", false
	}
	return strings.ToLower(a), true
}

// asciiLower lowers the ASCII letters of s only: strings.ToLower would
// also fold the Kelvin sign into k.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
