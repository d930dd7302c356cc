package netconn

import (
	"crypto/tls"
	"net"
	"testing"
)

// wrapper wraps a connection and shows it.
type wrapper struct{ net.Conn }

func (w wrapper) NetConn() net.Conn { return w.Conn }

// loop is a wrapper whose NetConn leads back to itself.
type loop struct{ net.Conn }

func (c *loop) NetConn() net.Conn { return c }

func TestFindLooksThroughWrappers(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	tc := tls.Client(a, &tls.Config{})
	got, ok := Find[*tls.Conn](wrapper{wrapper{tc}})
	if !ok || got != tc {
		t.Errorf("Find through two wrappers = %v, %v", got, ok)
	}
	if _, ok := Find[*tls.Conn](wrapper{a}); ok {
		t.Error("found TLS in clear text")
	}
	if _, ok := Find[*net.TCPConn](nil); ok {
		t.Error("found a connection under nil")
	}
}

func TestWalkStopsAtMaxDepth(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	seen := 0
	Walk(&loop{a}, func(net.Conn) bool {
		seen++
		return false
	})
	if seen != MaxDepth {
		t.Errorf("Walk looked %d deep, want %d", seen, MaxDepth)
	}
}
