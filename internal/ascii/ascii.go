// Package ascii tells ASCII text from the rest: what decides whether an
// address or a domain needs SMTPUTF8, IDNA or an RFC 6533 report.
package ascii

import "unicode/utf8"

// Is reports whether s holds only ASCII bytes (below 0x80).
func Is(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
