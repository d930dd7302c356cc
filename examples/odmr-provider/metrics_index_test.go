package main

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtrace"
	"github.com/go-odmr/odmr/spool"
)

// buildingSpool is a real spool whose index the test says is still being
// built until built is closed: its QueueStats would wait for the index,
// as the spool's does.
type buildingSpool struct {
	*spool.Spool
	t     *testing.T
	built chan struct{}
}

func (b *buildingSpool) Indexed() bool {
	select {
	case <-b.built:
		return b.Spool.Indexed()
	default:
		return false
	}
}

func (b *buildingSpool) QueueStats(ctx context.Context) ([]odmrtrace.QueueStats, error) {
	if !b.Indexed() {
		b.t.Error("QueueStats called while the index is being built: the scrape waits for it")
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return b.Spool.QueueStats(ctx)
}

// TestMetricsWhileIndexing: while the spool builds its index after start
// (minutes for a million messages queued), a scrape is answered at once,
// with every metric but the per-domain queue gauges, and
// odmr_provider_queue_index_ready 0; once it is built, they are there.
func TestMetricsWhileIndexing(t *testing.T) {
	s, err := spool.Open(filepath.Join(t.TempDir(), "spool"), spool.Options{Logger: discardLog(), MaintenanceInterval: -1})
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Enqueue(context.Background(), odmr.Envelope{From: "s@x.test", To: []string{"a@example.org"}}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	require.NoError(t, err)
	require.NoError(t, s.WaitIndexed(context.Background()))
	q := &buildingSpool{Spool: s, t: t, built: make(chan struct{})}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := defaultMetricsFlags()
	f.queueInterval = 1
	stop := serveMetrics(l, f, newProviderMetrics(q, f, discardLog()), discardLog())
	defer stop()

	m := scrape(t, l.Addr().String())
	assert.Equal(t, 0.0, m["odmr_provider_queue_index_ready"])
	assert.Contains(t, m, "odmr_provider_queue_index_ready")
	assert.NotContains(t, m, `odmr_provider_queue_messages{domain="example.org"}`)
	assert.Contains(t, m, `odmr_provider_deliveries_total{result="delivered"}`, "the other metrics are served")
	assert.Contains(t, m, "go_goroutines")
	assert.Zero(t, m["odmr_provider_queue_stats_errors_total"], "waiting for the index is no error")

	close(q.built)
	m = scrape(t, l.Addr().String())
	assert.Equal(t, 1.0, m["odmr_provider_queue_index_ready"])
	assert.Equal(t, 1.0, m[`odmr_provider_queue_messages{domain="example.org"}`])
}
