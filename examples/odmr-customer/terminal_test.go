package main

import (
	"encoding/json"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/internal/termsafe"
)

// startEscapingProvider plays a provider that takes any login and then
// refuses ATRN with a reply whose text holds terminal control sequences,
// a C1 control, a bidi override, backspaces and bytes that are not UTF-8.
func startEscapingProvider(t *testing.T, reply string) string {
	t.Helper()
	addr, _ := smtptest.Script(t, func(c *textproto.Conn, conn net.Conn) {
		evilLogin(c, conn)
		c.ReadLine() // ATRN
		io.WriteString(conn, reply+"\r\n")
		c.ReadLine() // QUIT
		c.PrintfLine("221 bye")
	})
	return addr
}

// TestProgramKeepsProviderTextOffTheTerminal checks that the summary
// line, which quotes the provider's reply, does not pass its control
// sequences to the operator's terminal: a hostile provider could clear
// the screen, retitle the window or forge lines of output.
func TestProgramKeepsProviderTextOffTheTerminal(t *testing.T) {
	addr := startEscapingProvider(t, "451 4.3.0 \x1b]0;owned\x07\x1b[2Jcleared\u009b31m \u202eelif\xff\b\b\bodmr-customer: received 9 message(s)")
	code, stderr := runCustomer(t, "-provider", addr, "-user", "alice", "-domains", "example.org",
		"-maildir", t.TempDir(), "-no-tls", "-allow-insecure-auth")
	assert.Equal(t, exitTemporary, code, stderr)
	assert.Contains(t, stderr, "odmr-customer: ATRN example.org refused: 451 4.3.0 ?]0;owned??[2Jcleared?31m ?elif\ufffd???odmr-customer: received 9", stderr)
	for _, bad := range []string{"\x1b", "\x07", "\u009b", "\u202e", "\b", "\xff"} {
		assert.NotContains(t, stderr, bad)
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, ünïcödé": "plain text, ünïcödé",
		"a\x1b[31mb":          "a?[31mb",
		"tab\there":           "tab?here",
		"\u2066isolate\u2069": "?isolate?",
		"\xc3\x28":            "\ufffd(",
	} {
		assert.Equal(t, want, termsafe.Field(in), "%q", in)
	}
}

// TestProgramJSONLogsAreAllJSON: with -log-format json, the program's own
// lines (the outcome of the fetch) are JSON records too, a failure at
// ERROR, so that a log shipper can parse every line of standard error.
func TestProgramJSONLogsAreAllJSON(t *testing.T) {
	addr := startEscapingProvider(t, "451 4.3.0 busy \x1b[2J")
	code, stderr := runCustomer(t, "-provider", addr, "-user", "alice", "-domains", "example.org",
		"-maildir", t.TempDir(), "-no-tls", "-allow-insecure-auth", "-log-format", "json")
	assert.Equal(t, exitTemporary, code, stderr)
	var levels = map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSuffix(stderr, "\n"), "\n") {
		var rec struct{ Level, Msg string }
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "not JSON: %q", line)
		levels[rec.Msg] = rec.Level
	}
	assert.Equal(t, "ERROR", levels["odmr-customer: ATRN example.org refused: 451 4.3.0 busy ?[2J"], stderr)
	assert.NotContains(t, stderr, "\x1b")
}
