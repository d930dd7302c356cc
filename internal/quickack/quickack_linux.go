package quickack

import (
	"net"
	"syscall"
)

// acker returns a function that sets TCP_QUICKACK on tc's socket.
func acker(tc *net.TCPConn) func() {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return func() {
		rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
		})
	}
}
