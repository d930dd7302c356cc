package pipeline

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLineConnHandsOffWithoutLosingBytes(t *testing.T) {
	// The server sends its EHLO reply and, in the same write, bytes that
	// belong to whatever reads next. go-smtp's Client reads the reply
	// through its own bufio.Reader; through a LineConn that reader holds
	// nothing past the reply, and the rest is read after the handoff.
	c, s := net.Pipe()
	defer c.Close()
	go func() {
		defer s.Close()
		br := bufio.NewReader(s)
		io.WriteString(s, "220 server.test\r\n")
		br.ReadString('\n')
		io.WriteString(s, "250-server.test\r\n250-PIPELINING\r\n250 SIZE 10\r\nearly bytes\r\n250 2.1.0 OK\r\n")
		io.Copy(io.Discard, br)
	}()
	lc := NewLineConn(c)
	client := smtp.NewClient(lc)
	require.NoError(t, client.Hello("client.test"))
	ok, _ := client.Extension("PIPELINING")
	require.True(t, ok)
	assert.Equal(t, len("early bytes\r\n250 2.1.0 OK\r\n"), lc.Buffered())
	conn, clean := lc.Handoff()
	require.True(t, clean)
	buf := make([]byte, 100)
	n, err := conn.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "early bytes\r\n250 2.1.0 OK\r\n", string(buf[:n]))
}

func TestLineConnOneLinePerRead(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	go func() {
		io.WriteString(s, "a\r\nbb\r\nccc")
		s.Close()
	}()
	lc := NewLineConn(c)
	n, err := lc.Read(nil)
	assert.Zero(t, n)
	assert.NoError(t, err)
	buf := make([]byte, 100)
	var got []string
	for {
		n, err := lc.Read(buf)
		if n > 0 {
			got = append(got, string(buf[:n]))
		}
		if err != nil {
			assert.ErrorIs(t, err, io.EOF)
			break
		}
	}
	assert.Equal(t, []string{"a\r\n", "bb\r\n", "ccc"}, got)
	_, clean := lc.Handoff()
	assert.False(t, clean, "the last read ended inside a line")
}

func TestSenderAfterGoSMTPHello(t *testing.T) {
	// The handoff as the provider does it: go-smtp reads the greeting and
	// EHLO, a Sender sends the mail.
	b := &sink{}
	c := dialGoSMTP(t, b, false)
	lc := NewLineConn(c)
	client := smtp.NewClient(lc)
	require.NoError(t, client.Hello("client.test"))
	conn, clean := lc.Handoff()
	require.True(t, clean)
	snd := NewSender(context.Background(), conn, Config{})
	defer snd.Close()
	m, o := msg("s@x.test", "hello\r\n", "a@y.test")
	require.NoError(t, snd.Send(m))
	require.NoError(t, snd.Quit())
	assert.Equal(t, []int{0}, o.codes())
	require.Len(t, b.got, 1)
	assert.True(t, strings.HasPrefix(b.got[0].Body, "hello"))
}
