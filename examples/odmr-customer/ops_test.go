package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/memqueue"
)

// enqueueTo queues n messages for u@example.org.
func enqueueTo(t *testing.T, q *memqueue.Queue, n int) {
	t.Helper()
	for i := range n {
		_, err := q.Enqueue(odmr.Envelope{From: "x@sender.test", To: []string{"u@example.org"}},
			strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nHello.\r\n", i)))
		require.NoError(t, err)
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestProgramLocalServerDownExits6(t *testing.T) {
	// The mail stays at the provider, and the status says so.
	q := &memqueue.Queue{}
	enqueueTo(t, q, 2)
	addr := startProvider(t, q)
	local := closedAddr(t)
	for _, target := range []string{"-smtp", "-lmtp", "-relay"} {
		code, stderr := runCustomer(t, "-provider", addr, "-user", "alice", "-domains", "example.org",
			target, local, "-hostname", "customer.test")
		assert.Equal(t, exitLocal, code, "%s: %s", target, stderr)
		assert.Contains(t, stderr, local, target)
		assert.Equal(t, 2, q.Len(), "%s: the mail stays queued", target)
	}
}

func TestProgramLocalServerRefusesExits6(t *testing.T) {
	q := &memqueue.Queue{}
	enqueueTo(t, q, 1)
	addr := startProvider(t, q)
	mta, be := startLocalMTA(t)
	be.mu.Lock()
	be.refuse = "u@example.org"
	be.mu.Unlock()
	for _, target := range []string{"-smtp", "-relay"} {
		code, stderr := runCustomer(t, "-provider", addr, "-user", "alice", "-domains", "example.org",
			target, mta, "-hostname", "customer.test")
		assert.Equal(t, exitLocal, code, "%s: %s", target, stderr)
		assert.Contains(t, stderr, "the local target did not take 1 message(s) or recipient(s)", target)
		assert.Contains(t, stderr, "450", target)
		assert.Equal(t, 1, q.Len(), target)
	}
}

func TestProgramRelayCountsWhatWasRelayed(t *testing.T) {
	q := &memqueue.Queue{}
	enqueueTo(t, q, 3)
	addr := startProvider(t, q)
	mta, _ := startLocalMTA(t)
	code, stderr := runCustomer(t, "-provider", addr, "-user", "alice", "-domains", "example.org",
		"-relay", mta, "-hostname", "customer.test", "-v")
	assert.Equal(t, exitMail, code, stderr)
	assert.Contains(t, stderr, "relayed 3 message(s) for 3 recipient(s), ")
	assert.Contains(t, stderr, "messages=3")
	assert.Zero(t, q.Len())
}

// startSilentProvider accepts one connection and never answers; accepted
// is closed once it has it.
func startSilentProvider(t *testing.T) (addr string, accepted chan struct{}) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	accepted = make(chan struct{})
	go func() {
		c, err := l.Accept()
		close(accepted)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}()
	t.Cleanup(func() { l.Close() })
	return l.Addr().String(), accepted
}

func TestProgramSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the program")
	}
	bin, err := buildCustomer()
	require.NoError(t, err)
	for _, tc := range []struct {
		sig   syscall.Signal
		every bool
		code  int
		says  string
	}{
		{syscall.SIGINT, false, 130, "odmr-customer: interrupted\n"},
		{syscall.SIGTERM, false, 143, "odmr-customer: stopped by SIGTERM\n"},
		// A daemon stopped by the service manager stops cleanly.
		{syscall.SIGTERM, true, 0, "odmr-customer: stopped by SIGTERM\n"},
	} {
		addr, accepted := startSilentProvider(t)
		args := []string{"-provider", addr, "-user", "alice", "-domains", "example.org", "-maildir", t.TempDir()}
		if tc.every {
			args = append(args, "-every", "1h")
		}
		cmd := exec.Command(bin, args...)
		cmd.Env = append(cmd.Environ(), "ODMR_SECRET=s3cret")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Start())
		<-accepted // the fetch is under way, waiting for the greeting
		require.NoError(t, cmd.Process.Signal(tc.sig))
		err := cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		assert.Equal(t, tc.code, code, "%v: %s", tc.sig, stderr.String())
		assert.Contains(t, stderr.String(), tc.says)
	}
}

// daemonRun is what a test daemon's fetch saw of one run.
type daemonRun struct {
	at   time.Duration // since the daemon started
	code int
}

// runDaemon runs a daemon whose fetches return codes in turn, then block
// until ctx ends; it returns the runs and the daemon's status.
func runDaemon(t *testing.T, d *daemon, codes []int) ([]daemonRun, int) {
	var runs []daemonRun
	var out strings.Builder
	d.out = &out
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	start := time.Now()
	status := d.run(ctx, func(ctx context.Context) int {
		if len(runs) == len(codes) {
			cancel()
			<-ctx.Done()
			return exitFailure
		}
		code := codes[len(runs)]
		runs = append(runs, daemonRun{time.Since(start), code})
		return code
	})
	assert.Equal(t, len(codes), strings.Count(out.String(), "\n"), out.String())
	return runs, status
}

func TestDaemonBacksOffAndResets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// No jitter: the upper bound of each wait.
		d := &daemon{every: time.Minute, maxBackoff: 10 * time.Minute,
			jitter: func(d time.Duration) time.Duration { return d - 1 }}
		runs, status := runDaemon(t, d, []int{exitMail, exitTemporary, exitFailure, exitLocal, exitAuth, exitTemporary, exitNoMail, exitTemporary, exitMail})
		assert.Equal(t, exitMail, status, "a stop is a clean exit")
		var gaps []time.Duration
		for i := 1; i < len(runs); i++ {
			gaps = append(gaps, (runs[i].at - runs[i-1].at).Round(time.Second))
		}
		m := time.Minute
		assert.Equal(t, []time.Duration{
			m,      // after a success
			2 * m,  // 1 failure
			4 * m,  // 2
			8 * m,  // 3
			10 * m, // 4: capped
			10 * m, // 5
			m,      // a success resets
			2 * m,
		}, gaps)
	})
}

func TestDaemonJitterStaysInBounds(t *testing.T) {
	d := &daemon{every: time.Minute, maxBackoff: time.Hour}
	for failures := 1; failures < 12; failures++ {
		upper := min(time.Minute<<failures, time.Hour)
		for range 200 {
			w := d.wait(failures)
			assert.GreaterOrEqual(t, w, upper/2, "failures=%d", failures)
			assert.Less(t, w, upper, "failures=%d", failures)
		}
	}
	assert.Equal(t, time.Minute, d.wait(0), "no jitter after a success")
	// A huge number of failures does not overflow.
	assert.LessOrEqual(t, d.wait(1000), time.Hour)
	assert.Greater(t, d.wait(1000), 30*time.Minute-time.Nanosecond)
}

func TestDaemonStopsAtAUsageErrorAndAtCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &daemon{every: time.Minute, maxBackoff: time.Hour}
		var out strings.Builder
		d.out = &out
		n := 0
		status := d.run(t.Context(), func(context.Context) int { n++; return exitUsage })
		assert.Equal(t, exitUsage, status)
		assert.Equal(t, 1, n)

		// Cancelled while it waits: it returns at once, 0.
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan int)
		go func() { done <- d.run(ctx, func(context.Context) int { return exitNoMail }) }()
		synctest.Wait() // the daemon waits for its timer
		cancel()
		assert.Equal(t, exitMail, <-done)
	})
}
