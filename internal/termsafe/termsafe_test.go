package termsafe

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestText(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, ünïcödé": "plain text, ünïcödé",
		"a\x1b[31mb":          "a?[31mb",
		"tab\there":           "tab\there",
		"back\bspace\u0085":   "back?space?",
		"\u2066isolate\u2069": "?isolate?",
		"\u202eevil":          "?evil",
		"\xc3\x28":            "\ufffd(",
	} {
		assert.Equal(t, want, Text(in), "%q", in)
	}
	assert.Equal(t, "tab?here", Field("tab\there"))
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"250 OK":             "250 OK",
		"ünïcödé\tok":        "ünïcödé\tok",
		"451 \x1b[2J busy":   `451 \x1b[2J busy`,
		"\u202eevil\r":       `\u202eevil\x0d`,
		"bad \xff\xfe bytes": `bad \xff\xfe bytes`,
		"c1 \u0085":          `c1 \x85`,
	} {
		assert.Equal(t, want, Escape(in), "%q", in)
	}
}
