package odmr

import (
	"encoding/base64"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/saslmech"
)

// authSCRAM runs a SCRAM exchange by hand and returns the final reply code.
func (c *client) authSCRAM(mech, user, pass string) int {
	c.t.Helper()
	sc := saslmech.NewSCRAMClient(mech, user, pass)
	_, first, err := sc.Start()
	require.NoError(c.t, err)
	serverFirst := c.cmd(334, "AUTH "+mech+" "+base64.StdEncoding.EncodeToString(first))
	raw, err := base64.StdEncoding.DecodeString(serverFirst)
	require.NoError(c.t, err)
	final, err := sc.Next(raw)
	require.NoError(c.t, err)
	require.NoError(c.t, c.tp.PrintfLine("%s", base64.StdEncoding.EncodeToString(final)))
	code, msg, err := c.tp.ReadResponse(0)
	require.NoError(c.t, err)
	if code != 334 {
		return code
	}
	// The server's final message comes in a 334; the client checks the
	// server signature and answers with an empty line.
	raw, err = base64.StdEncoding.DecodeString(msg)
	require.NoError(c.t, err)
	empty, err := sc.Next(raw)
	require.NoError(c.t, err)
	require.Empty(c.t, empty)
	require.NoError(c.t, c.tp.PrintfLine(""))
	code, _, err = c.tp.ReadResponse(0)
	require.NoError(c.t, err)
	return code
}

func TestSCRAMWithSharedSecret(t *testing.T) {
	f := newFixture(t)
	for _, mech := range []string{SCRAMSHA256, SCRAMSHA1} {
		t.Run(mech, func(t *testing.T) {
			c := f.dial(t)
			c.t = t
			c.cmd(250, "EHLO customer.test")
			assert.Equal(t, 535, c.authSCRAM(mech, testUser, "wrong password"))
			assert.Equal(t, 235, c.authSCRAM(mech, testUser, testSecret))
			c.cmd(453, "ATRN")
		})
	}
}

func TestSCRAMUnknownUserFailsOnlyAtTheProof(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	// authSCRAM requires the 334 server-first: an unknown user gets one too.
	assert.Equal(t, 535, c.authSCRAM(SCRAMSHA256, "nobody", "x"))
}

func TestSCRAMWithGoSMTPClient(t *testing.T) {
	f := newFixture(t)
	conn, err := net.Dial("tcp", f.addr)
	require.NoError(t, err)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := smtp.NewClient(conn)
	defer c.Close()
	require.NoError(t, c.Hello("customer.test"))
	require.True(t, c.SupportsAuth(SCRAMSHA256))
	require.NoError(t, c.Auth(saslmech.NewSCRAMClient(SCRAMSHA256, testUser, testSecret)))
}

func TestSCRAMClientRejectsImpostorServer(t *testing.T) {
	// A server that knows only the stored key of another password cannot
	// produce the right server signature.
	creds, err := NewSCRAMCredentials(SCRAMSHA256, testUser, "other password", 0)
	require.NoError(t, err)
	var user string
	srv, err := newSCRAMServer(SCRAMSHA256, &user, func(string) (SCRAMCredentials, error) { return creds, nil })
	require.NoError(t, err)
	cl := saslmech.NewSCRAMClient(SCRAMSHA256, testUser, testSecret)
	_, first, _ := cl.Start()
	serverFirst, _, err := srv.Next(first)
	require.NoError(t, err)
	final, err := cl.Next(serverFirst)
	require.NoError(t, err)
	_, _, err = srv.Next(final)
	assert.ErrorIs(t, err, ErrAuthFailed)
}

func TestStoredSCRAMCredentials(t *testing.T) {
	creds, err := NewSCRAMCredentials(SCRAMSHA256, "carol", "carols-password", 0)
	require.NoError(t, err)
	parsed, err := ParseSCRAMCredentials(creds.String())
	require.NoError(t, err)
	assert.Equal(t, creds, parsed)
	assert.True(t, strings.HasPrefix(creds.String(), "SCRAM-SHA-256$4096:"))

	accts := testAccounts{"carol": {Name: "carol", SCRAM: []SCRAMCredentials{creds}, Domains: []string{"example.org"}}}
	f := newFixture(t, func(p *Provider) {
		p.Authenticator, p.Authorizer = accts, accts
		p.AllowInsecureAuth = true
	})
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	// CRAM-MD5 needs the secret itself, which the store no longer has.
	c.authCRAM("carol", "carols-password", 535)
	assert.Contains(t, f.logs.String(), "authentication failed: no CRAM-MD5 secret stored for this account")
	assert.Equal(t, 535, c.authSCRAM(SCRAMSHA256, "carol", "wrong"))
	// SCRAM-SHA-1 has no stored credentials for carol.
	assert.Equal(t, 535, c.authSCRAM(SCRAMSHA1, "carol", "carols-password"))

	c = f.dial(t)
	c.cmd(250, "EHLO customer.test")
	assert.Equal(t, 235, c.authSCRAM(SCRAMSHA256, "carol", "carols-password"))

	// PLAIN is checked against the stored key.
	c = f.dial(t)
	c.cmd(250, "EHLO customer.test")
	c.cmd(535, "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00carol\x00wrong")))
	c.cmd(235, "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00carol\x00carols-password")))
}

func TestParseSCRAMCredentialsRejects(t *testing.T) {
	good, _ := NewSCRAMCredentials(SCRAMSHA256, "u", "p", 0)
	parts := strings.Split(good.String(), "$")
	for _, s := range []string{
		"",
		"SCRAM-SHA-256",
		"SCRAM-MD5$4096:c2FsdA==$" + parts[2],
		"SCRAM-SHA-256$0:" + strings.SplitN(parts[1], ":", 2)[1] + "$" + parts[2],
		"SCRAM-SHA-256$4096$" + parts[2],
		"SCRAM-SHA-256$" + parts[1] + "$AAAA:AAAA",
		"SCRAM-SHA-256$" + parts[1] + "$!!!:" + strings.Split(parts[2], ":")[1],
	} {
		_, err := ParseSCRAMCredentials(s)
		assert.Error(t, err, s)
	}
}
