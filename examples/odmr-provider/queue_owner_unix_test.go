//go:build unix

package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/spool"
)

// TestQueueToolsRefuseAnotherUsersSpool: run as root on the spool of a
// provider that runs as its own user (deploy/systemd), -queue-hold and
// -queue-release left root's files in it, mode 0600, and the provider
// could no longer deliver the message ("a marker that cannot be
// locked"). The tools that write now refuse, naming the owner; those
// that only read still work.
func TestQueueToolsRefuseAnotherUsersSpool(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to give the spool to another user")
	}
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, 65534, 65534)
	}))
	for _, tool := range []string{"-queue-hold", "-queue-release", "-queue-delete", "-queue-bounce"} {
		_, err := queueTool(t, "", time.Now(), "-spool", dir, tool, "ALL")
		require.Error(t, err, tool)
		assert.Contains(t, err.Error(), tool+" -spool "+dir+": the spool belongs to user ")
		assert.Contains(t, err.Error(), "run the tool as that user")
	}
	out, err := queueTool(t, "", time.Now(), "-spool", dir, "-queue-list")
	require.NoError(t, err)
	assert.True(t, strings.HasSuffix(out, "0 messages, 0 B in all\n"), out)
	require.NoError(t, filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err == nil && fi.Sys() != nil {
			assert.Equal(t, 65534, int(fileUID(fi)), "%s belongs to another user", path)
		}
		return err
	}))
}

func fileUID(fi os.FileInfo) uint32 { return fi.Sys().(*syscall.Stat_t).Uid }
