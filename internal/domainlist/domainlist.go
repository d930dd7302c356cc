// Package domainlist reads the lists of domains that a configuration
// gives (Customer.Domains and AcceptDomains, an accounts file), where an
// internationalized domain may be written in U-labels.
package domainlist

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"github.com/go-odmr/odmr/internal/ascii"
)

// Split splits a comma-separated list of domains from a configuration
// (a flag, a field of an accounts file), refusing an empty entry with an
// error that says where it is: "a,,b" is a typing mistake, not two
// domains.
func Split(field string) ([]string, error) {
	list := strings.Split(field, ",")
	for i, d := range list {
		if strings.Trim(d, " \t") == "" {
			return nil, fmt.Errorf("empty domain %d of %d in %q (two commas in a row, or one at an end)", i+1, len(list), field)
		}
	}
	return list, nil
}

// ToASCII returns the entries of list trimmed of spaces and tabs, each
// internationalized domain in U-labels (bücher.example) turned into
// A-labels (xn--bcher-kva.example), joined with commas: the argument of
// an ATRN, for odmr.ParseATRN to check. The other entries are left as
// they are, for ParseATRN to judge.
func ToASCII(list []string) (string, error) {
	out := make([]string, len(list))
	for i, d := range list {
		d = strings.Trim(d, " \t")
		if !ascii.Is(d) && utf8.ValidString(d) {
			a, err := idna.Lookup.ToASCII(d)
			if err != nil {
				return "", fmt.Errorf("odmr: invalid internationalized domain %q: %v", d, err)
			}
			d = a
		}
		out[i] = d
	}
	return strings.Join(out, ","), nil
}
