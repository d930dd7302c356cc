package quickack

import (
	"io"
	"net"
	"syscall"
	"testing"
)

// quickAckMode reads TCP_QUICKACK back: 1 while the socket acknowledges
// at once, 0 while it delays its ACKs (Linux's "pingpong" mode, which a
// socket enters when it answers what it receives).
func quickAckMode(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	rc.Control(func(fd uintptr) {
		v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK)
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// The function Func returns puts the socket back in quick-ACK mode,
// although each answer written makes it an interactive socket whose ACKs
// Linux delays: what arrives next, while the reader waits for more, is
// acknowledged at once.
func TestFuncSetsQuickAck(t *testing.T) {
	client, server := tcpPair(t)
	ack := Func(wrapper{server})
	if ack == nil {
		t.Fatal("Func = nil on a TCP socket")
	}
	buf := make([]byte, 64)
	for i := range 20 {
		if _, err := client.Write([]byte("250 ok\r\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(server, buf[:8]); err != nil {
			t.Fatal(err)
		}
		if _, err := server.Write([]byte("RCPT TO:<a@b>\r\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf[:15]); err != nil {
			t.Fatal(err)
		}
		ack()
		if got := quickAckMode(t, server); got != 1 {
			t.Fatalf("round %d: TCP_QUICKACK after ack = %d, want 1", i, got)
		}
	}
}
