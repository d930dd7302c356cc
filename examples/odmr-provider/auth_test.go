package main

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/saslmech"
)

// cramFrom connects to addr from the loopback address local and tries one
// CRAM-MD5 login; it returns the reply to it.
func cramFrom(t *testing.T, addr, local, user, secret string) (int, string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(conn)
	_, _, err = tp.ReadResponse(220)
	require.NoError(t, err)
	require.NoError(t, tp.PrintfLine("EHLO customer.test"))
	_, _, err = tp.ReadResponse(250)
	require.NoError(t, err)
	require.NoError(t, tp.PrintfLine("AUTH CRAM-MD5"))
	code, msg, err := tp.ReadResponse(0)
	require.NoError(t, err)
	if code != 334 {
		return code, msg
	}
	chal, err := base64.StdEncoding.DecodeString(msg)
	require.NoError(t, err)
	resp, err := saslmech.NewCRAMMD5Client(user, secret).Next(chal)
	require.NoError(t, err)
	require.NoError(t, tp.PrintfLine("%s", base64.StdEncoding.EncodeToString(resp)))
	code, msg, err = tp.ReadResponse(0)
	require.NoError(t, err)
	tp.PrintfLine("QUIT")
	return code, msg
}

// TestAuthLimitsProcess attacks the program over real TCP from many
// loopback addresses: guesses at the customer's secret are bounded, a
// right guess is refused like a wrong one, and the customer still gets in
// from its usual address. The guesses do not come back during the test
// (-auth-guess-interval 1h), so that its bounds are exact.
func TestAuthLimitsProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the program")
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		c, err := d.Dial("tcp", l.Addr().String())
		l.Close()
		if err != nil {
			t.Skipf("cannot use loopback source addresses: %v", err)
		}
		c.Close()
	}

	bin, accts := buildProvider(t)
	cmd := exec.Command(bin, "-accounts", accts, "-listen", "127.0.0.1:0", "-smtp", "", "-hostname", "prov.test", "-auth-guess-interval", "1h")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer cmd.Process.Kill()
	addr := listenAddr(t, watchLog(stderr).wait(t, "ODMR listening"))

	// The customer's usual address.
	code, msg := cramFrom(t, addr, "127.0.0.200", "alice", "s3cret")
	require.Equal(t, 235, code, msg)

	checked := 0
	for i := range 60 {
		code, msg := cramFrom(t, addr, fmt.Sprintf("127.0.1.%d", i+1), "alice", fmt.Sprint("guess", i))
		switch code {
		case 535:
			checked++
		case 454:
		default:
			t.Fatalf("guess %d: %d %s", i, code, msg)
		}
	}
	assert.Equal(t, defaults.AuthGuessBurst, checked, "secrets checked out of 60 guesses")

	// A right guess from an attacking address gets the same reply as a
	// wrong one.
	wrongCode, wrongMsg := cramFrom(t, addr, "127.0.1.1", "alice", "guess-again")
	rightCode, rightMsg := cramFrom(t, addr, "127.0.1.1", "alice", "s3cret")
	assert.Equal(t, 454, wrongCode, wrongMsg)
	assert.Equal(t, fmt.Sprint(wrongCode, wrongMsg), fmt.Sprint(rightCode, rightMsg))

	code, msg = cramFrom(t, addr, "127.0.0.200", "alice", "s3cret")
	assert.Equal(t, 235, code, msg)
}

func TestAuthFlags(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	require.NoError(t, os.WriteFile(key, []byte("0123456789abcdef-cluster"), 0o600))
	c, err := parseFlags([]string{"-accounts", "x", "-auth-failures", "3", "-auth-backoff", "2s",
		"-auth-max-backoff", "1m", "-auth-guess-interval", "1m", "-auth-guess-burst", "4",
		"-auth-limiter-entries", "500", "-auth-logs-per-second", "-1", "-scram-salt-key", key, "-scram-cache-size", "7"})
	require.NoError(t, err)
	var p odmr.Provider
	require.NoError(t, c.auth.apply(&p))
	assert.Equal(t, []any{3, 2 * time.Second, time.Minute, time.Minute, 4, 500, -1, "0123456789abcdef-cluster", 7},
		[]any{p.AuthFailuresAllowed, p.AuthBackoff, p.MaxAuthBackoff, p.AuthGuessInterval, p.AuthGuessBurst,
			p.AuthLimiterEntries, p.AuthLogsPerSecond, string(p.SCRAMSaltKey), p.SCRAMCacheSize})

	c, err = parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	assert.Equal(t, defaults.AuthGuessBurst, c.auth.guessBurst)
	require.NoError(t, os.WriteFile(key, []byte("short"), 0o600))
	c.auth.scramSaltKeyFile = key
	assert.ErrorContains(t, c.auth.apply(&p), "fewer than 16 bytes")
}
