package odmr

import (
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pipeSession runs p.Serve over net.Pipe inside the caller's synctest
// bubble, so timeouts run on the bubble's fake clock: a slow machine
// cannot make them fire early or late. It returns the customer's end,
// past the greeting, for a provider with p's timeouts and one account, and a channel that yields Serve's result.
func pipeSession(t *testing.T, p *Provider) (*textproto.Conn, net.Conn, chan error) {
	t.Helper()
	accts := testAccounts{testUser: {Name: testUser, Secret: testSecret, Domains: []string{"example.org"}}}
	p.Hostname, p.Authenticator, p.Authorizer, p.Queue = "provider.test", accts, accts, newMemQueue()
	p.Logger = slog.New(slog.DiscardHandler)
	cli, srv := net.Pipe()
	served := make(chan error, 1)
	go func() { served <- p.Serve(srv) }()
	t.Cleanup(func() { cli.Close() })
	tp := textproto.NewConn(cli)
	_, _, err := tp.ReadResponse(220)
	require.NoError(t, err)
	return tp, cli, served
}

func TestIdleTimeoutIs421(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &Provider{CommandTimeout: 100 * time.Millisecond}
		tp, _, served := pipeSession(t, p)
		start := time.Now()
		code, msg, err := tp.ReadResponse(421)
		require.NoError(t, err, "%d %s", code, msg)
		assert.Contains(t, msg, "timeout")
		assert.Equal(t, 100*time.Millisecond, time.Since(start), "the timeout, on the bubble's clock")
		_, err = tp.ReadLine()
		assert.Error(t, err, "the session is closed after the 421")
		<-served
	})
}

func TestTricklingClientIsCutOffAtIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &Provider{CommandTimeout: 300 * time.Millisecond}
		tp, cli, served := pipeSession(t, p)
		start := time.Now()
		trickled := make(chan struct{})
		go func() {
			defer close(trickled)
			// One byte every 50ms, never a whole line: each byte read
			// must not restart the command's deadline.
			for {
				if _, err := cli.Write([]byte("N")); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
		line, err := tp.ReadLine()
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(line, "421 4.4.2"), line)
		assert.Equal(t, 300*time.Millisecond, time.Since(start), "cut off at the command timeout, on the bubble's clock")
		cli.Close()
		<-served
		// Wait for the trickler to see the closed pipe: the bubble's
		// main goroutine must not return while it sleeps.
		<-trickled
	})
}
