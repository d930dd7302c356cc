package pipeline

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/pipeline/pipetest"
)

// readers runs f twice: as "reader goroutine", on whatever connection it
// makes, and as "inline", with a Sender that takes every connection, a
// net.Pipe included, for a socket, and so reads its replies itself. f's
// servers must then read each write of the Sender whole before they
// answer, as a socket's buffers would.
func readers(t *testing.T, f func(t *testing.T)) {
	t.Run("reader goroutine", f)
	t.Run("inline", func(t *testing.T) {
		isSocket = func(net.Conn) bool { return true }
		t.Cleanup(func() { isSocket = socket })
		f(t)
	})
}

func TestSocketUnderWrappers(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	assert.False(t, socket(c), "net.Pipe")
	assert.False(t, socket(tls.Client(c, &tls.Config{})), "TLS over net.Pipe")

	tc, _ := tcpPair(t)
	defer tc.Close()
	assert.True(t, socket(tc), "TCP")
	assert.True(t, socket(tls.Client(tc, &tls.Config{})), "TLS over TCP")
	assert.False(t, socket(struct{ net.Conn }{tc}), "a wrapper that does not show what it wraps")

	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	require.NoError(t, err)
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	uc, err := net.Dial("unix", l.Addr().String())
	require.NoError(t, err)
	defer uc.Close()
	assert.True(t, socket(uc), "Unix socket")
}

// TestWhoReadsTheReplies: on a socket the Sender reads its replies itself
// with DATA; the reader goroutine takes over with the first BDAT chunk,
// and reads them from the start above DefaultMaxPending or on net.Pipe.
func TestWhoReadsTheReplies(t *testing.T) {
	send := func(t *testing.T, snd *Sender) {
		t.Helper()
		m, o := msg("s@x.test", "hi\r\n", "a@y.test")
		require.NoError(t, snd.Send(m))
		require.NoError(t, snd.Quit())
		assert.Equal(t, []int{0}, o.codes())
	}
	transports(t, "DATA", func(t *testing.T) {
		_, tcp := tcpTests.Load(t)
		snd := start(t, &pipetest.Server{}, Config{})
		assert.Equal(t, tcp, snd.inline)
		send(t, snd)
		assert.Equal(t, tcp, snd.inline)
		assert.Equal(t, !tcp, snd.reading)
	})
	transports(t, "BDAT", func(t *testing.T) {
		_, tcp := tcpTests.Load(t)
		snd := start(t, &pipetest.Server{Ext: extFor(true)}, Config{Chunking: true})
		assert.Equal(t, tcp, snd.inline, "Hello")
		send(t, snd)
		assert.False(t, snd.inline)
		assert.True(t, snd.reading)
	})
	transports(t, "CHUNKING not offered", func(t *testing.T) {
		_, tcp := tcpTests.Load(t)
		snd := start(t, &pipetest.Server{}, Config{Chunking: true})
		send(t, snd)
		assert.Equal(t, tcp, snd.inline, "DATA, the server offering no CHUNKING")
	})
	transports(t, "MaxPending above the default", func(t *testing.T) {
		snd := start(t, &pipetest.Server{}, Config{MaxPending: DefaultMaxPending + 1})
		assert.False(t, snd.inline)
		assert.True(t, snd.reading)
		send(t, snd)
	})
}

// TestInlineSenderCloses: Close settles, as lost, a message whose final
// reply a Sender that reads its replies itself has not read.
func TestInlineSenderCloses(t *testing.T) {
	c, s := tcpPair(t)
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&pipetest.Server{}).Serve(s)
	snd := NewSender(ctx, c, Config{})
	_, err := snd.Hello("client.test")
	require.NoError(t, err)
	m, o := msg("s@x.test", "hi\r\n", "a@y.test")
	require.NoError(t, snd.Send(m))
	require.NoError(t, snd.Close())
	assert.Equal(t, []int{-1}, o.codes(), "the reply to the dot was not read")
	assert.ErrorIs(t, o.errs[0], ErrClosed)
}

// TestReaderTakesOverWithoutTheInlineDeadline: the read deadline of the
// Sender's last wait before its first BDAT chunk does not end the reader
// goroutine's reads, which the reply timeout of each wait bounds instead.
func TestReaderTakesOverWithoutTheInlineDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		isSocket = func(net.Conn) bool { return true }
		defer func() { isSocket = socket }()
		c, s := net.Pipe()
		defer c.Close()
		go func() {
			defer s.Close()
			br := bufio.NewReader(s)
			lines := func(n int) {
				for range n {
					if _, err := br.ReadString('\n'); err != nil {
						return
					}
				}
			}
			io.WriteString(s, "220 hi\r\n")
			lines(1) // EHLO
			io.WriteString(s, "250-hi\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
			lines(4) // MAIL, RCPT, BDAT 4 LAST and its chunk, one line
			time.Sleep(2 * time.Minute)
			io.WriteString(s, "250 ok\r\n250 ok\r\n250 queued\r\n")
			lines(1) // QUIT
			io.WriteString(s, "221 bye\r\n")
		}()
		snd := NewSender(context.Background(), c, Config{Chunking: true, ReplyTimeout: time.Hour, DataTimeout: time.Hour})
		defer snd.Close()
		_, err := snd.Hello("client.test")
		require.NoError(t, err)
		require.True(t, snd.inline)
		// The deadline of Hello's last read is an hour away: the reply
		// to the chunk comes after it, within the chunk's own timeout.
		time.Sleep(59 * time.Minute)
		m, o := msg("s@x.test", "hi\r\n", "a@y.test")
		require.NoError(t, snd.Send(m))
		require.True(t, snd.reading)
		require.NoError(t, snd.Quit())
		assert.Equal(t, []int{0}, o.codes())
	})
}
