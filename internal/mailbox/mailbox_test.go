package mailbox

import "testing"

func TestQuote(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"a@example.org", "a@example.org", true},
		{"", "", true},                     // null reverse-path
		{"postmaster", "postmaster", true}, // no domain
		{"first.last+tag@example.org", "first.last+tag@example.org", true},
		{"a b@example.org", `"a b"@example.org`, true},                     // space needs quotes
		{"q@example.net@example.org", `"q@example.net"@example.org`, true}, // the last '@' is the domain's
		{`a"b\c@example.org`, `"a\"b\\c"@example.org`, true},               // quoted-pairs
		{".a@example.org", `".a"@example.org`, true},                       // not a dot-string
		{"a..b@example.org", `"a..b"@example.org`, true},
		{"jörg@example.org", "jörg@example.org", true}, // RFC 6531 atext
		{"a\rb@example.org", "", false},                // no control characters
		{"a@exa mple.org", "", false},                  // nor a space in the domain
	} {
		got, ok := Quote(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Quote(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
