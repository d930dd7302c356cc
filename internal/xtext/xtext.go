// Package xtext encodes the values of DSN parameters and fields: xtext
// (RFC 3461 section 4) and the utf-8-addr forms of RFC 6533 section 3.
package xtext

import (
	"fmt"
	"strings"
)

// Encode encodes s as xtext: "+", "=" and every byte outside "!" to "~"
// as "+" and two upper-case hex digits.
func Encode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('+')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// UTF8Addr encodes a utf-8 address: as utf-8-addr-unitext when unitext is
// set, which keeps non-ASCII characters, else as utf-8-addr-xtext. "+",
// "=", "\", space and controls become \x{HEX}, with two hex digits at
// least.
func UTF8Addr(s string, unitext bool) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= '!' && r <= '~' && r != '+' && r != '=' && r != '\\':
			b.WriteRune(r)
		case r > 0x7f && unitext:
			b.WriteRune(r)
		default:
			fmt.Fprintf(&b, `\x{%02X}`, r)
		}
	}
	return b.String()
}
