package odmr

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-odmr/odmr/internal/testcert"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testPKI is a CA with a server certificate for 127.0.0.1/localhost; it
// issues the client certificates.
type testPKI struct {
	*testcert.CA
	server tls.Certificate
}

var (
	pkiOnce sync.Once
	pki     *testPKI
)

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	pkiOnce.Do(func() {
		ca := testcert.NewCA(t, "odmr test CA")
		pki = &testPKI{CA: ca, server: ca.Server(t, "provider.test", "localhost", "127.0.0.1")}
	})
	return pki
}

func (p *testPKI) serverConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    p.Pool,
	}
}

func (p *testPKI) clientConfig(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: p.Pool, ServerName: "provider.test", Certificates: certs}
}

// startTLS runs STARTTLS on c and returns the client over TLS.
func (c *client) startTLS(cfg *tls.Config) {
	c.t.Helper()
	c.cmd(220, "STARTTLS")
	tc := tls.Client(c.conn, cfg)
	require.NoError(c.t, tc.Handshake())
	c.conn = tc
	c.tp = textproto.NewConn(tc)
}

// mapTestUserCert is an ExternalAuth that takes a client certificate
// whose common name is testUser as that user, and no other.
func mapTestUserCert(ctx context.Context, cs tls.ConnectionState) (string, error) {
	if cn := cs.PeerCertificates[0].Subject.CommonName; cn == testUser {
		return cn, nil
	}
	return "", errors.New("certificate not mapped to an account")
}

// withTLS configures TLS; the test must have called newTestPKI first.
func withTLS(p *Provider) { p.TLSConfig = pki.serverConfig() }

func TestSTARTTLSThenPLAIN(t *testing.T) {
	newTestPKI(t)
	f := newFixture(t, withTLS)
	c := f.dial(t)
	ehlo := c.cmd(250, "EHLO customer.test")
	assert.Contains(t, ehlo, "STARTTLS")
	assert.NotContains(t, ehlo, "PLAIN")
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + testSecret))
	c.cmd(538, "AUTH PLAIN "+plain)

	c.startTLS(pki.clientConfig())
	// RFC 3207: the session starts over, EHLO first.
	c.cmd(503, "AUTH PLAIN "+plain)
	ehlo = c.cmd(250, "EHLO customer.test")
	assert.Contains(t, ehlo, "AUTH SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN")
	assert.NotContains(t, ehlo, "STARTTLS")
	c.cmd(503, "STARTTLS")
	c.cmd(235, "AUTH PLAIN "+plain)
	c.cmd(453, "ATRN")
}

func TestSTARTTLSUnavailableIs454(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	assert.NotContains(t, c.cmd(250, "EHLO customer.test"), "STARTTLS")
	c.cmd(454, "STARTTLS")
}

func TestPipelinedPlaintextAfterSTARTTLSIsNotExecuted(t *testing.T) {
	newTestPKI(t)
	f := newFixture(t, withTLS, func(p *Provider) { p.AllowInsecureAuth = true })
	f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "u@example.org")
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + testSecret))
	// The injected commands ride in the same packet as STARTTLS.
	c.raw("STARTTLS\r\nAUTH PLAIN " + plain + "\r\nATRN example.org\r\n")
	c.expect(220)
	tc := tls.Client(c.conn, pki.clientConfig())
	require.NoError(t, tc.Handshake())
	c.conn, c.tp = tc, textproto.NewConn(tc)
	// Had the injected AUTH run, this would be 250 or the 503 of a second
	// AUTH; as it is, the session is fresh.
	c.cmd(250, "EHLO customer.test")
	c.cmd(530, "ATRN example.org")
	assert.Contains(t, f.logs.String(), "discarded bytes pipelined after STARTTLS")
}

func TestRequireTLS(t *testing.T) {
	newTestPKI(t)
	f := newFixture(t, withTLS, func(p *Provider) { p.RequireTLS = true })
	f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "u@example.org")
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	c.cmd(530, "AUTH CRAM-MD5")
	c.cmd(530, "ATRN example.org")
	c.startTLS(pki.clientConfig())
	c.cmd(250, "EHLO customer.test")
	c.authCRAM(testUser, testSecret, 235)
	c.cmd(250, "ATRN example.org")

	// The delivery after the swap runs inside the same TLS session.
	_, isTLS := c.conn.(*tls.Conn)
	require.True(t, isTLS)
	got, cmds := scriptedCustomer{}.run(t, c)
	require.Len(t, got, 1)
	assert.Equal(t, "EHLO provider.test", cmds[0])
	assert.Equal(t, 0, f.q.Len())
}

