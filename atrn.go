package odmr

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/go-odmr/odmr/internal/ascii"
	"github.com/go-odmr/odmr/internal/domainlist"
	"golang.org/x/net/idna"
)

// maxDomains bounds the number of domains one ATRN may name.
const maxDomains = 256

// ParseATRN parses the argument of an ATRN command (RFC 2645 section
// 5.2.1), the text after "ATRN ". An empty argument, a bare ATRN, yields no
// domains: it asks for every domain the identity may pull.
//
// The parser is liberal where real peers need it: single-label names (as
// fetchmail sends its host name), spaces after commas, any letter case and
// a trailing dot are accepted. It is strict about everything else: CR, LF,
// NUL, characters outside letters, digits, hyphen and dot, empty labels and
// labels that start or end with a hyphen are rejected; an internationalized
// domain goes on the wire in A-labels (xn--bcher-kva.example), never as
// UTF-8. The domains come back lower-cased, without the trailing dot and
// without duplicates, in the order given.
func ParseATRN(arg string) ([]string, error) {
	arg = strings.Trim(arg, " \t")
	if arg == "" {
		return nil, nil
	}
	parts := strings.Split(arg, ",")
	if len(parts) > maxDomains {
		return nil, fmt.Errorf("odmr: ATRN names %d domains, at most %d are allowed", len(parts), maxDomains)
	}
	out := make([]string, 0, len(parts))
	seen := make(map[string]bool, len(parts))
	for _, p := range parts {
		d, err := normalizeDomain(strings.Trim(p, " \t"))
		if err != nil {
			return nil, err
		}
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out, nil
}

// parseDomainList parses a list of domains from configuration, the way
// ParseATRN parses the wire's, except that an internationalized domain may
// be given in U-labels (bücher.example): it comes back in A-labels.
func parseDomainList(list []string) ([]string, error) {
	arg, err := domainlist.ToASCII(list)
	if err != nil {
		return nil, err
	}
	return ParseATRN(arg)
}

// FormatATRN formats the ATRN command for domains: "ATRN" alone for none,
// otherwise "ATRN d1,d2" with no spaces, the form every provider accepts.
func FormatATRN(domains []string) string {
	if len(domains) == 0 {
		return "ATRN"
	}
	return "ATRN " + strings.Join(domains, ",")
}

// normalizeDomain checks one domain of an ATRN argument and returns it in
// canonical form.
func normalizeDomain(d string) (string, error) {
	if d == "" {
		return "", fmt.Errorf("odmr: empty domain in ATRN argument")
	}
	d = strings.TrimSuffix(d, ".")
	if len(d) == 0 || len(d) > 253 {
		return "", fmt.Errorf("odmr: domain %q has an invalid length", d)
	}
	for _, label := range strings.Split(d, ".") {
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("odmr: invalid domain %q: %v", d, err)
		}
	}
	return strings.ToLower(d), nil
}

func checkLabel(l string) error {
	if l == "" {
		return fmt.Errorf("empty label")
	}
	if len(l) > 63 {
		return fmt.Errorf("label longer than 63 characters")
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("label starts or ends with a hyphen")
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("character %q not allowed", c)
		}
	}
	return nil
}

// domainOf returns the domain part of a mailbox address in canonical form,
// or "" when there is none: lower-cased, without a trailing dot, and an
// internationalized name in A-labels, so that x@bücher.example and
// x@xn--bcher-kva.example have the same domain. A name that is not valid
// IDNA is only lower-cased.
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	d := strings.TrimSuffix(addr[i+1:], ".")
	if !ascii.Is(d) && utf8.ValidString(d) {
		if a, err := idna.Lookup.ToASCII(d); err == nil {
			d = a
		}
	}
	return strings.ToLower(d)
}

// inDomains reports whether addr's domain is one of domains, which must be
// in canonical form.
func inDomains(addr string, domains []string) bool {
	d := domainOf(addr)
	for _, x := range domains {
		if d == x {
			return true
		}
	}
	return false
}

// RecipientDomain returns the canonical domain of a recipient address: the
// part after the last '@', lower-cased, without a trailing dot, and in
// A-labels when it is an internationalized name (RFC 5890), so that both
// forms of a domain are one. Queues use
// it to index recipients the way the provider matches them against ATRN.
func RecipientDomain(addr string) string { return domainOf(addr) }
