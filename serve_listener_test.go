package odmr

import (
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pipeProvider is a provider with the fixture's accounts that tests feed
// net.Pipe connections, so that synctest can run its clocks.
func pipeProvider(logs io.Writer, opts ...func(*Provider)) *Provider {
	accts := testAccounts{
		testUser: {Name: testUser, Secret: testSecret, Domains: []string{"example.org"}},
	}
	p := &Provider{
		Hostname:      "provider.test",
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         newMemQueue(),
		Logger:        slog.New(slog.NewTextHandler(logs, nil)),
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// emfileListener fails Accept with EMFILE `fails` times, then hands out
// conns, then blocks until closed.
type emfileListener struct {
	mu     sync.Mutex
	fails  int
	conns  []net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *emfileListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	if len(l.conns) > 0 {
		c := l.conns[0]
		l.conns = l.conns[1:]
		l.mu.Unlock()
		return c, nil
	}
	l.mu.Unlock()
	<-l.closed
	return nil, net.ErrClosed
}
func (l *emfileListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *emfileListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: Port} }

// TestServeListenerSurvivesEMFILE: a provider out of file descriptors
// keeps accepting (it used to return the error and stop serving), and
// logs the failures at most once a second.
func TestServeListenerSurvivesEMFILE(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &syncBuffer{}
		p := pipeProvider(logs)
		server, conn := net.Pipe()
		defer conn.Close()
		l := &emfileListener{fails: 100, conns: []net.Conn{server}, closed: make(chan struct{})}
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- p.ServeListener(l) }()

		c := &client{t: t, conn: conn, tp: textproto.NewConn(conn)}
		c.expect(220)
		elapsed := time.Since(start)
		c.login()
		c.cmd(221, "QUIT")
		n := strings.Count(logs.String(), "accept failed")
		assert.Positive(t, n)
		assert.LessOrEqual(t, n, int(elapsed/time.Second)+1, "logged at most once a second over %v", elapsed)

		require.NoError(t, p.Close())
		assert.ErrorIs(t, <-done, ErrProviderClosed)
	})
}

// TestListenAndServe serves on a TCP address of its own, as an
// http.Server user would, until Shutdown; after it, ListenAndServe
// refuses to start.
func TestListenAndServe(t *testing.T) {
	p := pipeProvider(io.Discard)
	var conn net.Conn
	var done chan error
	for conn == nil {
		// A free port: another process may take it between Close and
		// ListenAndServe, and then the next one is tried.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		l.Close()
		done = make(chan error, 1)
		go func() { done <- p.ListenAndServe(addr) }()
		conn = dialServing(t, addr, done)
	}
	defer conn.Close()
	c := &client{t: t, conn: conn, tp: textproto.NewConn(conn)}
	c.expect(220)
	c.login()
	c.cmd(221, "QUIT")

	// A second provider cannot have the same address.
	err := pipeProvider(io.Discard).ListenAndServe(conn.RemoteAddr().String())
	assert.ErrorContains(t, err, "odmr: listen tcp")
	assert.ErrorIs(t, err, syscall.EADDRINUSE)

	require.NoError(t, p.Shutdown(t.Context()))
	assert.ErrorIs(t, <-done, ErrProviderClosed)
	assert.ErrorIs(t, p.ListenAndServe("127.0.0.1:0"), ErrProviderClosed)
}

// dialServing connects to addr once the provider serving it listens; nil
// when serving ended first (the address was taken).
func dialServing(t *testing.T, addr string, done <-chan error) net.Conn {
	for {
		conn, err := net.Dial("tcp", addr)
		if err == nil {
			return conn
		}
		select {
		case err := <-done:
			t.Logf("ListenAndServe(%s): %v; trying another port", addr, err)
			return nil
		case <-time.After(time.Millisecond):
			// Not listening yet: the goroutine has not got there.
		}
	}
}
