package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtrace"
)

func TestMetricsFlags(t *testing.T) {
	c, err := parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	assert.Empty(t, c.metrics.addr, "no metrics unless asked")
	assert.Equal(t, defaultMetricsMaxDomains, c.metrics.maxDomains)
	assert.Equal(t, defaultMetricsQueueInterval, c.metrics.queueInterval)
	c, err = parseFlags([]string{"-accounts", "x", "-metrics", "127.0.0.1:9366", "-metrics-max-domains", "0", "-metrics-queue-interval", "1m"})
	require.NoError(t, err)
	want := defaultMetricsFlags()
	want.addr, want.maxDomains, want.queueInterval = "127.0.0.1:9366", 0, time.Minute
	assert.Equal(t, want, c.metrics)
	assert.Equal(t, metricsFlags{maxDomains: defaultMetricsMaxDomains, queueInterval: defaultMetricsQueueInterval, maxConns: defaultMetricsMaxConns,
		maxScrapes: defaultMetricsMaxScrapes, readTimeout: defaultMetricsReadTimeout, writeTimeout: defaultMetricsWriteTimeout,
		idleTimeout: defaultMetricsIdleTimeout}, defaultMetricsFlags())
	c, err = parseFlags([]string{"-accounts", "x", "-metrics-max-scrapes", "2", "-metrics-read-timeout", "3s",
		"-metrics-write-timeout", "12s", "-metrics-idle-timeout", "4s"})
	require.NoError(t, err)
	assert.Equal(t, 2, c.metrics.maxScrapes)
	assert.Equal(t, 3*time.Second, c.metrics.readTimeout)
	assert.Equal(t, 12*time.Second, c.metrics.writeTimeout)
	assert.Equal(t, 6*time.Second, c.metrics.scrapeTimeout())
	assert.Equal(t, 2*time.Second, c.metrics.queueTimeout())
	assert.Equal(t, 4*time.Second, c.metrics.idleTimeout)
	for _, bad := range [][]string{{"-metrics-max-domains", "-1"}, {"-metrics-queue-interval", "0"}, {"-metrics-max-conns", "0"},
		{"-metrics-max-scrapes", "0"}, {"-metrics-read-timeout", "0"}, {"-metrics-write-timeout", "-1s"}, {"-metrics-idle-timeout", "0"}} {
		_, err := parseFlags(append([]string{"-accounts", "x"}, bad...))
		assert.ErrorContains(t, err, bad[0], "%v", bad)
	}
}

// TestCapDomains: past the cap, the domains with the least mail are added
// up as "other", with the oldest of their oldest messages.
func TestCapDomains(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	stats := []odmrtrace.QueueStats{
		{Domain: "a.test", Messages: 1, Bytes: 10, Oldest: t0.Add(time.Hour)},
		{Domain: "b.test", Messages: 5, Bytes: 50, Oldest: t0.Add(2 * time.Hour)},
		{Domain: "c.test", Messages: 1, Bytes: 20, Oldest: t0},
		{Domain: "d.test", Messages: 3, Bytes: 30},
	}
	assert.Equal(t, []odmrtrace.QueueStats{
		{Domain: "b.test", Messages: 5, Bytes: 50, Oldest: t0.Add(2 * time.Hour)},
		{Domain: "d.test", Messages: 3, Bytes: 30},
		{Domain: "other", Messages: 2, Bytes: 30, Oldest: t0},
	}, capDomains(stats, 2))
	assert.Len(t, capDomains(stats, 4), 4, "no other series when all fit")
	assert.Equal(t, []odmrtrace.QueueStats{{Domain: "other", Messages: 10, Bytes: 110, Oldest: t0}}, capDomains(stats, 0))
	assert.Equal(t, "a.test", stats[0].Domain, "the caller's slice is left alone")
}

// scrape fetches /metrics and returns each sample by its name and labels
// as the text format writes them, e.g. `x_total{code="250"}`.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, resp.Header.Get("Content-Type"), "text/plain")
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		require.Positive(t, i, "sample line %q", line)
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, "sample line %q", line)
		samples[line[:i]] = v
	}
	require.NoError(t, sc.Err())
	return samples
}

