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
