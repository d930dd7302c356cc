package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAgainstTheRunnableProvider runs the checker as an operator would:
// against examples/odmr-provider, a separate process, queueing its test
// mail through the provider's SMTP intake. Every check must pass.
func TestAgainstTheRunnableProvider(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the provider")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "odmr-provider")
	out, err := exec.Command("go", "build", "-o", bin, "../odmr-provider").CombinedOutput()
	require.NoError(t, err, "%s", out)
	accts := filepath.Join(dir, "accounts")
	require.NoError(t, os.WriteFile(accts, []byte("alice s3cret example.org,example.com\nbob pw example.net\n"), 0o600))
	// The checks send about 50 ATRNs in a row, more than the default
	// burst, and on a loaded machine faster than one a second: the rate
	// limit is off, as in odmrtest's own fixture.
	// Port 0: the program picks its ports and logs them, so no other
	// test can take one between a choice here and the program's bind.
	cmd := exec.Command(bin, "-accounts", accts, "-listen", "127.0.0.1:0", "-smtp", "127.0.0.1:0", "-hostname", "prov.test",
		"-atrn-interval", "-1s")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	sc := bufio.NewScanner(stderr)
	var odmrAddr, smtpAddr string
	for (odmrAddr == "" || smtpAddr == "") && sc.Scan() {
		switch l := sc.Text(); {
		case strings.Contains(l, "ODMR listening"):
			odmrAddr = listenAddr(t, l)
		case strings.Contains(l, "SMTP intake listening"):
			smtpAddr = listenAddr(t, l)
		}
	}
	require.NotEmpty(t, smtpAddr, "the provider exited before listening")
	go func() {
		for sc.Scan() {
		}
	}()

	t.Setenv("ODMR_SECRET", "s3cret")
	var stdout, errs bytes.Buffer
	code := run(context.Background(), []string{"-addr", odmrAddr, "-user", "alice", "-domains", "example.org,example.com",
		"-foreign-domain", "example.net", "-smtp", smtpAddr, "-replays-pipelined"}, &stdout, &errs)
	assert.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout.String(), errs.String())
	assert.NotContains(t, stdout.String(), " FAIL ")
	assert.Contains(t, stdout.String(), "0 failed")
}

// listenAddr returns the address a "... listening" log record names.
func listenAddr(t *testing.T, line string) string {
	t.Helper()
	_, rest, ok := strings.Cut(line, " addr=")
	require.True(t, ok, "no addr= in %q", line)
	addr, _, _ := strings.Cut(rest, " ")
	return addr
}
