package crlf

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// cases are the end-of-data variants of SMTP smuggling and the plain bare
// line endings, with what Normalizer makes of them.
var cases = []struct {
	name, in, norm string
	bare           bool
}{
	{"clean", "a\r\nb\r\n", "a\r\nb\r\n", false},
	{"CR dot CRLF", "a\r.\r\nb\r\n", "a\r\n.\r\nb\r\n", true},
	{"LF dot LF", "a\n.\nb\r\n", "a\r\n.\r\nb\r\n", true},
	{"CRLF dot LF", "a\r\n.\nb\r\n", "a\r\n.\r\nb\r\n", true},
	{"LF dot CRLF", "a\n.\r\nb\r\n", "a\r\n.\r\nb\r\n", true},
	{"CR dot LF", "a\r.\nb\r\n", "a\r\n.\r\nb\r\n", true},
	{"bare CR in body", "a\rb\r\n", "a\r\nb\r\n", true},
	{"bare LF in body", "a\nb\r\n", "a\r\nb\r\n", true},
	{"CR CR LF", "a\r\r\nb\r\n", "a\r\n\r\nb\r\n", true},
	{"CR at the end", "a\r", "a\r\n", true},
	{"empty", "", "", false},
}

func TestChecker(t *testing.T) {
	for _, tc := range cases {
		for _, one := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.in)
			if one {
				r = iotest.OneByteReader(r) // a CR and its LF in different reads
			}
			c := &Checker{R: r}
			got, err := io.ReadAll(c)
			if tc.bare {
				if err != ErrBare || c.Err() != ErrBare {
					t.Errorf("%s (one byte %v): err %v, want ErrBare", tc.name, one, err)
				}
				continue
			}
			if err != nil || string(got) != tc.in || c.Err() != nil {
				t.Errorf("%s (one byte %v): %q, %v", tc.name, one, got, err)
			}
		}
	}
}

func TestNormalizer(t *testing.T) {
	for _, tc := range cases {
		for _, one := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.in)
			if one {
				r = iotest.OneByteReader(r)
			}
			got, err := io.ReadAll(&Normalizer{R: r})
			if err != nil || string(got) != tc.norm {
				t.Errorf("%s (one byte %v): %q, %v; want %q", tc.name, one, got, err, tc.norm)
			}
			if _, err := io.ReadAll(&Checker{R: strings.NewReader(string(got))}); err != nil {
				t.Errorf("%s: the normalized text fails the checker: %v", tc.name, err)
			}
		}
	}
}

func TestNormalizerPassesReadErrors(t *testing.T) {
	_, err := io.ReadAll(&Normalizer{R: iotest.TimeoutReader(strings.NewReader("a\rb"))})
	if err != iotest.ErrTimeout {
		t.Fatalf("err %v, want the reader's", err)
	}
}

func FuzzNormalizer(f *testing.F) {
	for _, tc := range cases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := io.ReadAll(&Normalizer{R: iotest.HalfReader(strings.NewReader(in))})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(&Checker{R: strings.NewReader(string(got))}); err != nil {
			t.Fatalf("Normalizer(%q) = %q, which has a bare CR or LF", in, got)
		}
		// Read in pieces, as in one piece: the same bytes.
		if want := (&Normalizer{}).normalize(nil, []byte(in)); string(got) != string(want) {
			t.Fatalf("Normalizer(%q) = %q in pieces, %q at once", in, got, want)
		}
		_, err = io.ReadAll(&Checker{R: iotest.HalfReader(strings.NewReader(in))})
		if clean := err == nil; clean != (string(got) == in) {
			t.Fatalf("%q: the checker says clean=%v, the normalizer changed it=%v", in, clean, string(got) != in)
		}
	})
}
