package odmr

import (
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// dupListener hands the provider its connections wrapped so that the test
// sees when the provider closes one, and keeps a duplicate of each
// socket's descriptor: the socket outlives the provider's Close, and its
// options can still be read.
type dupListener struct {
	net.Listener
	conns chan *watchedConn
}

type watchedConn struct {
	*net.TCPConn
	dup    *os.File
	closed chan struct{}
}

func (l *dupListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	f, err := tc.File()
	if err != nil {
		tc.Close()
		return nil, err
	}
	wc := &watchedConn{TCPConn: tc, dup: f, closed: make(chan struct{})}
	l.conns <- wc
	return wc, nil
}

func (c *watchedConn) Close() error {
	err := c.TCPConn.Close()
	close(c.closed)
	return err
}

// NetConn shows the socket underneath, as the provider's own wrappers do.
func (c *watchedConn) NetConn() net.Conn { return c.TCPConn }

// quickAck reads TCP_QUICKACK from a duplicate of a socket's descriptor,
// through SyscallConn: Fd would make the socket, which the provider still
// uses, a blocking one.
func quickAck(t *testing.T, f *os.File) int {
	rc, err := f.SyscallConn()
	require.NoError(t, err)
	var v int
	var gerr error
	require.NoError(t, rc.Control(func(fd uintptr) {
		v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK)
	}))
	require.NoError(t, gerr)
	return v
}

// The provider asks for quick ACKs when it waits for replies still owed.
// A customer that writes its replies one at a time without TCP_NODELAY,
// as fetchmail does, sends each only once the one before it is
// acknowledged; the provider, which wrote its group of commands right
// after reading the EHLO reply, is an interactive socket to Linux, which
// would delay that ACK by 40 ms. Here the customer writes the reply to
// MAIL alone, and waits, before the reply to RCPT, until the provider's
// socket acknowledges at once.
func TestProviderAsksForQuickACKsAfterTheSwap(t *testing.T) {
	f := newFixture(t)
	const n = 4
	for range n {
		f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "u@example.org")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dl := &dupListener{Listener: l, conns: make(chan *watchedConn, 1)}
	go f.p.ServeListener(dl)
	f.addr = l.Addr().String()

	c := f.dial(t)
	wc := <-dl.conns
	t.Cleanup(func() { wc.dup.Close() })
	c.login()
	c.cmd(250, "ATRN example.org")
	go func() {
		<-wc.closed
		wc.dup.Close() // the socket closes: the customer sees the end
	}()
	rcpts, asked := 0, false
	got, _ := scriptedCustomer{
		ehlo: []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"},
		rcptReply: func(string) string {
			// By the last message the socket has answered what it read
			// often enough to be an interactive one. The reply to MAIL
			// is out, those to RCPT and DATA are owed: the provider reads
			// it, then asks before it waits. A hang, not a measurement,
			// bounds the wait.
			if rcpts++; rcpts == n {
				for end := time.Now().Add(time.Minute); !asked && time.Now().Before(end); runtime.Gosched() {
					asked = quickAck(t, wc.dup) == 1
				}
			}
			return "250 2.1.5 OK"
		},
	}.run(t, c)
	assert.True(t, asked, "TCP_QUICKACK of the provider's socket while it waits for the reply to RCPT")
	require.Len(t, got, n)
}
