// Package oneconn turns one established connection into a [net.Listener],
// for servers that only know how to serve listeners (as the SMTP server
// under internal/smtpserver does) but must run on a connection that
// already exists, such as
// an ODMR session after the role swap.
package oneconn

import (
	"net"
	"sync"
)

// Listener yields one connection from Accept. Later calls block until the
// listener is closed and then return [net.ErrClosed]. Done reports when
// the connection it handed out has been closed, which is the cue for the
// caller to shut its server down.
type Listener struct {
	conn     net.Conn
	closed   chan struct{} // closed by Close
	done     chan struct{} // closed when the yielded conn is closed
	once     sync.Once
	mu       sync.Mutex
	accepted bool
}

// New returns a listener that yields conn once.
func New(conn net.Conn) *Listener {
	return &Listener{
		conn:   conn,
		closed: make(chan struct{}),
		done:   make(chan struct{}),
	}
}

// Accept returns the connection on its first call. The connection it
// returns wraps the one given to New so that closing it closes Done. Every
// later call blocks until Close and returns net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	l.mu.Lock()
	first := !l.accepted
	l.accepted = true
	l.mu.Unlock()
	if first {
		select {
		case <-l.closed:
			// Closed before the first Accept: the connection is not handed
			// out, and the caller still owns it.
			return nil, net.ErrClosed
		default:
		}
		return &conn{Conn: l.conn, l: l}, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

// Close makes pending and future Accept calls return net.ErrClosed. It does
// not close the connection, which belongs to whoever accepted it. Close is
// idempotent and always returns nil.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr returns the local address of the connection.
func (l *Listener) Addr() net.Addr { return l.conn.LocalAddr() }

// Done returns a channel that is closed once the connection returned by
// Accept has been closed.
func (l *Listener) Done() <-chan struct{} { return l.done }

// conn is the accepted connection; its Close closes the listener's done
// channel.
type conn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.l.done) })
	return err
}

// NetConn returns the connection given to New.
func (c *conn) NetConn() net.Conn { return c.Conn }
