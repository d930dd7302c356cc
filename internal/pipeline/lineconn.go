package pipeline

import (
	"bytes"
	"net"
)

// LineConn hands a connection from one reader to another without losing
// a byte. Until Handoff, each Read returns at most one line, so that a
// buffered reader on top of it (go-smtp's Client reads through a
// bufio.Reader it keeps to itself) never holds bytes past the end of the
// line it asked for: once that reader has parsed a complete reply, every
// byte it has not consumed is still here. Handoff then turns the LineConn
// into a plain connection that returns those bytes first.
//
// It exists so that the provider can read the customer's greeting and
// EHLO reply with go-smtp's Client and then, if the customer offers
// PIPELINING, drive the same connection with a [Sender].
//
// Read, Handoff and Buffered must not be called concurrently: the reader
// before the handoff and the one after it take turns.
type LineConn struct {
	net.Conn

	buf     []byte
	r, w    int
	err     error // read error held back until buf is drained
	direct  bool  // after Handoff: no line limit
	partial bool  // the last Read did not end with LF
}

// NewLineConn returns conn wrapped in a LineConn.
func NewLineConn(conn net.Conn) *LineConn { return &LineConn{Conn: conn} }

// Read returns buffered bytes first. Before Handoff it returns no more
// than one line (up to and including LF) per call.
func (c *LineConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.r == c.w {
		if c.err != nil {
			err := c.err
			c.err = nil
			return 0, err
		}
		if c.direct {
			c.buf = nil
			return c.Conn.Read(p)
		}
		if c.buf == nil {
			c.buf = make([]byte, 4096)
		}
		n, err := c.Conn.Read(c.buf)
		c.r, c.w = 0, n
		if n == 0 {
			return 0, err
		}
		c.err = err
	}
	data := c.buf[c.r:c.w]
	if !c.direct {
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[:i+1]
		}
	}
	n := copy(p, data)
	c.r += n
	c.partial = c.buf[c.r-1] != '\n'
	return n, nil
}

// Handoff ends the one-line-per-Read mode and returns the connection for
// the next reader. clean is false if the reader before may hold part of a
// line (a line longer than its buffer), in which case the connection
// cannot be handed over.
func (c *LineConn) Handoff() (conn net.Conn, clean bool) {
	c.direct = true
	return c, !c.partial
}

// Buffered returns how many bytes have been read from the connection
// underneath and not yet returned by Read.
func (c *LineConn) Buffered() int {
	return c.w - c.r
}

// NetConn returns the connection underneath.
func (c *LineConn) NetConn() net.Conn { return c.Conn }
