package odmr

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseAccounts(t *testing.T) {
	a, err := ParseAccounts(strings.NewReader(`# customers
alice  s3cret   example.org,Example.COM.

bob	pw	example.net
`))
	require.NoError(t, err)
	require.Len(t, a, 2)
	assert.Equal(t, []string{"example.org", "example.com"}, a["alice"].Domains)
	sec, err := a.Secret(context.Background(), "bob")
	require.NoError(t, err)
	assert.Equal(t, "pw", string(sec))
	_, err = a.Secret(context.Background(), "carol")
	assert.ErrorIs(t, err, ErrUnknownUser)
	owner, ok := a.Owner("EXAMPLE.com")
	assert.True(t, ok)
	assert.Equal(t, "alice", owner.Name)
}

func TestParseAccountsErrorsNameTheLine(t *testing.T) {
	for _, tt := range []struct{ text, want string }{
		{"alice s3cret\n", "line 1: want NAME SECRET DOMAIN"},
		{"# c\nalice s3cret example.org extra\n", "line 2: want NAME SECRET DOMAIN"},
		{"alice s3cret exa_mple.org\n", "line 1: invalid domain"},
		{"alice a example.org\nalice b example.com\n", `line 2: account "alice" defined twice`},
		{"alice a example.org\nbob b example.org\n", `line 2: domain example.org already belongs to "alice"`},
	} {
		_, err := ParseAccounts(strings.NewReader(tt.text))
		assert.ErrorContains(t, err, tt.want, tt.text)
	}
}

func TestLoadAccounts(t *testing.T) {
	_, err := LoadAccounts(filepath.Join(t.TempDir(), "missing"))
	assert.ErrorContains(t, err, "no such file")
	p := filepath.Join(t.TempDir(), "accounts")
	require.NoError(t, os.WriteFile(p, []byte("x y\n"), 0o600))
	_, err = LoadAccounts(p)
	assert.ErrorContains(t, err, "line 1")
	assert.ErrorContains(t, err, p)
}
