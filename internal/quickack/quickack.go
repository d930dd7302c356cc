// Package quickack asks the kernel to acknowledge TCP data at once, on the
// sockets where a peer that writes without TCP_NODELAY would otherwise
// wait for a delayed ACK.
//
// A peer with Nagle's algorithm on (no TCP_NODELAY), such as fetchmail
// relaying a session line by line, or an MTA writing one reply at a time,
// sends a small segment only once the one before it is acknowledged. The
// receiver, when it has nothing to send back yet (it waits for the rest of
// the replies, or for the rest of a command), delays that ACK, by 40 ms
// on Linux: every such pair of writes costs 40 ms. On Linux, TCP_QUICKACK
// sends the ACK due at once and makes the next ACKs immediate; the kernel
// leaves that mode by itself. A reader that knows when it waits for its
// peer calls the function [Func] returns just then (the pipeline's Sender
// does), rather than after every read, which would cost a system call and
// an ACK packet per read where a write of its own carries the ACK anyway.
// Elsewhere than on Linux it does nothing.
package quickack

import (
	"net"
	"sync/atomic"

	"github.com/go-odmr/odmr/internal/netconn"
)

// Off, when set, makes [Func] return nil. It exists to measure what the
// quick ACKs are worth (odmr-bench -no-quickack).
var Off atomic.Bool

// Func returns a function that asks for quick ACKs on the TCP socket
// found under conn (through the NetConn methods of its wrappers, as
// [crypto/tls.Conn] has); nil when there is none, when quick ACKs cannot
// be asked for, or when Off is set.
func Func(conn net.Conn) func() {
	if Off.Load() {
		return nil
	}
	tc, ok := netconn.Find[*net.TCPConn](conn)
	if !ok {
		return nil
	}
	return acker(tc)
}
