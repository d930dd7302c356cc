package ascii

import "testing"

func TestIs(t *testing.T) {
	for s, want := range map[string]bool{
		"": true, "user@example.org": true, "\x00\x7f": true,
		"\x80": false, "jörg@example.org": false, "user@例え.jp": false, "a\xffb": false,
	} {
		if got := Is(s); got != want {
			t.Errorf("Is(%q) = %v, want %v", s, got, want)
		}
	}
}