func TestImplicitTLS(t *testing.T) {
	newTestPKI(t)
	q := newMemQueue()
	q.Enqueue(Envelope{From: "s@x.test", To: []string{"u@example.org"}}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
	accts := testAccounts{testUser: {Name: testUser, Secret: testSecret, Domains: []string{"example.org"}}}
	p := &Provider{Hostname: "provider.test", Authenticator: accts, Authorizer: accts, Queue: q, TLSConfig: pki.serverConfig(), Logger: discardLogger()}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go p.ServeListener(tls.NewListener(l, p.TLSConfig))
	defer p.Close()

	conn, err := tls.Dial("tcp", l.Addr().String(), pki.clientConfig())
	require.NoError(t, err)
	defer conn.Close()
	c := &client{t: t, conn: conn, tp: textproto.NewConn(conn)}
	c.expect(220)
	ehlo := c.cmd(250, "EHLO customer.test")
	assert.Contains(t, ehlo, "PLAIN")
	assert.NotContains(t, ehlo, "STARTTLS")
	c.authCRAM(testUser, testSecret, 235)
	c.cmd(250, "ATRN")
	got, _ := scriptedCustomer{}.run(t, c)
	assert.Len(t, got, 1)
}

func TestListenAndServeTLSNeedsConfig(t *testing.T) {
	assert.ErrorContains(t, (&Provider{}).ListenAndServeTLS("127.0.0.1:0"), "TLSConfig")
}

func TestEXTERNAL(t *testing.T) {
	newTestPKI(t)
	f := newFixture(t, withTLS, func(p *Provider) { p.ExternalAuth = mapTestUserCert })

	t.Run("a mapped certificate authenticates", func(t *testing.T) {
		c := f.dial(t)
		c.cmd(250, "EHLO customer.test")
		c.startTLS(pki.clientConfig(pki.Client(t, testUser)))
		assert.Contains(t, c.cmd(250, "EHLO customer.test"), "EXTERNAL")
		c.cmd(235, "AUTH EXTERNAL =")
		c.cmd(453, "ATRN")
	})
	t.Run("an authorization identity of another user is refused", func(t *testing.T) {
		c := f.dial(t)
		c.cmd(250, "EHLO customer.test")
		c.startTLS(pki.clientConfig(pki.Client(t, testUser)))
		c.cmd(250, "EHLO customer.test")
		c.cmd(535, "AUTH EXTERNAL "+base64.StdEncoding.EncodeToString([]byte("bob")))
	})
	t.Run("an unmapped certificate is refused", func(t *testing.T) {
		c := f.dial(t)
		c.cmd(250, "EHLO customer.test")
		c.startTLS(pki.clientConfig(pki.Client(t, "mallory")))
		c.cmd(250, "EHLO customer.test")
		c.cmd(535, "AUTH EXTERNAL =")
	})
	t.Run("an untrusted certificate fails the handshake", func(t *testing.T) {
		c := f.dial(t)
		c.cmd(250, "EHLO customer.test")
		c.cmd(220, "STARTTLS")
		// GetClientCertificate sends the certificate even though the
		// server's CA list does not include its issuer.
		untrusted := testcert.NewCA(t, "untrusted CA").Client(t, testUser)
		cfg := pki.clientConfig()
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &untrusted, nil }
		tc := tls.Client(c.conn, cfg)
		err := tc.Handshake()
		if err == nil {
			// TLS 1.3 reports the client certificate's rejection on the
			// first read.
			_, err = tc.Read(make([]byte, 1))
		}
		assert.Error(t, err)
	})
	t.Run("without a certificate EXTERNAL is not offered", func(t *testing.T) {
		c := f.dial(t)
		c.cmd(250, "EHLO customer.test")
		c.startTLS(pki.clientConfig())
		assert.NotContains(t, c.cmd(250, "EHLO customer.test"), "EXTERNAL")
		c.cmd(504, "AUTH EXTERNAL =")
	})
}

func TestATRNRateLimitIs450(t *testing.T) {
	f := newFixture(t, func(p *Provider) { p.ATRNBurst = 2; p.ATRNInterval = time.Hour })
	c := f.dial(t)
	c.login()
	c.cmd(453, "ATRN")
	c.cmd(453, "ATRN")
	msg := c.cmd(450, "ATRN")
	assert.Contains(t, msg, "4.7.1")
	assert.Contains(t, msg, "Too many ATRN requests")
}

