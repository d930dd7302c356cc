package spool

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// snapshot describes every file under dir, to show that something changed
// nothing.
func snapshot(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, fmt.Sprint(path, " ", fi.Mode(), " ", fi.Size(), " ", fi.ModTime()))
		return nil
	}))
	return out
}

// TestInspectChangesNothing: Inspect reports a spool as Open would find
// it, without any of Open's repairs: a lost marker is counted but not
// restored, debris is not removed, a damaged message is reported but not
// quarantined.
func TestInspectChangesNothing(t *testing.T) {
	f := newFixture(t)
	f.enqueue("s@x.test", "hi\r\n", "a@example.org")
	com := f.enqueue("s@x.test", "hello\r\n", "b@example.com", "c@example.org")
	bad := f.enqueue("s@x.test", "hi\r\n", "d@example.net")
	require.NoError(t, f.s.Close())

	require.NoError(t, os.Remove(f.s.markerPath("example.com", com)))             // lost marker
	require.NoError(t, os.WriteFile(f.s.bodyPath(newID(time.Now())), nil, 0o600)) // orphan body
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, tmpDir, newID(time.Now().Add(-2*tmpGrace))+".tmp"), nil, 0o600))
	require.NoError(t, os.WriteFile(f.s.markerPath("example.org", newID(time.Now())), nil, 0o600)) // stale marker
	require.NoError(t, os.Truncate(f.s.bodyPath(bad), 1))                                          // damaged
	before := snapshot(t, f.dir)

	inv, err := Inspect(f.dir, nil)
	require.NoError(t, err)
	assert.Equal(t, before, snapshot(t, f.dir), "Inspect changed the spool")
	require.Len(t, inv.Domains, 2)
	assert.Equal(t, "example.com", inv.Domains[0].Domain)
	assert.Equal(t, 1, inv.Domains[0].Messages)
	assert.Equal(t, "example.org", inv.Domains[1].Domain)
	assert.Equal(t, 2, inv.Domains[1].Messages)
	assert.Equal(t, 2, inv.Messages)
	assert.Equal(t, int64(len("hi\r\n")+len("hello\r\n")), inv.Bytes)
	require.Len(t, inv.Damaged, 1)
	assert.Equal(t, bad, inv.Damaged[0].ID)
	assert.Contains(t, inv.Damaged[0].Reason, "body has 1 bytes")
	assert.Empty(t, inv.Quarantined)

	// Open does the repairs Inspect left alone.
	f.open().Close()
	assert.FileExists(t, f.s.markerPath("example.com", com))
	assert.FileExists(t, filepath.Join(f.dir, quarantineDir, bad+".eml"))
	inv, err = Inspect(f.dir, nil)
	require.NoError(t, err)
	assert.Empty(t, inv.Damaged)
	require.Len(t, inv.Quarantined, 1)
}

// TestInspectNotASpool: Inspect creates nothing where there is no spool.
func TestInspectNotASpool(t *testing.T) {
	dir := t.TempDir()
	_, err := Inspect(dir, nil)
	assert.ErrorIs(t, err, ErrNotSpool)
	names, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, names)
	_, err = Inspect(filepath.Join(dir, "missing"), nil)
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.NoDirExists(t, filepath.Join(dir, "missing"))
}
