package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSignalContextHelper is the child of TestSecondSignalKills: it
// catches the first signal, says so, and then hangs as a fetch stuck in
// a local target would.
func TestSignalContextHelper(t *testing.T) {
	if os.Getenv("ODMR_SIGNAL_HELPER") != "1" {
		t.Skip("the child of TestSecondSignalKills")
	}
	ctx, stop := signalContext(context.Background())
	defer stop()
	fmt.Println("ready")
	<-ctx.Done()
	fmt.Println("caught", caughtSignal(ctx))
	select {} // stuck where the context does not reach
}

// TestSecondSignalKills: the first SIGINT cancels the fetch; a second one
// kills the program even when the fetch does not end, as an operator
// pressing Ctrl-C twice expects.
func TestSecondSignalKills(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestSignalContextHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "ODMR_SIGNAL_HELPER=1")
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	// A fail-safe, not a timing assertion: without the fix the child
	// would hang for good.
	failsafe := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	defer failsafe.Stop()
	lines := bufio.NewScanner(out)
	require.True(t, lines.Scan())
	require.Equal(t, "ready", lines.Text())
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	require.True(t, lines.Scan())
	require.Equal(t, "caught interrupt", lines.Text())
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err = cmd.Wait()
	var ee *exec.ExitError
	require.True(t, errors.As(err, &ee), "the child exited: %v", err)
	ws := ee.Sys().(syscall.WaitStatus)
	assert.True(t, ws.Signaled(), "the child exited with %v instead of dying of the signal", ws)
	assert.Equal(t, syscall.SIGINT, ws.Signal())
}
