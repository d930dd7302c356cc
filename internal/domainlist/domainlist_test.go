package domainlist

import (
	"strings"
	"testing"
)

func TestToASCII(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
		bad  bool
	}{
		{nil, "", false},
		{[]string{" example.org\t", "example.net"}, "example.org,example.net", false},
		// U-labels become A-labels.
		{[]string{"bücher.example"}, "xn--bcher-kva.example", false},
		// Not UTF-8: left for ParseATRN to refuse.
		{[]string{"b\xffcher.example"}, "b\xffcher.example", false},
		// UTF-8 that IDNA refuses.
		{[]string{"a\u200db.example"}, "", true},
	} {
		got, err := ToASCII(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ToASCII(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestSplit(t *testing.T) {
	got, err := Split("a.example, b.example")
	if err != nil || len(got) != 2 || got[1] != " b.example" {
		t.Errorf(`Split("a.example, b.example") = %q, %v; want the two entries as written`, got, err)
	}
	for in, want := range map[string]string{
		"a.example,,b.example": `empty domain 2 of 3 in "a.example,,b.example" (two commas in a row, or one at an end)`,
		"a.example, \t":        "empty domain 2 of 2",
		",":                    "empty domain 1 of 2",
		"":                     "empty domain 1 of 1",
	} {
		if _, err := Split(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Split(%q): %v, want %q", in, err, want)
		}
	}
}
