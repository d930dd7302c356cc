package accounts

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

func TestParseAccounts(t *testing.T) {
	a, err := Parse(strings.NewReader(`# customers
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
	assert.ErrorIs(t, err, odmr.ErrUnknownUser)
	owner, ok := a.Owner("EXAMPLE.com")
	assert.True(t, ok)
	assert.Equal(t, "alice", owner.Name)
}

// TestParseAccountsErrorsNameTheLine: each error names the line and,
// once the line has its three fields, the account, in the terms of the
// file (not of ATRN, whose parser checks the domains).
func TestParseAccountsErrorsNameTheLine(t *testing.T) {
	many := strings.Repeat("d.example,", 256) + "d.example"
	for _, tt := range []struct{ text, want string }{
		{"alice s3cret\n", "odmr: accounts line 1: want NAME SECRET DOMAIN"},
		{"# c\nalice s3cret example.org extra\n", "accounts line 2: want NAME SECRET DOMAIN"},
		// A line cut in two: its first field may be the secret,
		// which must not be echoed.
		{"s3cret example.org\n", "accounts line 1: want NAME SECRET DOMAIN[,DOMAIN...], found 2 fields"},
		{"alice s3cret exa_mple.org\n", `accounts line 1: account "alice": invalid domain "exa_mple.org"`},
		{"alice s3cret example.org,,example.com\n", `accounts line 1: account "alice": empty domain 2 of 3 in "example.org,,example.com" (two commas in a row, or one at an end)`},
		{"alice s3cret example.org,\n", `accounts line 1: account "alice": empty domain 2 of 2`},
		{"alice s3cret ,\n", `accounts line 1: account "alice": empty domain 1 of 2`},
		{"alice s3cret " + many + "\n", `accounts line 1: account "alice": 257 domains, at most 256 are allowed`},
		{"alice s3cret b\xfccher.example\n", `accounts line 1: account "alice": invalid domain`},
		{"alice s3cret bü$cher.example\n", `accounts line 1: account "alice": invalid internationalized domain`},
		{"alice a example.org\nalice b example.com\n", `accounts line 2: account "alice": defined twice`},
		{"alice a example.org\nbob b example.org\n", `accounts line 2: account "bob": domain example.org already belongs to account "alice"`},
		// The same domain however it is written.
		{"alice a Bücher.Example\nbob b xn--bcher-kva.example.\n", `accounts line 2: account "bob": domain xn--bcher-kva.example already belongs to account "alice"`},
		{"carol SCRAM-SHA-256$x example.org\n", `accounts line 1: account "carol": malformed SCRAM credentials`},
	} {
		_, err := Parse(strings.NewReader(tt.text))
		require.Error(t, err, tt.text)
		assert.Contains(t, err.Error(), tt.want, tt.text)
		assert.NotContains(t, err.Error(), "ATRN", tt.text)
		assert.NotContains(t, err.Error(), "s3cret", "no secret in an error")
	}
}

func TestLoadAccounts(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing"))
	assert.ErrorContains(t, err, "no such file")
	p := filepath.Join(t.TempDir(), "accounts")
	require.NoError(t, os.WriteFile(p, []byte("x y\n"), 0o600))
	_, err = Load(p)
	assert.ErrorContains(t, err, "odmr: "+p+":1: want NAME SECRET DOMAIN")
	require.NoError(t, os.WriteFile(p, []byte("# c\nalice s3cret example.org,,example.com\n"), 0o600))
	_, err = Load(p)
	assert.ErrorContains(t, err, "odmr: "+p+`:2: account "alice": empty domain 2 of 3`)
}

func TestOwnerIDN(t *testing.T) {
	// An account may list a domain in either form; both forms find it.
	accts := Map{"a": {Name: "a", Domains: []string{"bücher.example"}}}
	for _, d := range []string{"bücher.example", "xn--bcher-kva.example", "XN--BCHER-KVA.EXAMPLE"} {
		_, ok := accts.Owner(d)
		assert.True(t, ok, d)
	}
	parsed, err := Parse(strings.NewReader("b s3cret bücher.example,example.org\n"))
	require.NoError(t, err)
	assert.Equal(t, []string{"xn--bcher-kva.example", "example.org"}, parsed["b"].Domains)
}

func TestParseAccountsSCRAMCredentials(t *testing.T) {
	creds, err := odmr.NewSCRAMCredentials(odmr.SCRAMSHA256, "carol", "carols-password", 0)
	require.NoError(t, err)
	accts, err := Parse(strings.NewReader("carol " + creds.String() + " example.org\n"))
	require.NoError(t, err)
	assert.Empty(t, accts["carol"].Secret, "the file holds no password")
	_, err = accts.Secret(context.Background(), "carol")
	assert.ErrorIs(t, err, odmr.ErrNoSecret)
	got, err := accts.SCRAMCredentials(context.Background(), odmr.SCRAMSHA256, "carol")
	require.NoError(t, err)
	assert.Equal(t, creds, got)
	_, err = accts.SCRAMCredentials(context.Background(), odmr.SCRAMSHA1, "carol")
	assert.ErrorIs(t, err, odmr.ErrNoSecret)

	_, err = Parse(strings.NewReader("carol SCRAM-SHA-256$x example.org\n"))
	assert.ErrorContains(t, err, `line 1: account "carol": malformed SCRAM credentials`)
}
