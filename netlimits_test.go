package odmr

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/saslmech"
)

// pipeDial serves one pipe connection from remote ("" for the pipe's own
// address) and returns the client end once it has read the first reply.
func pipeDial(t *testing.T, p *Provider, remote string, wantCode int) (*client, string) {
	t.Helper()
	server, conn := net.Pipe()
	var sc net.Conn = server
	if remote != "" {
		sc = addrConn{server, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(remote))}
	}
	go p.Serve(sc)
	c := &client{t: t, conn: conn, tp: textproto.NewConn(conn)}
	t.Cleanup(func() { conn.Close() })
	return c, c.expect(wantCode)
}

// TestAuthTimeoutEndsAnonymousSessions: a session that keeps itself alive
// with NOOPs but never authenticates is closed after AuthTimeout (it
// used to live up to SessionTimeout, 15 minutes); one that authenticated
// is not.
func TestAuthTimeoutEndsAnonymousSessions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := pipeProvider(io.Discard)
		defer p.Close()
		start := time.Now()
		anon, _ := pipeDial(t, p, "192.0.2.1:1000", 220)
		customer, _ := pipeDial(t, p, "192.0.2.2:1000", 220)
		customer.login()
		for time.Since(start) < defaults.AuthTimeout-10*time.Second {
			time.Sleep(10 * time.Second)
			anon.cmd(250, "NOOP")
			customer.cmd(250, "NOOP")
		}
		// net.Pipe does not buffer: read the 421 rather than write into it.
		msg := anon.expect(421)
		assert.Contains(t, msg, "4.7.0 Authentication took too long")
		assert.Equal(t, defaults.AuthTimeout, time.Since(start), "fake time is exact")
		anon.expectClosed()
		customer.cmd(250, "NOOP")
	})
}

// TestAuthTimeoutCutsAnSASLExchange: the limit applies inside AUTH too.
func TestAuthTimeoutCutsAnSASLExchange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := pipeProvider(io.Discard, func(p *Provider) { p.AuthTimeout = 30 * time.Second })
		defer p.Close()
		c, _ := pipeDial(t, p, "", 220)
		c.cmd(250, "EHLO customer.test")
		c.cmd(334, "AUTH CRAM-MD5")
		time.Sleep(31 * time.Second)
		assert.Contains(t, c.expect(421), "Authentication took too long")
	})
}

// TestAuthTimeoutBoundsCredentialLookups: a credential store that does
// not answer (a database that hangs rather than refuses) gets a context
// that ends at the authentication deadline, so the session answers 454
// and closes with 421 at AuthTimeout instead of waiting with the store:
// such sessions used to pile up for as long as the database hung.
func TestAuthTimeoutBoundsCredentialLookups(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hung := AuthenticatorFunc(func(ctx context.Context, _ string) ([]byte, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		})
		p := pipeProvider(io.Discard, func(p *Provider) {
			p.Authenticator = hung
			p.AllowInsecureAuth = true
			p.AuthTimeout = 30 * time.Second
		})
		defer p.Close()
		start := time.Now()
		c, _ := pipeDial(t, p, "", 220)
		c.cmd(250, "EHLO customer.test")
		ir := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + testSecret))
		c.cmd(454, "AUTH PLAIN "+ir)
		assert.Equal(t, 30*time.Second, time.Since(start), "the lookup ends at the deadline")
		assert.Contains(t, c.expect(421), "Authentication took too long")
	})
}

// TestNegativeAuthTimeoutLookupsEndWithTheSession: a negative
// AuthTimeout lifts the authentication deadline, not every bound: a
// credential store that hangs has its lookup ended at SessionTimeout,
// and the session closes then. The lookup used to get the Provider's
// context alone, so the session waited as long as the store did.
func TestNegativeAuthTimeoutLookupsEndWithTheSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hung := AuthenticatorFunc(func(ctx context.Context, _ string) ([]byte, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		})
		p := pipeProvider(io.Discard, func(p *Provider) {
			p.Authenticator = hung
			p.AllowInsecureAuth = true
			p.AuthTimeout = -1
			p.CommandTimeout = time.Hour
			p.SessionTimeout = 10 * time.Minute
		})
		defer p.Close()
		start := time.Now()
		c, _ := pipeDial(t, p, "", 220)
		c.cmd(250, "EHLO customer.test")
		ir := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + testSecret))
		c.cmd(454, "AUTH PLAIN "+ir)
		assert.Equal(t, 10*time.Minute, time.Since(start), "the lookup ends at the session's deadline")
		c.expect(421)
	})
}

