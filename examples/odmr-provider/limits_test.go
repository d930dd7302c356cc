package main

import (
	"bufio"
	"context"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/defaults"
)

// TestLimitFlags: every session limit has a flag whose default, shown by
// -h, is the library's, and that reaches the Provider.
func TestLimitFlags(t *testing.T) {
	c, err := parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	var p odmr.Provider
	c.limits.apply(&p)
	assert.Equal(t, defaults.MaxSessions, p.MaxSessions)
	assert.Equal(t, defaults.MaxSessionsPerAddr, p.MaxSessionsPerAddr)
	assert.Equal(t, defaults.IPv4Prefix, p.IPv4Prefix)
	assert.Equal(t, defaults.IPv6Prefix, p.IPv6Prefix)
	assert.Equal(t, defaults.AuthTimeout, p.AuthTimeout)
	assert.Equal(t, defaults.SessionTimeout, p.SessionTimeout)
	assert.Equal(t, defaults.CommandTimeout, p.CommandTimeout)
	assert.Equal(t, defaults.ReplyTimeout, p.ReplyTimeout)
	assert.Equal(t, defaults.DataTimeout, p.DataTimeout)
	assert.Equal(t, defaults.WriteTimeout, p.WriteTimeout)
	assert.Equal(t, defaults.BackendTimeout, p.BackendTimeout)
	assert.Equal(t, defaults.MaxErrors, p.MaxErrors)
	assert.Equal(t, defaults.ATRNInterval, p.ATRNInterval)
	assert.Equal(t, defaults.ATRNBurst, p.ATRNBurst)
	assert.Equal(t, defaults.ConnLogsPerSecond, p.ConnLogsPerSecond)

	c, err = parseFlags([]string{"-accounts", "x", "-max-sessions", "50", "-max-sessions-per-network", "-1",
		"-ipv4-prefix", "24", "-ipv6-prefix", "48", "-auth-timeout", "10s", "-session-timeout", "2m",
		"-command-timeout", "30s", "-reply-timeout", "40s", "-data-timeout", "50s", "-write-timeout", "5s",
		"-backend-timeout", "7s",
		"-max-errors", "3", "-atrn-interval", "-1s", "-atrn-burst", "2", "-conn-logs-per-second", "-1", "-debug", "/dev/null"})
	require.NoError(t, err)
	c.limits.apply(&p)
	assert.Equal(t, []any{50, -1, 24, 48, 10 * time.Second, 2 * time.Minute, 30 * time.Second,
		40 * time.Second, 50 * time.Second, 5 * time.Second, 3, -time.Second, 2},
		[]any{p.MaxSessions, p.MaxSessionsPerAddr, p.IPv4Prefix, p.IPv6Prefix, p.AuthTimeout, p.SessionTimeout,
			p.CommandTimeout, p.ReplyTimeout, p.DataTimeout, p.WriteTimeout, p.MaxErrors, p.ATRNInterval, p.ATRNBurst})
	assert.Equal(t, -1, p.ConnLogsPerSecond)
	assert.Equal(t, 7*time.Second, p.BackendTimeout)
	assert.Equal(t, "/dev/null", c.debugFile)

	for _, bad := range [][]string{
		{"-command-timeout", "0"}, {"-auth-timeout", "0"}, {"-atrn-interval", "0"}, {"-backend-timeout", "0"},
		{"-max-sessions", "0"}, {"-ipv4-prefix", "33"}, {"-ipv6-prefix", "0"}, {"-atrn-burst", "0"},
	} {
		_, err := parseFlags(append([]string{"-accounts", "x"}, bad...))
		assert.ErrorContains(t, err, bad[0], "%v", bad)
	}

	var help strings.Builder
	fs := flag.NewFlagSet("odmr-provider", flag.ContinueOnError)
	fs.SetOutput(&help)
	new(limitFlags).register(fs)
	fs.PrintDefaults()
	for _, want := range []string{"-max-sessions N", "(default 1000)", "-max-sessions-per-network N", "(default 20)",
		"-auth-timeout DURATION", "(default 1m0s)", "-session-timeout DURATION", "(default 15m0s)",
		"-atrn-interval DURATION", "(default 1s)", "-atrn-burst N", "(default 30)", "(default 64)"} {
		assert.Contains(t, help.String(), want)
	}
}

