// Package termsafe keeps text that came from a peer (reply texts, queued
// addresses and headers, a session's transcript) from steering the
// terminal or the log viewer that shows it: escape sequences, backspaces,
// C1 controls and bidirectional overrides are replaced or escaped.
package termsafe

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// unsafe reports whether r could change how a terminal shows what
// follows it.
func unsafe(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)
}

// Text returns s with each unsafe character but the tab replaced by '?'
// (invalid UTF-8 becomes U+FFFD), for a line a person reads.
func Text(s string) string {
	return strings.Map(func(r rune) rune {
		if r != '\t' && unsafe(r) {
			return '?'
		}
		return r
	}, s)
}

// Field is Text with the tab replaced too, for one field of a listing.
func Field(s string) string { return strings.ReplaceAll(Text(s), "\t", "?") }

// Escape returns s with each unsafe character but the tab written as a
// Go escape (\x1b, \u202e), and each byte that is not UTF-8 as \xNN, so
// that a transcript shows what was on the wire without acting on it.
func Escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r != '\t' && unsafe(r) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r != '\t' && unsafe(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}
