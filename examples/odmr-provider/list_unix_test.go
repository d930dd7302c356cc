//go:build unix

package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/spool"
)

// TestListSurvivesADamagedSpool: -list neither hangs on a FIFO named like
// a spool file nor hides a damaged message: it shows it as damaged, and
// leaves it where it is for the provider to quarantine.
func TestListSurvivesADamagedSpool(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	var ids []string
	for _, to := range []string{"a@example.org", "b@example.org"} {
		id, err := s.Enqueue(context.Background(), odmr.Envelope{From: "s@x.test", To: []string{to}}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.NoError(t, s.Close())
	require.NoError(t, os.Truncate(filepath.Join(dir, "queue", ids[1]+".eml"), 4))
	fake := fmt.Sprintf("%016x%012x", time.Now().UnixNano(), 1)
	require.NoError(t, syscall.Mkfifo(filepath.Join(dir, "queue", fake+".json"), 0o600))
	require.NoError(t, syscall.Mkfifo(filepath.Join(dir, "domains", "example.org", fake), 0o600))

	var out strings.Builder
	done := make(chan error, 1)
	go func() { done <- listSpool(dir, &out, time.Now(), slog.New(slog.DiscardHandler)) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatal("-list hangs on a FIFO")
	}
	assert.Regexp(t, `example\.org\s+1\s+\d+`, out.String())
	assert.Contains(t, out.String(), "1 damaged message in "+filepath.Join(dir, "queue")+", to be quarantined")
	assert.Contains(t, out.String(), ids[1])
	assert.Contains(t, out.String(), "body has 4 bytes")
	assert.FileExists(t, filepath.Join(dir, "queue", ids[1]+".eml"), "-list moved a damaged message")
	assert.NoFileExists(t, filepath.Join(dir, "quarantine", ids[1]+".eml"))
	t.Log("\n" + out.String())
}
