// Package accept keeps a listener accepting through temporary errors: a
// process out of file descriptors (EMFILE), a kernel out of buffers, a
// connection aborted before it was accepted. net/http's server, like
// most, sleeps and retries on these; a server that returns instead stops
// serving everyone.
package accept

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/go-odmr/odmr/internal/lograte"
)

// Backoff bounds: the wait after a temporary error doubles from MinDelay
// up to MaxDelay, as in net/http.
const (
	MinDelay = 5 * time.Millisecond
	MaxDelay = time.Second
)

// Temporary reports whether an Accept error is worth retrying: a timeout,
// or an errno that says the process or the kernel is short of a resource
// for now, or that one connection failed before it was accepted.
func Temporary(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{
		syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Retrying wraps l so that Accept retries temporary errors with a backoff
// and returns only a connection or a permanent error (such as the
// listener's closing). It logs the errors to log at most once a second,
// with the number it did not log. Close ends a wait at once.
func Retrying(l net.Listener, log *slog.Logger) net.Listener {
	return &listener{Listener: l, log: log, done: make(chan struct{})}
}

type listener struct {
	net.Listener
	log       *slog.Logger
	done      chan struct{}
	closeOnce sync.Once

	logs lograte.Limiter // once a second
}

func (l *listener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil || !Temporary(err) {
			return c, err
		}
		delay = min(max(2*delay, MinDelay), MaxDelay)
		l.report(err, delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-l.done:
			// The next Accept returns the closed listener's error.
			t.Stop()
		}
	}
}

// report logs err unless it logged one less than a second ago.
func (l *listener) report(err error, delay time.Duration) {
	ok, n := l.logs.Allow(time.Now())
	if !ok {
		return
	}
	l.log.Warn("odmr: accept failed; retrying", "addr", l.Addr().String(), "err", err, "in", delay, "not_logged", n)
}

func (l *listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}
