package spool

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLockedFilesParsesProcLocks: the flock(2) locks held count; POSIX
// locks, leases and the lines of waiters ("->") do not.
func TestLockedFilesParsesProcLocks(t *testing.T) {
	table := filepath.Join(t.TempDir(), "locks")
	require.NoError(t, os.WriteFile(table, []byte(""+
		"1: FLOCK  ADVISORY  WRITE 4164 fe:00:5326336 0 EOF\n"+
		"1: -> FLOCK  ADVISORY  WRITE 4170 fe:00:777 0 EOF\n"+
		"2: POSIX  ADVISORY  WRITE 812 00:19:1234 0 EOF\n"+
		"3: FLOCK  ADVISORY  WRITE 900 103:0a:42 0 EOF\n"+
		"4: LEASE  ACTIVE    READ 1000 fe:00:99 0 EOF\n"+
		"garbage\n"), 0o600))
	old := procLocks
	procLocks = table
	defer func() { procLocks = old }()
	got, ok := lockedFiles()
	require.True(t, ok)
	assert.Equal(t, map[fileKey]bool{{0xfe, 0, 5326336}: true, {0x103, 0x0a, 42}: true}, got)

	procLocks = filepath.Join(t.TempDir(), "none")
	_, ok = lockedFiles()
	assert.False(t, ok)
}

// TestKeyOfFileMatchesProcLocks: a file this process locks is found in
// the kernel's table under the key keyOfFile gives it.
func TestKeyOfFileMatchesProcLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	f, busy, err := lockPath(path)
	require.NoError(t, err)
	require.False(t, busy)
	defer f.Close()
	k, ok := keyOfFile(path)
	require.True(t, ok)
	locked, ok := lockedFiles()
	if !ok {
		t.Skip("/proc/locks cannot be read here")
	}
	assert.True(t, locked[k], "%+v not in the table", k)
}

// TestLeaseViewOtherDevice: where the kernel's table names a device that
// stat(2) does not give (a btrfs subvolume, overlayfs), a lock on the
// marker's inode still marks it; where locks on the marker's own device
// are listed, the device and inode must both match.
func TestLeaseViewOtherDevice(t *testing.T) {
	k := fileKey{0x103, 0x0a, 42}
	for _, c := range []struct {
		name   string
		locked []fileKey
		want   bool
	}{
		{"same device and inode", []fileKey{k}, true},
		{"another device, same inode", []fileKey{{0, 0x2f, 42}}, true},
		{"another device, another inode", []fileKey{{0, 0x2f, 43}}, false},
		{"same device, another inode; same inode elsewhere", []fileKey{{0x103, 0x0a, 7}, {0, 0x2f, 42}}, false},
		{"no locks", nil, false},
	} {
		locked := make(map[fileKey]bool)
		for _, l := range c.locked {
			locked[l] = true
		}
		assert.Equal(t, c.want, newLeaseView(nil, locked).isLocked(k), c.name)
	}
}