// buildProvider builds the program into a temporary directory and writes
// an accounts file next to it.
func buildProvider(t *testing.T) (bin, accts string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the program")
	}
	dir := t.TempDir()
	bin = filepath.Join(dir, "odmr-provider")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	accts = filepath.Join(dir, "accounts")
	require.NoError(t, os.WriteFile(accts, []byte("alice s3cret example.org\n"), 0o600))
	return bin, accts
}

// logWatch hands the program's log lines to tests that wait for one, and
// keeps the last few to show when the program exits unexpectedly.
type logWatch struct {
	lines chan string
	mu    sync.Mutex
	tail  []string
}

func watchLog(r io.Reader) *logWatch {
	w := &logWatch{lines: make(chan string, 4096)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			w.mu.Lock()
			if w.tail = append(w.tail, sc.Text()); len(w.tail) > 20 {
				w.tail = w.tail[1:]
			}
			w.mu.Unlock()
			select {
			case w.lines <- sc.Text():
			default: // nobody is waiting for these
			}
		}
		close(w.lines)
	}()
	return w
}

// lastLines is what the program logged last.
func (w *logWatch) lastLines() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.tail, "\n")
}

// seen returns the latest of the last lines logged that has s, or "".
func (w *logWatch) seen(s string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := len(w.tail) - 1; i >= 0; i-- {
		if strings.Contains(w.tail[i], s) {
			return w.tail[i]
		}
	}
	return ""
}

// listenAddr returns the address a "... listening" record names: the
// programs are started on port 0, so that no other test can take a port
// between a test choosing it and the program binding it.
func listenAddr(t *testing.T, line string) string {
	t.Helper()
	_, rest, ok := strings.Cut(line, " addr=")
	require.True(t, ok, "no addr= in %q", line)
	addr, _, _ := strings.Cut(rest, " ")
	return addr
}

// wait returns the first log line, from now on, that has every one of want.
func (w *logWatch) wait(t *testing.T, want ...string) string {
	t.Helper()
	timeout := time.After(20 * time.Second) // a hang, not a measurement
	for {
		select {
		case l, ok := <-w.lines:
			require.True(t, ok, "program exited before logging %q; its last lines:\n%s", want, w.lastLines())
			found := true
			for _, s := range want {
				found = found && strings.Contains(l, s)
			}
			if found {
				return l
			}
		case <-timeout:
			t.Fatalf("no log line with %q", want)
		}
	}
}

// startProvider runs the built program with extra flags and a shell
// prefix (such as a ulimit), and waits until both listeners are up.
func startProvider(t *testing.T, bin, accts, shellPrefix string, extra ...string) (odmrAddr, smtpAddr string, log *logWatch) {
	t.Helper()
	_, odmrAddr, smtpAddr, log = startProviderCmd(t, bin, accts, shellPrefix, extra...)
	return odmrAddr, smtpAddr, log
}

// startProviderCmd is startProvider that also returns the process, for
// tests that signal it.
func startProviderCmd(t *testing.T, bin, accts, shellPrefix string, extra ...string) (cmd *exec.Cmd, odmrAddr, smtpAddr string, log *logWatch) {
	t.Helper()
	args := append([]string{"-c", shellPrefix + `exec "$0" "$@"`, bin, "-accounts", accts, "-listen", "127.0.0.1:0", "-smtp", "127.0.0.1:0", "-hostname", "prov.test"}, extra...)
	cmd = exec.Command("sh", args...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	log = watchLog(stderr)
	odmrAddr = listenAddr(t, log.wait(t, "ODMR listening"))
	smtpAddr = listenAddr(t, log.wait(t, "SMTP intake listening"))
	return cmd, odmrAddr, smtpAddr, log
}

// fetch pulls example.org's mail as alice and returns the bodies.
func fetch(t *testing.T, addr string) []string {
	t.Helper()
	var got []string
	c := &odmr.Customer{Addr: addr, Username: "alice", Secret: "s3cret", Domains: []string{"example.org"}, Logger: discardLog(),
		Sink: odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
			b, err := io.ReadAll(body)
			got = append(got, string(b))
			return err
		})}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := c.Fetch(ctx)
	require.NoError(t, err)
	return got
}

