package accept

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countHandler counts log records.
type countHandler struct {
	mu sync.Mutex
	n  int
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(context.Context, slog.Record) error {
	h.mu.Lock()
	h.n++
	h.mu.Unlock()
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// failingListener fails its first `fails` Accepts with err, then hands out
// one end of a pipe, then blocks until closed.
type failingListener struct {
	err    error
	fails  int
	conn   net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, l.err
	}
	if c := l.conn; c != nil {
		l.conn = nil
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}
func (l *failingListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *failingListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 366} }

func emfile() error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
}

func TestTemporary(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{emfile(), true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ENFILE)}, true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ENOBUFS)}, true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ENOMEM)}, true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ECONNABORTED)}, true},
		{&net.OpError{Op: "accept", Err: os.ErrDeadlineExceeded}, true},
		{&net.OpError{Op: "accept", Err: net.ErrClosed}, false},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EBADF)}, false},
		{errors.New("odmr: something else"), false},
	} {
		assert.Equal(t, c.want, Temporary(c.err), "%v", c.err)
	}
}

// TestRetryingSurvivesEMFILE: a listener out of descriptors for a long
// while still hands out the next connection, and logs at most once a
// second of (fake) time.
func TestRetryingSurvivesEMFILE(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		server, client := net.Pipe()
		defer client.Close()
		fl := &failingListener{err: emfile(), fails: 200, conn: server, closed: make(chan struct{})}
		h := &countHandler{}
		l := Retrying(fl, slog.New(h))
		start := time.Now()
		c, err := l.Accept()
		require.NoError(t, err)
		assert.Same(t, server, c)
		elapsed := time.Since(start)
		assert.Greater(t, elapsed, 100*time.Second, "200 failures back off up to a second each")
		assert.LessOrEqual(t, h.n, int(elapsed/time.Second)+1)
		assert.Positive(t, h.n)

		// Close ends Accept with the listener's own error.
		done := make(chan error)
		go func() { _, err := l.Accept(); done <- err }()
		synctest.Wait()
		require.NoError(t, l.Close())
		assert.ErrorIs(t, <-done, net.ErrClosed)
	})
}

// TestRetryingCloseEndsTheWait: Close during a backoff wait returns at once.
func TestRetryingCloseEndsTheWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fl := &failingListener{err: emfile(), fails: 1 << 30, closed: make(chan struct{})}
		l := Retrying(fl, slog.New(&countHandler{}))
		done := make(chan error)
		go func() { _, err := l.Accept(); done <- err }()
		time.Sleep(3 * time.Second) // fake time: deep into the backoff
		synctest.Wait()
		fl.fails = 0
		start := time.Now()
		require.NoError(t, l.Close())
		assert.ErrorIs(t, <-done, net.ErrClosed)
		assert.Less(t, time.Since(start), MaxDelay)
	})
}
