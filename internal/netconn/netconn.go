// Package netconn looks through the wrappers of a net.Conn to the
// connections under it: a wrapper shows the one it wraps with a NetConn
// method, as crypto/tls.Conn does.
package netconn

import "net"

// MaxDepth bounds how deep Walk looks, in case a wrapper's NetConn leads
// back to itself.
const MaxDepth = 8

// Walk calls found with conn, then with each connection under it, until
// found returns true or there is none left; it looks at most MaxDepth
// deep.
func Walk(conn net.Conn, found func(net.Conn) bool) {
	for range MaxDepth {
		if conn == nil || found(conn) {
			return
		}
		u, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			return
		}
		conn = u.NetConn()
	}
}

// Find returns the first connection of type T at or under conn, as Walk
// finds it, and whether there is one.
func Find[T net.Conn](conn net.Conn) (T, bool) {
	var t T
	var ok bool
	Walk(conn, func(c net.Conn) bool {
		t, ok = c.(T)
		return ok
	})
	return t, ok
}
