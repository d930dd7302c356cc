package main

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/spool"
)

// TestQueueToolsShowHostileContent: senders choose the envelope and the
// headers; the tools print them without the control characters (C0, C1)
// and bidi overrides that would drive the operator's terminal or forge
// lines of a listing, and without bytes that are not UTF-8.
func TestQueueToolsShowHostileContent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1, Hostname: "prov.test", Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	huge := strings.Repeat("A", 100<<10)
	id, err := s.Enqueue(context.Background(), odmr.Envelope{
		From: "x\u009b2J\u0085@evil.test",
		To:   []string{"\u202egpj.exe@example.org", "\xff\xfe@example.org"},
		DSN:  &odmr.DSN{EnvID: "e\x1b[2Jnv"},
	}, strings.NewReader("Subject: \u009b31m\u2067hi\r\nX-Big: "+huge+"\r\n\r\nbody\r\n"))
	require.NoError(t, err)
	require.NoError(t, s.Close())

	list, err := queueTool(t, "", time.Now(), "-spool", dir, "-queue-list")
	require.NoError(t, err)
	show, err := queueTool(t, "", time.Now(), "-spool", dir, "-queue-show", id)
	require.NoError(t, err)
	for name, out := range map[string]string{"-queue-list": list, "-queue-show": show} {
		for _, bad := range []string{"\x1b", "\u0085", "\u009b", "\u202e", "\u2067", "\xff"} {
			assert.NotContains(t, out, bad, "%s prints %q", name, bad)
		}
	}
	assert.Contains(t, list, "<x?2J?@evil.test>")
	assert.Contains(t, list, "<?gpj.exe@example.org>")
	assert.Contains(t, show, "from: <x?2J?@evil.test>\n")
	assert.Contains(t, show, "to: <\ufffd\ufffd@example.org>")
	assert.Contains(t, show, "envid=e?[2Jnv")
	assert.Contains(t, show, "Subject: ?31m?hi\n")
	assert.Less(t, len(show), 70<<10, "-queue-show prints at most 64 KiB of header")
}

// TestQueueToolsRefusePathsAsIDs: an ID is a name in the spool, never a
// path: "-queue-show ../../etc/passwd" reads nothing outside the spool,
// and "-queue-delete ../victim" removes nothing.
func TestQueueToolsRefusePathsAsIDs(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "spool")
	s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	victim := filepath.Join(root, "victim")
	for _, name := range []string{victim, victim + ".eml", victim + ".json"} {
		require.NoError(t, os.WriteFile(name, []byte("Subject: secret\r\n\r\n"), 0o600))
	}
	for _, id := range []string{"../../victim", "../victim", victim, "..", "queue/../../victim"} {
		out, err := queueTool(t, "", time.Now(), "-spool", dir, "-queue-show", id)
		assert.ErrorContains(t, err, "no such message", id)
		assert.NotContains(t, out, "secret")
		for _, tool := range []string{"-queue-delete", "-queue-bounce", "-queue-hold", "-queue-release"} {
			_, err := queueTool(t, "", time.Now(), "-spool", dir, tool, id)
			assert.ErrorContains(t, err, "no such message", "%s %s", tool, id)
		}
	}
	for _, name := range []string{victim, victim + ".eml", victim + ".json"} {
		assert.FileExists(t, name)
	}
}

// TestQueueToolErrorsEachNameTheProgram: several unknown IDs give a line
// each, every one starting with the program's name, as scripts grepping
// standard error expect.
func TestQueueToolErrorsEachNameTheProgram(t *testing.T) {
	bin, _ := buildProvider(t)
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	cmd := exec.Command(bin, "-spool", dir, "-queue-delete", "nosuch1", "nosuch2", "odmr: x")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.Error(t, cmd.Run())
	assert.Equal(t, "odmr-provider: -queue-delete nosuch1: no such message in the queue\n"+
		"odmr-provider: -queue-delete nosuch2: no such message in the queue\n"+
		"odmr-provider: -queue-delete odmr: x: no such message in the queue\n", stderr.String())
}
