package pipeline

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
		{"cut inside a line", "250 a", Reply{}, io.ErrUnexpectedEOF},
		{"nothing", "", Reply{}, io.EOF},
		{"line over the limit", "250 " + strings.Repeat("x", maxReplyLine) + "\r\n", Reply{}, ErrProtocol},
		{"too many lines", strings.Repeat("250-x\r\n", maxReplyLines+1) + "250 x\r\n", Reply{}, ErrProtocol},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := readReply(bufio.NewReaderSize(strings.NewReader(c.in), maxReplyLine))
			if c.err != nil {
				assert.True(t, errors.Is(err, c.err), "err %v, want %v", err, c.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
		})
	}
}

func TestReplyErrLikeGoSMTP(t *testing.T) {
	cases := []struct {
		name  string
		r     Reply
		want  *smtp.SMTPError
		check int
	}{
		{"enhanced code split off", Reply{550, "5.1.1 no such user"}, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}, 25},
		{"no enhanced code", Reply{450, "busy"}, &smtp.SMTPError{Code: 450, Message: "busy"}, 25},
		{"repeated enhanced code removed from later lines", Reply{554, "5.7.1 one\n5.7.1 two"}, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "one\ntwo"}, 250},
		{"not a code", Reply{451, "4.x.0 odd"}, &smtp.SMTPError{Code: 451, Message: "4.x.0 odd"}, 354},
		{"251 is not the 250 MAIL wants", Reply{251, "ok"}, &smtp.SMTPError{Code: 251, Message: "ok"}, 250},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.r.Check(c.check)
			var se *smtp.SMTPError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, c.want, se)
		})
	}
	assert.NoError(t, Reply{251, "forwarded"}.Check(25))
	assert.NoError(t, Reply{354, "go"}.Check(354))
	assert.NoError(t, Reply{221, "bye"}.Check(2))
}
