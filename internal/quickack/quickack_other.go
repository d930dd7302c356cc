//go:build !linux

package quickack

import "net"

// acker returns nil: TCP_QUICKACK is Linux's.
func acker(*net.TCPConn) func() { return nil }
