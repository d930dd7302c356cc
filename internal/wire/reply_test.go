package wire

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var testLimits = ReplyLimits{Line: 1000, Lines: 20}

func TestReadReply(t *testing.T) {
	cases := []struct {
		name, in string
		want     Reply
		err      error
	}{
		{"single line", "250 2.1.0 OK\r\n", Reply{250, "2.1.0 OK"}, nil},
		{"multi-line joined with LF, as textproto does", "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n", Reply{250, "mx.test\nPIPELINING\nSIZE 100"}, nil},
		{"code alone is valid RFC 5321", "354\r\n", Reply{354, ""}, nil},
		{"bare LF line ending tolerated", "221 bye\n", Reply{221, "bye"}, nil},
		{"8-bit text kept", "550 caf\xc3\xa9\r\n", Reply{550, "caf\xc3\xa9"}, nil},
		{"no code", "hello\r\n", Reply{}, ErrProtocol},
		{"bad separator", "250_x\r\n", Reply{}, ErrProtocol},
		{"code out of range", "199 x\r\n", Reply{}, ErrProtocol},
		{"lines disagree on the code", "250-a\r\n251 b\r\n", Reply{}, ErrProtocol},
		{"cut inside a multi-line reply", "250-a\r\n", Reply{}, io.ErrUnexpectedEOF},
		{"cut inside a line is no reply", "250 a", Reply{}, io.EOF},
		{"nothing", "", Reply{}, io.EOF},
		{"line over the limit", "250 " + strings.Repeat("x", testLimits.Line) + "\r\n", Reply{}, ErrProtocol},
		{"too many lines", strings.Repeat("250-x\r\n", testLimits.Lines) + "250 x\r\n", Reply{}, ErrProtocol},
		{"bare CR", "250 a\rb\r\n", Reply{}, ErrProtocol},
		{"NUL", "250 a\x00b\r\n", Reply{}, ErrProtocol},
		{"endless line", "250 " + strings.Repeat("x", 2*MaxDiscard) + "\r\n", Reply{}, ErrProtocol},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ReadReply(bufio.NewReaderSize(strings.NewReader(c.in), 512), testLimits, nil)
			if c.err != nil {
				assert.True(t, errors.Is(err, c.err), "err %v, want %v", err, c.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
		})
	}
}

func TestReplyErr(t *testing.T) {
	cases := []struct {
		name  string
		r     Reply
		want  *Error
		check int
	}{
		{"enhanced code split off", Reply{550, "5.1.1 no such user"}, &Error{Code: 550, EnhancedCode: [3]int{5, 1, 1}, Message: "no such user"}, 25},
		{"no enhanced code", Reply{450, "busy"}, &Error{Code: 450, Message: "busy"}, 25},
		{"repeated enhanced code removed from later lines", Reply{554, "5.7.1 one\n5.7.1 two"}, &Error{Code: 554, EnhancedCode: [3]int{5, 7, 1}, Message: "one\ntwo"}, 250},
		{"not a code", Reply{451, "4.x.0 odd"}, &Error{Code: 451, Message: "4.x.0 odd"}, 354},
		{"code of another class kept in the text", Reply{451, "5.1.1 odd"}, &Error{Code: 451, Message: "5.1.1 odd"}, 354},
		{"251 is not the 250 MAIL wants", Reply{251, "ok"}, &Error{Code: 251, Message: "ok"}, 250},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.r.Check(c.check)
			var se *Error
			require.ErrorAs(t, err, &se)
			assert.Equal(t, c.want, se)
		})
	}
	assert.NoError(t, Reply{251, "forwarded"}.Check(25))
	assert.NoError(t, Reply{354, "go"}.Check(354))
	assert.NoError(t, Reply{221, "bye"}.Check(2))
}

func TestParseEnhancedCode(t *testing.T) {
	for s, want := range map[string]bool{
		"2.0.0": true, "5.7.1": true, "4.123.999": true,
		"3.0.0": false, "5.1": false, "5.1.1.1": false, "5..1": false, "5.1.1000": false,
		"5.+1.1": false, "5.-1.1": false, "x.1.1": false, "": false,
	} {
		_, ok := ParseEnhancedCode(s)
		assert.Equal(t, want, ok, "%q", s)
	}
	ec, _ := ParseEnhancedCode("5.7.11")
	assert.Equal(t, [3]int{5, 7, 11}, ec)
	assert.Equal(t, "5.7.11", FormatEnhancedCode(ec))
	assert.Empty(t, FormatEnhancedCode([3]int{}))
}

func TestReadReplyTracesEveryLine(t *testing.T) {
	var seen []string
	_, err := ReadReply(bufio.NewReader(strings.NewReader("250-a\r\nbad\r\n")), testLimits, func(l []byte) { seen = append(seen, string(l)) })
	assert.ErrorIs(t, err, ErrProtocol)
	assert.Equal(t, []string{"250-a", "bad"}, seen, "a malformed line is traced too")
}

func TestReplyExtensions(t *testing.T) {
	r := Reply{Code: 250, Text: "mx.example Hello\nsize 1000\nPIPELINING\nAUTH CRAM-MD5 PLAIN"}
	got := r.Extensions()
	want := map[string]string{"SIZE": "1000", "PIPELINING": "", "AUTH": "CRAM-MD5 PLAIN"}
	if len(got) != len(want) {
		t.Fatalf("Extensions() = %v, want %v", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("Extensions()[%q] = %q, %v; want %q", k, g, ok, v)
		}
	}
	if got := (Reply{Code: 250, Text: "mx.example"}).Extensions(); len(got) != 0 {
		t.Errorf("one-line reply: %v, want none", got)
	}
}
