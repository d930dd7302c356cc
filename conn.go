package odmr

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-odmr/odmr/internal/netconn"
)

// The wrappers of a net.Conn that the session puts between itself and
// the socket, and the one way to look through them.

// reversedConn is the connection after the role swap. It first returns the
// bytes that the command reader had already read ahead, then reads from the
// underlying connection, so the SMTP stack that takes over loses nothing
// (the hazard http.Hijacker warns about).
type reversedConn struct {
	net.Conn
	mu       sync.Mutex
	buffered []byte
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
func (c *reversedConn) ConnectionState() (tls.ConnectionState, bool) { return tlsState(c.Conn) }

// NetConn returns the connection underneath.
func (c *reversedConn) NetConn() net.Conn { return c.Conn }

// transcriptConn copies a session into a debug transcript line by line:
// what is read gets the prefix in, what is written the prefix out. Reads
// and writes keep separate buffers, so a relay may run them concurrently.
type transcriptConn struct {
	net.Conn
	in, out    string
	emit       func(prefix, line string)
	rbuf, wbuf []byte
}

func (c *transcriptConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.rbuf = c.lines(c.in, append(c.rbuf, p[:n]...))
	return n, err
}

func (c *transcriptConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.wbuf = c.lines(c.out, append(c.wbuf, p[:n]...))
	return n, err
}

// NetConn returns the connection underneath, for half-closes.
func (c *transcriptConn) NetConn() net.Conn { return c.Conn }

// lines emits the complete lines of buf and returns the rest, keeping at
// most a few KiB of an unfinished line.
func (c *transcriptConn) lines(prefix string, buf []byte) []byte {
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		c.emit(prefix, strings.TrimSuffix(string(buf[:i]), "\r"))
		buf = buf[i+1:]
	}
	if len(buf) > 4096 {
		c.emit(prefix, string(buf)+" [...]")
		buf = buf[:0]
	}
	return append([]byte(nil), buf...)
}

// idleConn is the connection after the swap. Each read waits at most idle
// for the provider, and any traffic starts that wait again; once ctx is
// done every operation fails. It records why reading ended.
type idleConn struct {
	net.Conn
	ctx  context.Context
	idle time.Duration

	mu      sync.Mutex
	readErr error
}

func (c *idleConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	if err := c.ctx.Err(); err != nil {
		c.setErr(err)
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if err != nil {
		c.setErr(err)
	}
	return n, err
}

func (c *idleConn) Write(p []byte) (int, error) {
	now := time.Now()
	c.Conn.SetWriteDeadline(now.Add(c.idle))
	c.Conn.SetReadDeadline(now.Add(c.idle))
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *idleConn) setErr(err error) {
	c.mu.Lock()
	if c.readErr == nil {
		c.readErr = err
	}
	c.mu.Unlock()
}

// err returns the error that ended reading, if any.
func (c *idleConn) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// CloseWrite half-closes the connection when the one underneath can.
func (c *idleConn) CloseWrite() error { return closeWrite(c.Conn) }

// ConnectionState returns the TLS state when the session runs over TLS.
func (c *idleConn) ConnectionState() (tls.ConnectionState, bool) { return tlsState(c.Conn) }

// NetConn returns the connection underneath.
func (c *idleConn) NetConn() net.Conn { return c.Conn }

// deadlineConn is the connection the provider delivers over: it bounds
// each write and stops every operation once ctx is done, whatever
// deadlines the SMTP client sets for itself.
type deadlineConn struct {
	net.Conn
	ctx   context.Context
	write time.Duration
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	// Deadline first, then the check: a cancellation in between sets a
	// past deadline that this one would otherwise overwrite.
	c.Conn.SetWriteDeadline(time.Now().Add(c.write))
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// NetConn returns the connection underneath.
func (c *deadlineConn) NetConn() net.Conn { return c.Conn }

// closeWrite shuts down the writing side of conn, looking through its
// wrappers; it does nothing for a connection that cannot half-close.
func closeWrite(conn net.Conn) error {
	var err error
	netconn.Walk(conn, func(c net.Conn) bool {
		cw, ok := c.(interface{ CloseWrite() error })
		if ok {
			err = cw.CloseWrite()
		}
		return ok
	})
	return err
}

// tlsState returns the TLS state of conn, looking through its wrappers;
// ok is false in clear text.
func tlsState(conn net.Conn) (state tls.ConnectionState, ok bool) {
	netconn.Walk(conn, func(c net.Conn) bool {
		switch t := c.(type) {
		case *tls.Conn:
			state, ok = t.ConnectionState(), true
			return true
		case interface {
			ConnectionState() (tls.ConnectionState, bool)
		}:
			state, ok = t.ConnectionState()
			return true
		}
		return false
	})
	return state, ok
}