// TestProviderSurvivesDescriptorExhaustion runs the program with 64 file
// descriptors and opens more connections than that to both its
// listeners: it must keep running (it used to exit on "accept4: too many
// open files", losing its in-memory queue), say so in its log, and serve
// the customer its mail once the connections are gone.
func TestProviderSurvivesDescriptorExhaustion(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("uses sh's ulimit -n on Linux")
	}
	bin, accts := buildProvider(t)
	odmrAddr, smtpAddr, log := startProvider(t, bin, accts, "ulimit -n 64 && ", "-max-sessions-per-network", "-1")
	require.NoError(t, sendPlain(smtpAddr, 1))

	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	dial := func(addr string) {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		require.NoError(t, err) // the kernel's backlog takes them
		flood = append(flood, c)
	}
	for range 100 {
		dial(odmrAddr)
	}
	log.wait(t, "accept failed", "too many open files", odmrAddr)
	for range 5 {
		dial(smtpAddr)
	}
	log.wait(t, "accept failed", "too many open files", smtpAddr)

	for _, c := range flood {
		c.Close()
	}
	flood = nil
	got := fetch(t, odmrAddr)
	require.Len(t, got, 1)
	n, err := checkMessage([]byte(got[0]))
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	require.NoError(t, sendPlain(smtpAddr, 2), "the intake still takes mail")
}

// TestIdleAnonymousSessionsDoNotStarveCustomer fills the program's
// sessions with idle unauthenticated connections: the customer still gets
// its mail (it used to get 421), the oldest idle connection is told it
// made room, and one network cannot take more than
// -max-sessions-per-network. In another run, an idle connection is closed
// when -auth-timeout runs out.
func TestIdleAnonymousSessionsDoNotStarveCustomer(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("dials from 127.0.0.2, which only Linux routes to loopback by default")
	}
	bin, accts := buildProvider(t)
	transcript := filepath.Join(t.TempDir(), "debug.txt")
	odmrAddr, smtpAddr, _ := startProvider(t, bin, accts, "", "-max-sessions", "6", "-max-sessions-per-network", "3",
		"-debug", transcript)
	require.NoError(t, sendPlain(smtpAddr, 3))

	// Three idle sessions from each of two addresses fill the provider.
	var idle []*bufio.Reader
	for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
		for range 3 {
			idle = append(idle, dialFrom(t, src, odmrAddr, "220 "))
		}
	}
	// A fourth from one of them is refused: its network is full.
	dialFrom(t, "127.0.0.2", odmrAddr, "421 4.7.0 Too many connections from your network")

	got := fetch(t, odmrAddr)
	require.Len(t, got, 1)
	line, err := idle[0].ReadString('\n')
	require.NoError(t, err)
	assert.Contains(t, line, "421 4.7.0 Too many connections; unauthenticated session closed to make room")

	b, err := os.ReadFile(transcript)
	require.NoError(t, err)
	assert.Contains(t, string(b), "C: AUTH")
	assert.NotContains(t, string(b), "s3cret")

	odmrAddr, _, _ = startProvider(t, bin, accts, "", "-auth-timeout", "500ms")
	r := dialFrom(t, "127.0.0.1", odmrAddr, "220 ")
	line, err = r.ReadString('\n')
	require.NoError(t, err)
	assert.Contains(t, line, "421 4.7.0 Authentication took too long")
}

// dialFrom connects from the loopback address src and checks the first
// line the provider sends.
func dialFrom(t *testing.T, src, addr, wantPrefix string) *bufio.Reader {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(20 * time.Second)) // a hang, not a measurement
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, wantPrefix), "got %q, want %q", line, wantPrefix)
	return r
}
