package main

import (
	"net"
	"net/textproto"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/smtptest"
)

// TestIntakeRefusesAddressesThatAreNotUTF8: the intake took MAIL FROM and
// RCPT TO with stray 8-bit bytes, and the spool stored them with U+FFFD
// in their place, so that the message went to an address nobody gave.
// They are refused with 553 now; UTF-8 addresses are still taken.
func TestIntakeRefusesAddressesThatAreNotUTF8(t *testing.T) {
	got := make(chan odmr.Envelope, 1)
	srv := envelopeIntake(got)
	srv.EnableSMTPUTF8 = true
	addr := smtptest.Serve(t, srv)

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	c := textproto.NewConn(conn)
	cmd := func(line string, want int) string {
		t.Helper()
		require.NoError(t, c.PrintfLine("%s", line))
		code, msg, err := c.ReadResponse(0)
		assert.Equal(t, want, code, "%q: %v %s", line, err, msg)
		return msg
	}
	_, _, err = c.ReadResponse(220)
	require.NoError(t, err)
	cmd("EHLO client.test", 250)
	cmd("MAIL FROM:<\"\xff\xfe\"@x.test>", 553)
	cmd("MAIL FROM:<s\xe9@x.test>", 553)
	cmd("MAIL FROM:<sé@x.test> SMTPUTF8", 250)
	cmd("RCPT TO:<\"\xc3(\"@example.org>", 553)
	cmd("RCPT TO:<u\x80@example.org>", 553)
	cmd("RCPT TO:<ü@example.org>", 250)
	cmd("DATA", 354)
	require.NoError(t, c.PrintfLine("Subject: x\r\n\r\nx\r\n."))
	_, _, err = c.ReadResponse(250)
	require.NoError(t, err)
	env := <-got
	assert.Equal(t, "sé@x.test", env.From)
	assert.Equal(t, []string{"ü@example.org"}, env.To)
}