// TestAuthTimeoutCutsAStalledTLSHandshake: on an implicit TLS listener
// a client that connects and sends nothing is closed at AuthTimeout; the
// handshake, which the greeting used to start with no read deadline,
// kept such a session, and its slot, for good.
func TestAuthTimeoutCutsAStalledTLSHandshake(t *testing.T) {
	newTestPKI(t)
	synctest.Test(t, func(t *testing.T) {
		p := pipeProvider(io.Discard, withTLS, func(p *Provider) { p.AuthTimeout = 30 * time.Second })
		defer p.Close()
		server, conn := net.Pipe()
		defer conn.Close()
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- p.Serve(tls.Server(server, p.TLSConfig)) }()
		assert.ErrorContains(t, <-done, "TLS handshake")
		assert.Equal(t, 30*time.Second, time.Since(start), "closed at the authentication deadline")
		_, err := conn.Read(make([]byte, 1))
		assert.ErrorIs(t, err, io.EOF)
	})
}

// TestSessionTimeoutCutsAStalledTLSHandshake: with no authentication
// deadline (a negative AuthTimeout) and a CommandTimeout longer than
// SessionTimeout, a client on an implicit TLS listener that sends
// nothing is closed at SessionTimeout, which bounds the session whatever
// the customer does; the handshake used to wait CommandTimeout.
func TestSessionTimeoutCutsAStalledTLSHandshake(t *testing.T) {
	newTestPKI(t)
	synctest.Test(t, func(t *testing.T) {
		p := pipeProvider(io.Discard, withTLS, func(p *Provider) {
			p.AuthTimeout = -1
			p.CommandTimeout = time.Hour
			p.SessionTimeout = 10 * time.Minute
		})
		defer p.Close()
		server, conn := net.Pipe()
		defer conn.Close()
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- p.Serve(tls.Server(server, p.TLSConfig)) }()
		assert.ErrorContains(t, <-done, "TLS handshake")
		assert.Equal(t, 10*time.Minute, time.Since(start), "closed at the session's deadline")
	})
}

// TestFullProviderLetsAnonymousSessionGiveWay: with every slot taken by
// sessions that have not authenticated, a newcomer is served and the
// oldest anonymous session is closed (the newcomer used to get 421);
// authenticated sessions never give way.
func TestFullProviderLetsAnonymousSessionGiveWay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := pipeProvider(io.Discard, func(p *Provider) { p.MaxSessions = 3 })
		defer p.Close()
		var anon []*client
		for i := range 3 {
			c, _ := pipeDial(t, p, fmt.Sprintf("192.0.2.%d:1000", i+1), 220)
			anon = append(anon, c)
		}
		customer, _ := pipeDial(t, p, "198.51.100.1:1000", 220)
		assert.Contains(t, anon[0].expect(421), "unauthenticated session closed to make room")
		anon[0].expectClosed()
		customer.login()

		// The customer, now authenticated, stays while anonymous
		// newcomers keep coming: each pushes out the oldest anonymous one.
		for i := range 4 {
			pipeDial(t, p, fmt.Sprintf("203.0.113.%d:1000", i+1), 220)
		}
		anon[1].expect(421)
		anon[2].expect(421)
		customer.cmd(250, "NOOP")

		// Full of authenticated sessions: the newcomer is refused.
		p2 := pipeProvider(io.Discard, func(p *Provider) { p.MaxSessions = 2 })
		defer p2.Close()
		for i := range 2 {
			c, _ := pipeDial(t, p2, fmt.Sprintf("192.0.2.%d:1000", i+1), 220)
			c.login()
		}
		_, msg := pipeDial(t, p2, "192.0.2.3:1000", 421)
		assert.Contains(t, msg, "Too many connections, try again later")
	})
}

// TestSessionCapPerNetwork: the per-address cap counts a whole IPv6 /64
// (it used to count each address, so 50 addresses of one /64 filled the
// provider), and an IPv4 network as configured.
func TestSessionCapPerNetwork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := pipeProvider(io.Discard, func(p *Provider) { p.MaxSessionsPerAddr = 2; p.IPv4Prefix = 24 })
		defer p.Close()
		pipeDial(t, p, "[2001:db8:1:2::1]:1000", 220)
		pipeDial(t, p, "[2001:db8:1:2::2]:1000", 220)
		_, msg := pipeDial(t, p, "[2001:db8:1:2:ffff::3]:1000", 421)
		assert.Contains(t, msg, "from your network")
		pipeDial(t, p, "[2001:db8:1:3::1]:1000", 220) // another /64
		pipeDial(t, p, "192.0.2.1:1000", 220)
		pipeDial(t, p, "192.0.2.200:1000", 220)
		pipeDial(t, p, "[::ffff:192.0.2.9]:1000", 421) // the same /24
		pipeDial(t, p, "192.0.3.1:1000", 220)
	})
}

