package main

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDaemonWakesOnSignal: a signal on wake ends the wait before the next
// fetch at once; without one the daemon waits the whole -every.
func TestDaemonWakesOnSignal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		wake := make(chan os.Signal, 1)
		var out strings.Builder
		d := &daemon{every: time.Hour, maxBackoff: time.Hour, out: &out, wake: wake}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		start := time.Now()
		var at []time.Duration
		done := make(chan int)
		go func() {
			done <- d.run(ctx, func(context.Context) int {
				at = append(at, time.Since(start))
				if len(at) == 3 {
					cancel()
				}
				return exitNoMail
			})
		}()
		synctest.Wait() // run 1 done, waiting an hour
		time.Sleep(time.Minute)
		wake <- syscall.SIGHUP
		assert.Equal(t, exitMail, <-done)
		assert.Equal(t, []time.Duration{0, time.Minute, time.Minute + time.Hour}, at)
		assert.Contains(t, out.String(), "odmr-customer: SIGHUP: fetching now\n")
	})
}

// TestProgramDaemonSIGHUPFetchesNow: SIGHUP used to kill the daemon
// (status 129, no line in the log), a fetch under way with it; now it
// starts the next fetch at once, and SIGTERM still stops it cleanly.
func TestProgramDaemonSIGHUPFetchesNow(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the program")
	}
	bin, err := buildCustomer()
	require.NoError(t, err)
	// A provider that is not there: each run fails at once, status 2.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())

	cmd := exec.Command(bin, "-provider", addr, "-user", "alice", "-domains", "example.org",
		"-maildir", t.TempDir(), "-every", "1h")
	cmd.Env = append(cmd.Environ(), "ODMR_SECRET=s3cret")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(stderr)
	waitFor := func(want string) {
		t.Helper()
		for lines.Scan() {
			if strings.Contains(lines.Text(), want) {
				return
			}
		}
		t.Fatalf("no line with %q", want)
	}
	waitFor("odmr-customer: run 1 ended with status 2")
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	waitFor("odmr-customer: SIGHUP: fetching now")
	waitFor("odmr-customer: run 2 ended with status 2")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	waitFor("odmr-customer: stopped by SIGTERM")
	assert.NoError(t, cmd.Wait(), "a daemon stopped by SIGTERM exits 0")
}