func TestAuthLockoutPerAddressAndIdentity(t *testing.T) {
	f := newFixture(t, func(p *Provider) { p.AuthFailuresAllowed = 2; p.AuthBackoff = time.Hour })
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	c.authCRAM(testUser, "wrong", 535)
	c.authCRAM(testUser, "wrong", 535)
	c.authCRAM(testUser, "wrong", 535) // the third failure starts the lockout
	// Now even a right secret, in a new session, waits.
	c2 := f.dial(t)
	c2.cmd(250, "EHLO customer.test")
	assert.Contains(t, c2.cmd(454, "AUTH CRAM-MD5"), "try again in")
}

func TestSessionCapPerAddress(t *testing.T) {
	f := newFixture(t, func(p *Provider) { p.MaxSessionsPerAddr = 1 })
	c := f.dial(t)
	conn, err := net.Dial("tcp", f.addr)
	require.NoError(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := textproto.NewReader(bufioReader(conn)).ReadLine()
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(line, "421 4.7.0 Too many connections"), line)
	c.cmd(250, "NOOP")
}

func TestDebugTranscriptRedactsAUTH(t *testing.T) {
	debug := &syncBuffer{}
	f := newFixture(t, func(p *Provider) { p.Debug = debug; p.AllowInsecureAuth = true })
	f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "u@example.org")
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00wrong-password-1"))
	c.cmd(535, "AUTH PLAIN "+plain)
	c.cmd(334, "AUTH LOGIN")
	c.cmd(334, base64.StdEncoding.EncodeToString([]byte(testUser)))
	c.cmd(235, base64.StdEncoding.EncodeToString([]byte(testSecret)))
	c.cmd(250, "ATRN example.org")
	scriptedCustomer{}.run(t, c)
	f.p.Shutdown(context.Background())

	out := debug.String()
	assert.Contains(t, out, "C: EHLO customer.test")
	assert.Contains(t, out, "C: AUTH PLAIN <redacted>")
	assert.Contains(t, out, "P: 334 <redacted>")
	assert.Contains(t, out, "P: MAIL FROM:<s@x.test>")
	assert.Contains(t, out, "C: 250 2.0.0 queued")
	for _, secret := range []string{testSecret, "wrong-password-1", plain, base64.StdEncoding.EncodeToString([]byte(testSecret))} {
		assert.NotContains(t, out, secret)
		assert.NotContains(t, f.logs.String(), secret)
	}
}

// TestImplicitTLSMisconfiguredAnswersOverTLS: a provider that cannot
// serve (no Authenticator) still completes the handshake of an
// implicit-TLS connection and says 421 inside TLS, as Postfix does with
// smtpd_tls_wrappermode; the client does not see plaintext where it
// expects a ServerHello.
func TestImplicitTLSMisconfiguredAnswersOverTLS(t *testing.T) {
	newTestPKI(t)
	p := &Provider{Hostname: "provider.test", TLSConfig: pki.serverConfig(), Logger: discardLogger()}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go p.ServeListener(tls.NewListener(l, p.TLSConfig))
	defer p.Close()

	conn, err := tls.Dial("tcp", l.Addr().String(), pki.clientConfig())
	require.NoError(t, err)
	defer conn.Close()
	code, msg, err := textproto.NewConn(conn).ReadResponse(421)
	require.NoError(t, err, "%d %s", code, msg)
	assert.Contains(t, msg, "not configured")
}

// TestImplicitTLSMisconfiguredSilentClientTimesOut: the handshake before
// that 421 runs under the first command's deadline. It used to run
// inside the write of the 421, with no read deadline: a client that
// connected and sent nothing held the session for good.
func TestImplicitTLSMisconfiguredSilentClientTimesOut(t *testing.T) {
	newTestPKI(t)
	synctest.Test(t, func(t *testing.T) {
		p := &Provider{Hostname: "provider.test", TLSConfig: pki.serverConfig(), Logger: discardLogger(),
			CommandTimeout: time.Minute}
		cli, srv := net.Pipe()
		defer cli.Close()
		served := make(chan error, 1)
		go func() { served <- p.Serve(tls.Server(srv, p.TLSConfig)) }()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		select {
		case err := <-served:
			assert.ErrorContains(t, err, "TLS handshake")
		default:
			t.Fatal("the session still waits for a handshake the client never starts")
		}
	})
}