// TestMetricsEndpoint runs the program with -metrics, queues mail for
// three domains through the intake, has a customer collect one domain's,
// and checks what /metrics says before and after.
func TestMetricsEndpoint(t *testing.T) {
	bin, _ := buildProvider(t)
	dir := t.TempDir()
	accts := filepath.Join(dir, "accounts")
	require.NoError(t, os.WriteFile(accts, []byte("alice s3cret example.org\nbob b0b-secret example.com,example.net\n"), 0o600))
	cmd := exec.Command(bin, "-accounts", accts, "-spool", filepath.Join(dir, "spool"), "-hostname", "prov.test",
		"-listen", "127.0.0.1:0", "-smtp", "127.0.0.1:0", "-metrics", "127.0.0.1:0",
		"-metrics-max-domains", "1", "-metrics-queue-interval", "1ns")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	log := watchLog(stderr)
	metricsAddr := listenAddr(t, log.wait(t, "metrics listening"))
	assert.Empty(t, log.seen("reachable from other networks"), "loopback draws no warning")
	odmrAddr := listenAddr(t, log.wait(t, "ODMR listening"))
	smtpAddr := listenAddr(t, log.wait(t, "SMTP intake listening"))

	m := scrape(t, metricsAddr)
	assert.Zero(t, m[`odmr_provider_deliveries_total{result="delivered"}`], "the series are there from the start")
	assert.Contains(t, m, `odmr_provider_deliveries_total{result="delivered"}`)
	assert.Contains(t, m, "go_goroutines", "the Go runtime's metrics too")

	const body = "Subject: metrics\r\n\r\nHello.\r\n"
	for _, to := range []string{"a@example.org", "b@example.org", "c@example.com", "d@example.net"} {
		c, err := smtp.Dial(smtpAddr)
		require.NoError(t, err)
		require.NoError(t, c.SendMail("sender@x.test", []string{to}, strings.NewReader(body)))
		c.Quit()
		c.Close()
	}
	// The spool builds its index in the background after start; until
	// it is done, the queue gauges are absent.
	for m = scrape(t, metricsAddr); m["odmr_provider_queue_index_ready"] != 1; m = scrape(t, metricsAddr) {
		time.Sleep(10 * time.Millisecond)
	}
	assert.Equal(t, 4.0, m["odmr_provider_messages_queued_total"])
	assert.Greater(t, m["odmr_provider_queued_bytes_total"], 4.0*float64(len(body)), "with the Received field")
	assert.Equal(t, 2.0, m[`odmr_provider_queue_messages{domain="example.org"}`])
	assert.Equal(t, 2.0, m[`odmr_provider_queue_messages{domain="other"}`], "-metrics-max-domains 1")
	assert.NotContains(t, m, `odmr_provider_queue_messages{domain="example.com"}`)
	queuedOrg := m[`odmr_provider_queue_bytes{domain="example.org"}`]
	assert.Positive(t, queuedOrg)
	oldest := m[`odmr_provider_queue_oldest_message_timestamp_seconds{domain="example.org"}`]
	assert.InDelta(t, float64(time.Now().Unix()), oldest, 3600, "a Unix time, not an age")

	c := &odmr.Customer{Addr: odmrAddr, Username: "alice", Secret: "s3cret", Domains: []string{"example.org"}, Logger: discardLog(),
		Sink: odmr.MessageSinkFunc(func(_ context.Context, _ odmr.Envelope, body io.Reader) error {
			_, err := io.Copy(io.Discard, body)
			return err
		})}
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	require.Equal(t, 2, res.Messages)
	// The session is counted when it ends, just before it logs so.
	log.wait(t, "odmr: session ended", "identity=alice")

	m = scrape(t, metricsAddr)
	assert.Equal(t, 2.0, m[`odmr_provider_deliveries_total{result="delivered"}`])
	assert.Zero(t, m[`odmr_provider_deliveries_total{result="bounced"}`])
	assert.Zero(t, m[`odmr_provider_deliveries_total{result="deferred"}`])
	assert.Equal(t, queuedOrg, m[`odmr_provider_delivery_bytes_total{result="delivered"}`], "the queue's sizes")
	assert.Equal(t, 2.0, m["odmr_provider_delivery_latency_seconds_count"])
	assert.Equal(t, 1.0, m[`odmr_provider_atrn_total{code="250"}`])
	assert.Equal(t, 1.0, m[`odmr_provider_auth_total{mechanism="SCRAM-SHA-256",result="success"}`])
	assert.Equal(t, 1.0, m[`odmr_provider_sessions_total{outcome="ok",state="reversed"}`])
	assert.Zero(t, m["odmr_provider_sessions_active"])
	assert.NotContains(t, m, `odmr_provider_queue_messages{domain="example.org"}`, "delivered: no longer queued")
	assert.Equal(t, 1.0, m[`odmr_provider_queue_messages{domain="other"}`])

	resp, err := http.Get("http://" + metricsAddr + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "only /metrics is served")
}

// TestMetricsAddressWarning: only listeners on loopback or private
// addresses are taken as internal; the others draw a warning.
func TestMetricsAddressWarning(t *testing.T) {
	for addr, internal := range map[string]bool{
		"127.0.0.1:9366": true, "[::1]:9366": true, "10.1.2.3:9366": true, "192.168.0.1:80": true, "[fd00::1]:80": true,
		"0.0.0.0:9366": false, "[::]:9366": false, "203.0.113.5:9366": false,
	} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		require.NoError(t, err)
		assert.Equal(t, internal, isInternal(a), addr)
	}
}
