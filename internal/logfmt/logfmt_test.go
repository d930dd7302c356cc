package logfmt

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func TestSignalName(t *testing.T) {
	for sig, want := range map[os.Signal]string{
		syscall.SIGTERM: "SIGTERM", syscall.SIGINT: "SIGINT", syscall.SIGHUP: "SIGHUP", os.Interrupt: "SIGINT",
	} {
		if got := SignalName(sig); got != want {
			t.Errorf("SignalName(%v) = %q, want %q", sig, got, want)
		}
	}
}

// TestLockedWriter: writes from several goroutines arrive whole.
func TestLockedWriter(t *testing.T) {
	var buf bytes.Buffer
	w := &LockedWriter{W: &buf}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				w.Write([]byte("one whole line\n"))
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 800 {
		t.Fatalf("%d lines, want 800", len(lines))
	}
	for _, l := range lines {
		if l != "one whole line" {
			t.Fatalf("torn line %q", l)
		}
	}
}
