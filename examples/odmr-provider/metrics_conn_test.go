package main

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMetricsCapsConnections: connections to -metrics past
// -metrics-max-conns are closed as soon as they are accepted, so that a
// client holding connections open (a slowloris: headers never finished)
// cannot take the file descriptors the mail listeners need; once those
// are gone, scrapes are served again.
func TestMetricsCapsConnections(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	log := slog.New(slog.DiscardHandler)
	f := defaultMetricsFlags()
	f.maxConns = 2
	stop := serveMetrics(l, f, newProviderMetrics(nil, f, log), log)
	defer stop()

	// Two slow clients take both slots: each has sent part of a request,
	// and a scrape through a third connection is closed unanswered.
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		_, err = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n")
		require.NoError(t, err)
		held = append(held, c)
	}
	// The server accepts connections in order: once a scrape on a fresh
	// connection is answered by a close, both slots are known taken. A
	// scrape that got in before the slow clients were accepted is
	// answered; try again until the cap shows.
	for {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		_, err = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			break // closed without an answer: the cap holds
		}
		resp.Body.Close()
	}

	for _, c := range held {
		c.Close()
	}
	// The slots come free when the server sees the clients go.
	assert.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && len(b) > 0
	}, time.Minute, 10*time.Millisecond)
}
