package quickack

import (
	"net"
	"testing"
)

// tcpPair returns both ends of a TCP connection on loopback.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// wrapper is a connection wrapper that shows what it wraps, as
// *tls.Conn and the session's own wrappers do.
type wrapper struct{ net.Conn }

func (w wrapper) NetConn() net.Conn { return w.Conn }

// A pipe has no socket to set options on: no function for it.
func TestFuncNilOnAPipe(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Func(a) != nil {
		t.Error("Func(pipe) != nil")
	}
	if Func(wrapper{a}) != nil {
		t.Error("Func(wrapper of a pipe) != nil")
	}
}

// Off is there to measure without quick ACKs: no function.
func TestFuncOff(t *testing.T) {
	c, _ := tcpPair(t)
	Off.Store(true)
	defer Off.Store(false)
	if Func(c) != nil {
		t.Error("Func with Off != nil")
	}
}

// Func finds the socket under the wrappers (TLS, a transcript) a session
// puts on it.
func TestFuncLooksThroughWrappers(t *testing.T) {
	c, _ := tcpPair(t)
	if acker(c) == nil {
		t.Skip("quick ACKs are not available here")
	}
	if Func(wrapper{wrapper{c}}) == nil {
		t.Error("Func(wrapper of a wrapper of a TCP socket) = nil")
	}
}
