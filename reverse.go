package odmr

import (
	"crypto/tls"
	"net"
	"sync"
)

// reversedConn is the connection after the role swap. It first returns the
// bytes that the command reader had already read ahead, then reads from the
// underlying connection, so the SMTP stack that takes over loses nothing
// (the hazard http.Hijacker warns about).
type reversedConn struct {
	net.Conn
	mu       sync.Mutex
	buffered []byte
}

// Reverse returns conn as the reversed-state connection of an ODMR session
// whose command reader had already consumed buffered from it. Reads return
// buffered first. Everything else, deadlines included, goes to conn.
//
// The provider and the customer in this package call it themselves; it is
// exported for programs that run the initial state with their own code and
// hand the rest of the session to another SMTP stack.
func Reverse(conn net.Conn, buffered []byte) net.Conn {
	if len(buffered) == 0 {
		if tc, ok := conn.(*tls.Conn); ok {
			// Keep the concrete type so that SMTP stacks see TLS.
			return tc
		}
	}
	b := make([]byte, len(buffered))
	copy(b, buffered)
	return &reversedConn{Conn: conn, buffered: b}
}

func (c *reversedConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.buffered) > 0 {
		n := copy(p, c.buffered)
		c.buffered = c.buffered[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// ConnectionState returns the TLS state when the session runs over TLS, so
// that SMTP stacks which look for this method see it.
func (c *reversedConn) ConnectionState() (tls.ConnectionState, bool) {
	if tc, ok := c.Conn.(*tls.Conn); ok {
		return tc.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// NetConn returns the connection underneath.
func (c *reversedConn) NetConn() net.Conn { return c.Conn }
