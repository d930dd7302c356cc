package odmr

import (
	"crypto/tls"
	"net"
)

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