// TestEvictionUnderChurn: anonymous connections racing for a full
// provider over TCP never push out the authenticated customer, and the
// session table is empty once they are gone (run it with -race).
func TestEvictionUnderChurn(t *testing.T) {
	f := newFixture(t, func(p *Provider) { p.MaxSessions = 4; p.MaxSessionsPerAddr = -1 })
	customer := f.dial(t)
	customer.login()
	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			conn, err := net.Dial("tcp", f.addr)
			if !assert.NoError(t, err) {
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(20 * time.Second)) // a hang, not a measurement
			tp := textproto.NewConn(conn)
			if line, err := tp.ReadLine(); err == nil && strings.HasPrefix(line, "220 ") {
				tp.PrintfLine("EHLO anon.test")
				tp.ReadResponse(250)
			}
		})
	}
	wg.Wait()
	customer.cmd(250, "NOOP")
	customer.cmd(221, "QUIT")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, f.p.Shutdown(ctx))
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	assert.Empty(t, f.p.table.all)
	assert.Empty(t, f.p.table.perNet)
	assert.Zero(t, f.p.table.unauth.Len())
}

// TestEvictionDuringAuthIsNotA235: a session chosen to make room while
// its secret is being checked used to be told 235 and then closed with
// 421 at its next command, although authenticated sessions never give
// way. Eviction and promotion are now decided under one lock: the chosen
// session gets 421 whatever its secret, as a wrong one would, so that a
// guesser evicting its own session learns nothing.
func TestEvictionDuringAuthIsNotA235(t *testing.T) {
	for name, secret := range map[string]string{"right": testSecret, "wrong": "wrong"} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				checking, release := make(chan struct{}), make(chan struct{})
				var once sync.Once
				p := pipeProvider(io.Discard, func(p *Provider) {
					p.MaxSessions = 1
					p.MaxSessionsPerAddr = -1
					p.Authenticator = AuthenticatorFunc(func(ctx context.Context, u string) ([]byte, error) {
						once.Do(func() { close(checking); <-release })
						return []byte(testSecret), nil
					})
				})
				defer p.Close()
				c, _ := pipeDial(t, p, "192.0.2.1:1000", 220)
				c.cmd(250, "EHLO customer.test")
				chal := c.cmd(334, "AUTH CRAM-MD5")
				raw, err := base64.StdEncoding.DecodeString(chal)
				require.NoError(t, err)
				resp, _ := saslmech.NewCRAMMD5Client(testUser, secret).Next(raw)
				require.NoError(t, c.tp.PrintfLine("%s", base64.StdEncoding.EncodeToString(resp)))
				<-checking
				newcomer, _ := pipeDial(t, p, "198.51.100.1:1000", 220)
				close(release)
				assert.Contains(t, c.expect(421), "closed to make room")
				c.expectClosed()
				newcomer.cmd(250, "NOOP")
			})
		})
	}
}

// TestConnectionLogsAreRateLimited: every refused connection used to
// write a Warn record, so anyone able to connect could write the log as
// fast as it could connect. Now ConnLogsPerSecond records a second get
// through, and the next one says how many were held back.
func TestConnectionLogsAreRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs syncBuffer
		p := pipeProvider(&logs, func(p *Provider) { p.MaxSessionsPerAddr = 1; p.ConnLogsPerSecond = 2 })
		defer p.Close()
		pipeDial(t, p, "192.0.2.1:1000", 220)
		for range 5 {
			pipeDial(t, p, "192.0.2.1:1001", 421)
		}
		synctest.Wait()
		assert.Equal(t, 2, strings.Count(logs.String(), "connection refused"))
		time.Sleep(time.Second)
		pipeDial(t, p, "192.0.2.1:1002", 421)
		synctest.Wait()
		assert.Equal(t, 3, strings.Count(logs.String(), "connection refused"))
		assert.Contains(t, logs.String(), "suppressed=3")
	})
}

// TestRefusedTLSConnectionIsClosedInTime: on an implicit-TLS listener a
// connection over the per-network cap is refused, and one whose client
// sends nothing is closed after the refusal's deadline: the 421 starts
// the handshake, which reads, and the refusal's write deadline alone
// left it waiting for good, a descriptor and a goroutine each.
func TestRefusedTLSConnectionIsClosedInTime(t *testing.T) {
	newTestPKI(t)
	synctest.Test(t, func(t *testing.T) {
		p := pipeProvider(io.Discard, withTLS, func(p *Provider) { p.MaxSessionsPerAddr = 1 })
		defer p.Close()
		first, conn1 := net.Pipe()
		defer conn1.Close()
		go p.Serve(tls.Server(addrConn{first, net.TCPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:1000"))}, p.TLSConfig))
		synctest.Wait()
		second, conn2 := net.Pipe()
		defer conn2.Close()
		start := time.Now()
		err := p.Serve(tls.Server(addrConn{second, net.TCPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:1001"))}, p.TLSConfig))
		assert.ErrorContains(t, err, "connection refused")
		assert.Equal(t, 5*time.Second, time.Since(start), "closed at the refusal's deadline")
	})
}
