package dsnparam

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestReturn(t *testing.T) {
	for in, want := range map[string]string{"FULL": "FULL", "hdrs": "HDRS", "": "", "ALL": ""} {
		assert.Equal(t, want, Return(in), in)
	}
}

func TestValidNotify(t *testing.T) {
	for _, tt := range []struct {
		n    []string
		want bool
	}{
		{nil, false},
		{[]string{"NEVER"}, true},
		{[]string{"SUCCESS", "FAILURE", "DELAY"}, true},
		{[]string{"NEVER", "FAILURE"}, false}, // NEVER must stand alone
		{[]string{"FAILURE", "FAILURE"}, false},
		{[]string{"failure"}, false}, // the decoder upper-cases; anything else is not sent
	} {
		assert.Equal(t, tt.want, ValidNotify(tt.n), "%q", tt.n)
	}
}

func TestORcpt(t *testing.T) {
	for _, tt := range []struct{ typ, addr, want string }{
		{"rfc822", "a@example.org", "RFC822"},
		{"RFC822", "jos\u00e9@example.org", ""}, // rfc822 is ASCII only
		{"utf-8", "jos\u00e9@example.org", "UTF-8"},
		{"UTF-8", `a\b@example.org`, ""}, // go-smtp's client cannot send a backslash
		{"RFC822", "a@example.org\r\nRCPT TO:<x>", ""},
		{"x400", "a@example.org", ""},
		{"RFC822", "", ""},
	} {
		assert.Equal(t, tt.want, ORcptType(tt.typ, tt.addr), "%s;%s", tt.typ, tt.addr)
	}
	assert.Equal(t, "RFC822;a+2Bb@example.org", ORcptValue("RFC822", "a+b@example.org", false))
}

func TestSendableEnvID(t *testing.T) {
	assert.True(t, SendableEnvID("QQ314159"))
	assert.False(t, SendableEnvID("a\x01b"))
	assert.True(t, SendableEnvID(strings.Repeat("x", MaxEnvID)))
	assert.False(t, SendableEnvID(strings.Repeat("+", MaxEnvID/3+1)), "too long once encoded")
}
