package odmr

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// wrapped is a connection in the customer's wrappers, as Fetch stacks
// them: the reversed conn, the transcript, the idle timeout.
func wrapped(conn net.Conn) *idleConn {
	var c net.Conn = &reversedConn{Conn: conn}
	c = &transcriptConn{Conn: c, in: "P: ", out: "C: ", emit: func(string, string) {}}
	return &idleConn{Conn: c, ctx: context.Background(), idle: time.Minute}
}

func TestCloseWriteLooksThroughWrappers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	peer, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer peer.Close()
	conn, err := l.Accept()
	require.NoError(t, err)
	c := wrapped(conn)
	defer c.Close()

	require.NoError(t, closeWrite(c))
	n, err := peer.Read(make([]byte, 1))
	assert.Equal(t, 0, n)
	assert.ErrorIs(t, err, io.EOF, "the peer sees the half-close")
	// Reading still works.
	_, err = peer.Write([]byte("x"))
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = io.ReadFull(c, b)
	require.NoError(t, err)
	assert.Equal(t, "x", string(b))
}

func TestCloseWriteDoesNothingWithoutHalfClose(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	assert.NoError(t, closeWrite(wrapped(a)))
}

func TestTLSStateLooksThroughWrappers(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	_, ok := wrapped(a).ConnectionState()
	assert.False(t, ok, "clear text")
	_, ok = wrapped(tls.Client(a, &tls.Config{})).ConnectionState()
	assert.True(t, ok, "TLS under three wrappers")
}

// loopConn is a wrapper whose NetConn leads back to itself.
type loopConn struct{ net.Conn }

func (c *loopConn) NetConn() net.Conn { return c }

// TestCloseWriteSurvivesAWrapperLoop: the search for a connection that
// can half-close ends (netconn.MaxDepth) when a wrapper leads back to
// itself.
func TestCloseWriteSurvivesAWrapperLoop(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	assert.NoError(t, closeWrite(&loopConn{a}))
	_, ok := tlsState(&loopConn{a})
	assert.False(t, ok)
}
