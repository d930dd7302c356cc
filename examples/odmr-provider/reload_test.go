package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/accounts"
)

// TestAccountsFileModeWarning checks the warning about a readable accounts
// file: deploy/systemd installs it mode 0640, owner root, group odmr, so
// that the provider reads it through its group; that must not be warned
// about at every start and reload, while a file every user may read is.
func TestAccountsFileModeWarning(t *testing.T) {
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{
		{0o600, false},
		{0o640, false}, // the documented service setup
		{0o644, true},
		{0o602, true},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "accounts")
			require.NoError(t, os.WriteFile(path, []byte("alice s3cret example.org\n"), 0o600))
			require.NoError(t, os.Chmod(path, tc.mode))
			var buf bytes.Buffer
			a, err := loadAccounts(path, slog.New(slog.NewTextHandler(&buf, nil)))
			require.NoError(t, err)
			assert.Len(t, a, 1)
			if tc.warn {
				assert.Contains(t, buf.String(), "level=WARN")
				assert.Contains(t, buf.String(), "others may read it")
			} else {
				assert.Empty(t, buf.String())
			}
			assert.NotContains(t, buf.String(), "s3cret")
		})
	}
}

// TestAccountStoreOwner: the store's index of domains answers as
// accounts.Map.Owner does, whatever the form of the domain, and follows
// a reload.
func TestAccountStoreOwner(t *testing.T) {
	m := accounts.Map{"alice": {Name: "alice", Domains: []string{"Example.ORG", "bücher.example"}}}
	s := newAccountStore(m)
	for _, d := range []string{"example.org", "EXAMPLE.org.", "xn--bcher-kva.example", "BÜCHER.example", "nope.example"} {
		want, wantOK := m.Owner(d)
		got, ok := s.Owner(d)
		assert.Equal(t, wantOK, ok, d)
		assert.Equal(t, want.Name, got.Name, d)
	}
	_, ok := s.Owner("example.org")
	assert.True(t, ok)
	s.store(accounts.Map{"bob": {Name: "bob", Domains: []string{"example.net"}}})
	_, ok = s.Owner("example.org")
	assert.False(t, ok, "gone with the reload")
	got, ok := s.Owner("example.net")
	assert.True(t, ok)
	assert.Equal(t, "bob", got.Name)
}
