package main

import (
	"bufio"
	"context"
	"flag"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/memqueue"
	"github.com/go-odmr/odmr/odmrtrace"
)

// defaultMetricsFlags returns the metrics flags as -h shows their
// defaults.
func defaultMetricsFlags() metricsFlags {
	var f metricsFlags
	f.register(flag.NewFlagSet("", flag.PanicOnError))
	return f
}

// pipeListener hands the server one end of a net.Pipe per dial, so that
// the metrics server's limits run on a synctest clock.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial() net.Conn {
	c, s := net.Pipe()
	l.conns <- s
	return c
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// closedWhen reads c until the server closes it and closes the returned
// channel then.
func closedWhen(c net.Conn) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(done)
	}()
	return done
}

// closesAfter checks, in a synctest bubble, that the server closes c
// once d has passed, and not a millisecond sooner.
func closesAfter(t *testing.T, c net.Conn, d time.Duration, what string) {
	t.Helper()
	closed := closedWhen(c)
	time.Sleep(d - time.Millisecond)
	synctest.Wait()
	assert.False(t, isClosed(closed), "closed before %s", what)
	time.Sleep(time.Millisecond)
	synctest.Wait()
	assert.True(t, isClosed(closed), "open after %s", what)
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// get sends a scrape on c and returns its reply, with c left open.
func get(t *testing.T, c net.Conn) *http.Response {
	t.Helper()
	_, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// blockingCollector holds each scrape in Collect until release is closed.
type blockingCollector struct{ release chan struct{} }

var blockingDesc = prometheus.NewDesc("test_blocking", "Blocks the scrape.", nil, nil)

func (b *blockingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- blockingDesc }
func (b *blockingCollector) Collect(ch chan<- prometheus.Metric) {
	<-b.release
	ch <- prometheus.MustNewConstMetric(blockingDesc, prometheus.GaugeValue, 1)
}

// TestMetricsReadTimeout: a client that does not finish its request within
// -metrics-read-timeout is closed, freeing its -metrics-max-conns slot.
func TestMetricsReadTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := defaultMetricsFlags()
		f.readTimeout = 3 * time.Second
		l := newPipeListener()
		stop := serveMetrics(l, f, newProviderMetrics(nil, f, discardLog()), discardLog())
		defer stop()

		c := l.dial()
		defer c.Close()
		_, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n")
		require.NoError(t, err)
		closesAfter(t, c, f.readTimeout, "-metrics-read-timeout")
	})
}

// TestMetricsIdleTimeout: a connection kept alive after a scrape is closed
// after -metrics-idle-timeout without another.
func TestMetricsIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := defaultMetricsFlags()
		f.idleTimeout = 7 * time.Second
		l := newPipeListener()
		stop := serveMetrics(l, f, newProviderMetrics(nil, f, discardLog()), discardLog())
		defer stop()

		c := l.dial()
		defer c.Close()
		assert.Equal(t, http.StatusOK, get(t, c).StatusCode)
		closesAfter(t, c, f.idleTimeout, "-metrics-idle-timeout")
	})
}

// TestMetricsWriteTimeout: a scrape that is not ready within half of
// -metrics-write-timeout gets 503 (and the connection is not held for
// the whole of it).
func TestMetricsWriteTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := defaultMetricsFlags()
		f.writeTimeout = 20 * time.Second
		l := newPipeListener()
		m := newProviderMetrics(nil, f, discardLog())
		b := &blockingCollector{release: make(chan struct{})}
		m.registry.MustRegister(b)
		stop := serveMetrics(l, f, m, discardLog())
		defer stop()
		defer close(b.release)

		c := l.dial()
		defer c.Close()
		start := time.Now()
		assert.Equal(t, http.StatusServiceUnavailable, get(t, c).StatusCode)
		assert.Equal(t, f.writeTimeout/2, time.Since(start), "the synctest clock")
	})
}

// slowQueue is a queue whose QueueStats answers only when its context
// ends.
type slowQueue struct{ *memqueue.Queue }

func (slowQueue) QueueStats(ctx context.Context) ([]odmrtrace.QueueStats, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestMetricsQueueTimeout: a queue that does not tell its sizes within a
// sixth of -metrics-write-timeout costs the scrape that long, not its
// whole time: the scrape is answered with the other metrics and the error
// counted, and the scrapes until -metrics-queue-interval later do not ask
// it again.
func TestMetricsQueueTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := defaultMetricsFlags()
		f.writeTimeout = 60 * time.Second
		l := newPipeListener()
		stop := serveMetrics(l, f, newProviderMetrics(slowQueue{new(memqueue.Queue)}, f, discardLog()), discardLog())
		defer stop()

		c := l.dial()
		defer c.Close()
		start := time.Now()
		resp := get(t, c)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, f.writeTimeout/6, time.Since(start), "the synctest clock")

		start = time.Now()
		_, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		resp, err = http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		assert.Zero(t, time.Since(start), "the failed queue is not asked again within the interval")
		assert.Contains(t, string(body), "odmr_provider_queue_stats_errors_total 1\n")
		assert.Contains(t, string(body), "odmr_provider_queue_index_ready 1\n")
	})
}

// TestMetricsMaxScrapes: past -metrics-max-scrapes scrapes at once,
// further ones get 503 at once.
func TestMetricsMaxScrapes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := defaultMetricsFlags()
		f.maxScrapes = 2
		l := newPipeListener()
		m := newProviderMetrics(nil, f, discardLog())
		b := &blockingCollector{release: make(chan struct{})}
		m.registry.MustRegister(b)
		stop := serveMetrics(l, f, m, discardLog())
		defer stop()

		codes := make(chan int, f.maxScrapes+1)
		var wg sync.WaitGroup
		for range f.maxScrapes + 1 {
			c := l.dial()
			defer c.Close()
			wg.Go(func() { codes <- get(t, c).StatusCode })
		}
		synctest.Wait()
		require.Len(t, codes, 1, "one scrape answered while the others are held")
		assert.Equal(t, http.StatusServiceUnavailable, <-codes)
		close(b.release)
		wg.Wait()
		for range f.maxScrapes {
			assert.Equal(t, http.StatusOK, <-codes)
		}
	})
}

// TestMetricsMaxHeaderBytes: request headers past metricsMaxHeaderBytes
// (and the 4 KiB net/http allows beyond) get 431.
func TestMetricsMaxHeaderBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := defaultMetricsFlags()
		l := newPipeListener()
		stop := serveMetrics(l, f, newProviderMetrics(nil, f, discardLog()), discardLog())
		defer stop()

		c := l.dial()
		defer c.Close()
		go io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", metricsMaxHeaderBytes+8<<10)+"\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)

		c = l.dial()
		defer c.Close()
		_, err = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", metricsMaxHeaderBytes-1<<10)+"\r\n\r\n")
		require.NoError(t, err)
		resp, err = http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, "headers under the limit")
		// net/http waits half a second after a 431 before it closes;
		// the bubble must not end before.
		time.Sleep(time.Second)
	})
}
