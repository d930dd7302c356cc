//go:build unix

package spool

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// noHang runs fn and fails the test if it has not returned after a
// minute: a FIFO opened for reading waits for a writer forever.
func noHang(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%s hangs on a FIFO", what)
	}
}

// FIFOs (or any file that is not a regular file) named like the spool's
// files are skipped and logged, never opened for reading: opening one
// would wait for a writer forever, at Open, in List, in a session.
func TestNonRegularFilesDoNotHang(t *testing.T) {
	f := newFixture(t)
	good := f.enqueue("s@origin.test", "Subject: good\r\n\r\ntext\r\n", "a@example.org")
	fifoBody := f.enqueue("s@origin.test", "Subject: fifo\r\n\r\ntext\r\n", "b@example.org")
	require.NoError(t, f.s.Close())

	old := newID(time.Now().Add(-2 * tmpGrace))
	mkfifo := func(path string) {
		t.Helper()
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o700))
		require.NoError(t, syscall.Mkfifo(path, 0o600))
	}
	require.NoError(t, os.Remove(f.s.bodyPath(fifoBody)))
	mkfifo(f.s.bodyPath(fifoBody))                                  // the body of a queued message
	mkfifo(f.s.envPath(newID(time.Now())))                          // an envelope
	mkfifo(f.s.bodyPath(newID(time.Now())))                         // a body without envelope
	mkfifo(f.s.markerPath("example.org", newID(time.Now())))        // a marker
	mkfifo(f.s.markerPath("example.com", newID(time.Now())))        // the only marker of a domain
	mkfifo(filepath.Join(f.dir, tmpDir, old+".eml"))                // old debris
	mkfifo(filepath.Join(f.dir, dsnDir, newID(time.Now())+".json")) // a DSN
	mkfifo(filepath.Join(f.dir, dsnDir, newID(time.Now())+".eml"))  // a DSN's text

	noHang(t, "Open", func() { f.s = f.open() })
	noHang(t, "List", func() {
		stats, err := f.s.List()
		require.NoError(t, err)
		require.Len(t, stats, 1)
		assert.Equal(t, 1, stats[0].Messages, "the good message; the FIFO envelope is not a queued one")
	})
	noHang(t, "HasMail", func() {
		assert.True(t, has(t, f.s, "example.org"))
		assert.False(t, has(t, f.s, "example.com"), "a FIFO is not a marker")
	})
	noHang(t, "FlushBounces", func() { f.s.FlushBounces(context.Background()) })
	noHang(t, "a session", func() {
		got := drain(t, f.s, "example.org", "example.com")
		require.Len(t, got, 1)
		assert.Equal(t, good, got[0].env.ID)
	})
	q, err := f.s.Quarantined()
	require.NoError(t, err)
	require.Len(t, q, 1)
	assert.Equal(t, fifoBody, q[0].ID)
	assert.Contains(t, q[0].Reason, "not a regular file")
	assert.Contains(t, f.logs.String(), "not a regular file")

	// The layout file is the spool's own: a FIFO there is an error, not a
	// hang.
	require.NoError(t, f.s.Close())
	layout := filepath.Join(f.dir, layoutFile)
	require.NoError(t, os.Remove(layout))
	mkfifo(layout)
	noHang(t, "Open with a FIFO for spool.json", func() {
		_, err := Open(f.dir, f.options())
		assert.ErrorContains(t, err, "not a regular file")
	})
}
