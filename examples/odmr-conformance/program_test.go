package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
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
	odmrAddr, smtpAddr := freeAddr(t), freeAddr(t)
	// The checks send about 50 ATRNs in a row, more than the default
	// burst, and on a loaded machine faster than one a second: the rate
	// limit is off, as in odmrtest's own fixture.
	cmd := exec.Command(bin, "-accounts", accts, "-listen", odmrAddr, "-smtp", smtpAddr, "-hostname", "prov.test",
		"-atrn-interval", "-1s")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	sc := bufio.NewScanner(stderr)
	for started := 0; started < 2 && sc.Scan(); {
		if strings.Contains(sc.Text(), "listening") {
			started++
		}
	}
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

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}
