package odmr

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/internal/testcert"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The customer's side of transport security and authentication, against
// this package's Provider over loopback TCP. The certificates come from
// newTestPKI (tls_test.go): a CA, and a provider certificate for
// provider.test, localhost and 127.0.0.1.

const ctlsBody = "Subject: over TLS\r\n\r\nA message that must not cross in clear.\r\n"

// ctlsEnv is a provider for these tests, with its debug transcript and
// its logs.
type ctlsEnv struct {
	p           *Provider
	q           memQueue
	addr        string
	port        string
	debug, logs *syncBuffer
}

// ctlsProvider starts a provider with alice's and bob's accounts and one
// message for alice at example.org. implicit serves TLS from the first
// byte, with the test PKI's provider certificate unless an option sets
// TLSConfig.
func ctlsProvider(t *testing.T, implicit bool, opts ...func(*Provider)) *ctlsEnv {
	t.Helper()
	newTestPKI(t)
	e := &ctlsEnv{q: newMemQueue(), debug: &syncBuffer{}, logs: &syncBuffer{}}
	accts := testAccounts{
		testUser: {Name: testUser, Secret: testSecret, Domains: []string{"example.org", "example.com"}},
		"bob":    {Name: "bob", Secret: "bobs-secret", Domains: []string{"example.net"}},
	}
	e.p = &Provider{
		Hostname:      "provider.test",
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         e.q,
		Debug:         e.debug,
		Logger:        slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(e.p)
	}
	_, err := e.q.Enqueue(Envelope{From: "sender@x.test", To: []string{"u@example.org"}}, strings.NewReader(ctlsBody))
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	e.addr = l.Addr().String()
	_, e.port, _ = net.SplitHostPort(e.addr)
	if implicit {
		if e.p.TLSConfig == nil {
			e.p.TLSConfig = pki.serverConfig()
		}
		l = tls.NewListener(l, e.p.TLSConfig)
	}
	done := make(chan error, 1)
	go func() { done <- e.p.ServeListener(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.p.Shutdown(ctx); err != nil {
			e.p.Close()
		}
		<-done
		assert.NotContains(t, e.logs.String(), testSecret)
	})
	return e
}

// ctlsSink keeps the bodies it receives, and the Received: fields the
// customer put in front of them.
type ctlsSink struct {
	mu       sync.Mutex
	bodies   []string
	traces   []string
	sessions []ReversedSession
}

// stripReceived splits the Received: field the customer puts in front of
// a message from the message.
func stripReceived(b []byte) (trace, rest string) {
	s := string(b)
	if !strings.HasPrefix(s, "Received: ") {
		return "", s
	}
	i := strings.Index(s, "\r\n") + 2
	for strings.HasPrefix(s[i:], "\t") {
		i += strings.Index(s[i:], "\r\n") + 2
	}
	return s[:i], s[i:]
}

func (s *ctlsSink) Deliver(ctx context.Context, env Envelope, body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	trace, rest := stripReceived(b)
	info, _ := ReversedSessionFromContext(ctx)
	s.mu.Lock()
	s.sessions = append(s.sessions, info)
	s.bodies = append(s.bodies, rest)
	s.traces = append(s.traces, trace)
	s.mu.Unlock()
	return nil
}

func (s *ctlsSink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

// ctlsCustomer is alice's customer for e, pulling example.org; logs, if
// not nil, receives its log at debug level.
func ctlsCustomer(e *ctlsEnv, sink MessageSink, logs io.Writer) *Customer {
	log := discardLogger()
	if logs != nil {
		log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return &Customer{
		Addr:     e.addr,
		Username: testUser,
		Secret:   testSecret,
		Domains:  []string{"example.org"},
		Hostname: "customer.test",
		Sink:     sink,
		Logger:   log,
	}
}

// clientLines returns the customer's lines in a provider's debug
// transcript.
func clientLines(transcript string) []string {
	var out []string
	for _, l := range strings.Split(transcript, "\n") {
		if _, line, ok := strings.Cut(l, " C: "); ok {
			out = append(out, line)
		}
	}
	return out
}

// wireTap records the bytes that cross the customer's TCP connection, as
// an eavesdropper sees them: out what the customer writes, in what it
// reads.
type wireTap struct {
	mu      sync.Mutex
	in, out bytes.Buffer
}

func (w *wireTap) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &tapConn{Conn: c, w: w}, nil
}

func (w *wireTap) all() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.String() + w.in.String()
}

func (w *wireTap) lines() (in, out []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Split(w.in.String(), "\r\n"), strings.Split(w.out.String(), "\r\n")
}

type tapConn struct {
	net.Conn
	w *wireTap
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.mu.Lock()
	c.w.in.Write(p[:n])
	c.w.mu.Unlock()
	return n, err
}

func (c *tapConn) Write(p []byte) (int, error) {
	c.w.mu.Lock()
	c.w.out.Write(p)
	c.w.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *tapConn) NetConn() net.Conn { return c.Conn }

func TestCustomerImplicitTLS(t *testing.T) {
	e := ctlsProvider(t, true)
	newTestPKI(t)
	tap := &wireTap{}
	sink := &ctlsSink{}
	c := ctlsCustomer(e, sink, nil)
	c.ImplicitTLS = true
	// No ServerName: the host of Addr, 127.0.0.1, which the certificate
	// names.
	c.TLSConfig = &tls.Config{RootCAs: pki.Pool}
	c.Dial = tap.dial
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages)
	assert.Equal(t, []string{ctlsBody}, sink.received())
	assert.Contains(t, sink.traces[0], " with ESMTPS id ", "the Received: field tells TLS")
	require.NotNil(t, sink.sessions[0].TLS, "the sink sees the TLS state")
	assert.Equal(t, "provider.test", sink.sessions[0].Provider)
	assert.Zero(t, e.q.Len())
	assert.Equal(t, SCRAMSHA256, res.Mechanism)
	require.NotNil(t, res.TLS)
	assert.True(t, res.TLS.HandshakeComplete)
	assert.NotEmpty(t, res.TLS.VerifiedChains)

	// Not a byte of the session in clear, not even the greeting.
	wire := tap.all()
	for _, clear := range []string{"220 ", "EHLO", "ATRN", "MAIL FROM", "A message that must not"} {
		assert.NotContains(t, wire, clear)
	}
	// A provider under TLS offers no STARTTLS, and the customer sends none.
	assert.Equal(t, []string{"EHLO customer.test", "AUTH SCRAM-SHA-256 <redacted>", "<redacted>", "<redacted>", "ATRN example.org"},
		clientLines(e.debug.String())[:5])
	assert.NotContains(t, e.debug.String(), "STARTTLS")

	t.Run("a host name in Addr is the name verified", func(t *testing.T) {
		e := ctlsProvider(t, true)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.Addr = "localhost:" + e.port
		c.ImplicitTLS = true
		c.TLSConfig = &tls.Config{RootCAs: pki.Pool}
		res, err := c.Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, 1, res.Messages)
		assert.Equal(t, "localhost", res.TLS.ServerName)
		assert.NotEmpty(t, res.TLS.VerifiedChains)
	})
	t.Run("a Dial that returns a *tls.Conn is implicit TLS too", func(t *testing.T) {
		e := ctlsProvider(t, true)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return tls.Client(conn, pki.clientConfig()), nil
		}
		res, err := c.Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, 1, res.Messages)
		require.NotNil(t, res.TLS)
		// PLAIN counts as safe on it.
		assert.Contains(t, e.debug.String(), "P: 250-AUTH SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN")
	})
}

func TestCustomerSTARTTLSThenPLAINDeliversInsideTLS(t *testing.T) {
	// Only PLAIN, which the provider offers only under TLS
	// (AllowInsecureAuth is false on both sides).
	e := ctlsProvider(t, false, withTLS, func(p *Provider) { p.DisableSCRAM, p.DisableCRAMMD5 = true, true })
	tap := &wireTap{}
	sink := &ctlsSink{}
	c := ctlsCustomer(e, sink, nil)
	c.TLSConfig = &tls.Config{RootCAs: pki.Pool}
	c.Dial = tap.dial
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "PLAIN", res.Mechanism)
	assert.Equal(t, 1, res.Messages)
	assert.Equal(t, []string{ctlsBody}, sink.received())
	assert.Contains(t, sink.traces[0], " with ESMTPS id ", "the Received: field tells TLS")
	require.NotNil(t, sink.sessions[0].TLS, "the sink sees the TLS state")
	assert.Equal(t, "provider.test", sink.sessions[0].Provider)
	require.NotNil(t, res.TLS)

	// In clear on the wire: the greeting, the first EHLO and STARTTLS.
	// Everything after, the secret and the whole delivery after the
	// swap included, went inside TLS.
	wire := tap.all()
	assert.Contains(t, wire, "EHLO customer.test\r\nSTARTTLS\r\n")
	assert.Contains(t, wire, "220 2.0.0 Ready to start TLS\r\n")
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + testSecret))
	for _, secret := range []string{"AUTH PLAIN", "ATRN example.org", plain, testSecret, "MAIL FROM", "sender@x.test", "A message that must not", "QUIT"} {
		assert.NotContains(t, wire, secret)
	}
	// The provider saw the same session: EHLO again after the handshake,
	// AUTH, and its own SMTP client delivering; its log records the TLS.
	assert.Equal(t, []string{"EHLO customer.test", "STARTTLS", "EHLO customer.test", "AUTH PLAIN <redacted>", "ATRN example.org"},
		clientLines(e.debug.String())[:5])
	assert.Contains(t, e.debug.String(), "P: MAIL FROM:<sender@x.test>")
	assert.Contains(t, e.logs.String(), `tls="TLS 1.`)
}

func TestCustomerHandlerSeesTheTLSState(t *testing.T) {
	for _, implicit := range []bool{false, true} {
		e := ctlsProvider(t, implicit, withTLS)
		var state tls.ConnectionState
		var ok bool
		c := ctlsCustomer(e, nil, nil)
		c.ImplicitTLS = implicit
		c.TLSConfig = &tls.Config{RootCAs: pki.Pool}
		c.Handler = HandlerFunc(func(ctx context.Context, conn net.Conn) error {
			cs, isTLS := conn.(interface {
				ConnectionState() (tls.ConnectionState, bool)
			})
			require.True(t, isTLS, "the reversed connection reports its TLS state")
			state, ok = cs.ConnectionState()
			_, err := io.WriteString(conn, "421 4.3.0 Not now\r\n")
			return err
		})
		_, err := c.Fetch(context.Background())
		require.NoError(t, err)
		assert.True(t, ok, "implicit=%v", implicit)
		assert.True(t, state.HandshakeComplete, "implicit=%v", implicit)
		assert.Equal(t, 1, e.q.Len(), "421 to the provider: the mail stays queued")
	}
}

func TestCustomerSTARTTLSNotOfferedSendsNothing(t *testing.T) {
	// A provider without TLS that would even take PLAIN in clear.
	e := ctlsProvider(t, false, func(p *Provider) { p.AllowInsecureAuth = true })
	c := ctlsCustomer(e, &ctlsSink{}, nil)
	c.TLSConfig = &tls.Config{RootCAs: pki.Pool}
	c.AllowInsecureAuth = true
	res, err := c.Fetch(context.Background())
	require.ErrorIs(t, err, ErrNoStartTLS)
	assert.Nil(t, res.TLS)
	assert.Equal(t, []string{"EHLO customer.test", "QUIT"}, clientLines(e.debug.String()))
	assert.Equal(t, 1, e.q.Len())
}

// coalescingDial makes the customer read the reply to STARTTLS together
// with whatever the provider wrote with it, the way one TCP segment
// delivers them, so that the test does not depend on segmentation.
func coalescingDial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &coalescingConn{Conn: conn}, nil
}

type coalescingConn struct {
	net.Conn
	afterSTARTTLS bool
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	if string(p) == "STARTTLS\r\n" {
		c.afterSTARTTLS = true
	}
	return c.Conn.Write(p)
}

func (c *coalescingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.afterSTARTTLS {
		return n, err
	}
	c.afterSTARTTLS = false
	for err == nil && !bytes.HasSuffix(p[:n], []byte("250 ATRN\r\n")) {
		var m int
		m, err = c.Conn.Read(p[n:])
		n += m
	}
	return n, err
}

func TestCustomerDiscardsPlaintextSentWithTheSTARTTLSReply(t *testing.T) {
	newTestPKI(t)
	var seen []string
	addr, wait := smtptest.Script(t, func(tp *textproto.Conn, conn net.Conn) {
		read := func() bool {
			line, err := tp.ReadLine()
			seen = append(seen, line)
			return err == nil
		}
		tp.PrintfLine("220 fake.test ODMR")
		read()
		tp.PrintfLine("250-fake.test\r\n250-STARTTLS\r\n250 ATRN")
		read()
		// The 220 and, in the same write, an EHLO reply offering PLAIN: a
		// customer that kept it would read it as the reply to its EHLO
		// after the handshake, as if it were protected.
		io.WriteString(conn, "220 2.0.0 Go ahead\r\n250-fake.test\r\n250-AUTH PLAIN\r\n250 ATRN\r\n")
		tc := tls.Server(conn, pki.serverConfig())
		if tc.Handshake() != nil {
			return
		}
		tp = textproto.NewConn(tc)
		read()
		tp.PrintfLine("250-fake.test\r\n250-AUTH CRAM-MD5\r\n250 ATRN")
		read()
		tp.PrintfLine("334 %s", base64.StdEncoding.EncodeToString([]byte("<1.2@fake.test>")))
		tp.ReadLine()
		tp.PrintfLine("235 2.7.0 OK")
		read()
		tp.PrintfLine("453 4.7.0 No mail")
		read()
		tp.PrintfLine("221 2.0.0 Bye")
	})
	logs := &syncBuffer{}
	c := &Customer{Addr: addr, Username: testUser, Secret: testSecret, Domains: []string{"example.org"}, Hostname: "customer.test",
		Sink: &ctlsSink{}, TLSConfig: pki.clientConfig(), Dial: coalescingDial,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	res, err := c.Fetch(context.Background())
	wait()
	require.NoError(t, err)
	assert.True(t, res.NoMail)
	// EHLO again after the handshake, and the mechanism of the reply that
	// came inside TLS, not PLAIN.
	assert.Equal(t, "CRAM-MD5", res.Mechanism)
	assert.Equal(t, []string{"EHLO customer.test", "STARTTLS", "EHLO customer.test", "AUTH CRAM-MD5", "ATRN example.org", "QUIT"}, seen)
	assert.Contains(t, logs.String(), "discarded bytes the provider sent after its reply to STARTTLS")
}

func TestCustomerUntrustedProviderCertificate(t *testing.T) {
	t.Run("implicit TLS, unknown authority", func(t *testing.T) {
		e := ctlsProvider(t, true)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.Addr = "localhost:" + e.port
		c.ImplicitTLS = true
		c.TLSConfig = &tls.Config{RootCAs: x509.NewCertPool()}
		_, err := c.Fetch(context.Background())
		require.Error(t, err)
		assert.True(t, strings.HasPrefix(err.Error(), "odmr: TLS with localhost: x509: certificate signed by unknown authority"), err.Error())
		var ve *tls.CertificateVerificationError
		assert.ErrorAs(t, err, &ve)
		assert.Equal(t, 1, e.q.Len())
	})
	t.Run("implicit TLS, default config: the system's roots", func(t *testing.T) {
		e := ctlsProvider(t, true)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.Addr = "localhost:" + e.port
		c.ImplicitTLS = true
		_, err := c.Fetch(context.Background())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "odmr: TLS with localhost: x509: ")
		var ve *tls.CertificateVerificationError
		assert.ErrorAs(t, err, &ve)
		assert.Equal(t, 1, e.q.Len())
	})
	t.Run("STARTTLS, a name the certificate does not have", func(t *testing.T) {
		e := ctlsProvider(t, false, withTLS)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.TLSConfig = &tls.Config{RootCAs: pki.Pool, ServerName: "mail.example.net"}
		_, err := c.Fetch(context.Background())
		require.Error(t, err)
		assert.Equal(t, "odmr: TLS with mail.example.net: x509: certificate is valid for provider.test, localhost, not mail.example.net", err.Error())
		// Nothing after STARTTLS: no credentials went anywhere.
		assert.Equal(t, []string{"EHLO customer.test", "STARTTLS"}, clientLines(e.debug.String()))
		assert.Equal(t, 1, e.q.Len())
	})
}

func TestCustomerEXTERNAL(t *testing.T) {
	newTestPKI(t)
	withExternal := func(p *Provider) { p.ExternalAuth = mapTestUserCert }
	good := pki.Client(t, testUser)
	unmapped := pki.Client(t, "mallory")

	t.Run("implicit TLS, a certificate and no secret", func(t *testing.T) {
		e := ctlsProvider(t, true, withTLS, withExternal)
		debug := &syncBuffer{}
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.Username, c.Secret = "", ""
		c.ImplicitTLS = true
		c.TLSConfig = pki.clientConfig(good)
		c.Debug = debug
		res, err := c.Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, "EXTERNAL", res.Mechanism)
		assert.Equal(t, 1, res.Messages)
		assert.Contains(t, debug.String(), "C: AUTH EXTERNAL <redacted>")
		assert.Contains(t, e.logs.String(), "identity="+testUser)
	})
	t.Run("STARTTLS, EXTERNAL before SCRAM", func(t *testing.T) {
		e := ctlsProvider(t, false, withTLS, withExternal)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.TLSConfig = pki.clientConfig(good)
		res, err := c.Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, "EXTERNAL", res.Mechanism)
		assert.Equal(t, 1, res.Messages)
	})
	t.Run("GetClientCertificate counts as a certificate", func(t *testing.T) {
		e := ctlsProvider(t, true, withTLS, withExternal)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.Username = ""
		c.ImplicitTLS = true
		c.TLSConfig = pki.clientConfig()
		c.TLSConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &good, nil }
		res, err := c.Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, "EXTERNAL", res.Mechanism)
	})
	t.Run("an unmapped certificate is 535", func(t *testing.T) {
		e := ctlsProvider(t, true, withTLS, withExternal)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.ImplicitTLS = true
		c.TLSConfig = pki.clientConfig(unmapped)
		res, err := c.Fetch(context.Background())
		require.ErrorIs(t, err, ErrAuthFailed)
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, 535, re.Code)
		assert.Equal(t, "", res.Mechanism)
		assert.Equal(t, 1, e.q.Len())
		// No fallback to the secret after a refused certificate.
		assert.NotContains(t, e.debug.String(), "C: AUTH SCRAM")
	})
	t.Run("an untrusted certificate fails the handshake, naming the host", func(t *testing.T) {
		e := ctlsProvider(t, true, withTLS, withExternal)
		untrusted := testcert.NewCA(t, "untrusted CA").Client(t, testUser)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.Addr = "localhost:" + e.port
		c.ImplicitTLS = true
		c.TLSConfig = &tls.Config{RootCAs: pki.Pool}
		// Sent even though the provider's list of CAs does not hold its
		// issuer.
		c.TLSConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &untrusted, nil }
		_, err := c.Fetch(context.Background())
		require.Error(t, err)
		assert.True(t, strings.HasPrefix(err.Error(), "odmr: TLS with localhost: remote error: tls: "), err.Error())
		assert.Equal(t, 1, e.q.Len())
	})
	t.Run("a provider without EXTERNAL gets SCRAM", func(t *testing.T) {
		e := ctlsProvider(t, true, withTLS)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.ImplicitTLS = true
		c.TLSConfig = pki.clientConfig(good)
		res, err := c.Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, SCRAMSHA256, res.Mechanism)
	})
	t.Run("no EXTERNAL and no Username", func(t *testing.T) {
		e := ctlsProvider(t, true, withTLS)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.Username = ""
		c.ImplicitTLS = true
		c.TLSConfig = pki.clientConfig(good)
		_, err := c.Fetch(context.Background())
		require.ErrorIs(t, err, ErrNoAuthMechanism)
		assert.Contains(t, err.Error(), "without a Username")
	})
	t.Run("no Username and no certificate is a configuration error", func(t *testing.T) {
		c := &Customer{Addr: "127.0.0.1:1", Sink: &ctlsSink{}, ImplicitTLS: true, TLSConfig: pki.clientConfig()}
		_, err := c.Fetch(context.Background())
		assert.ErrorContains(t, err, "needs a Username")
	})
}

func TestCustomerEXTERNALSendsAnEmptyAuthorizationIdentity(t *testing.T) {
	mech, ir, err := externalClient{}.Start()
	require.NoError(t, err)
	assert.Equal(t, "EXTERNAL", mech)
	require.NotNil(t, ir)
	assert.Equal(t, "AUTH EXTERNAL =", "AUTH "+mech+" "+encodeSASL(ir))
}

func TestCustomerSCRAMSHA256(t *testing.T) {
	t.Run("in clear text", func(t *testing.T) {
		e := ctlsProvider(t, false)
		res, err := ctlsCustomer(e, &ctlsSink{}, nil).Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, SCRAMSHA256, res.Mechanism)
		assert.Nil(t, res.TLS)
		assert.Equal(t, 1, res.Messages)
	})
	t.Run("under TLS", func(t *testing.T) {
		e := ctlsProvider(t, true)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.ImplicitTLS = true
		c.TLSConfig = pki.clientConfig()
		c.Mechanisms = []string{SCRAMSHA256}
		res, err := c.Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, SCRAMSHA256, res.Mechanism)
		assert.Equal(t, 1, res.Messages)
	})
	t.Run("a wrong secret is 535", func(t *testing.T) {
		e := ctlsProvider(t, false)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.Secret = "not-the-secret"
		_, err := c.Fetch(context.Background())
		require.ErrorIs(t, err, ErrAuthFailed)
		var re *Error
		require.ErrorAs(t, err, &re)
		assert.Equal(t, 535, re.Code)
		assert.Equal(t, 1, e.q.Len())
	})
	t.Run("a provider that cannot prove it knows the secret is refused", func(t *testing.T) {
		// The provider checks the customer's proof; the customer checks
		// the provider's signature in the last challenge. This provider
		// runs a real SCRAM server but forges the signature.
		var seen []string
		addr, wait := smtptest.Script(t, func(tp *textproto.Conn, conn net.Conn) {
			tp.PrintfLine("220 fake.test ODMR")
			tp.ReadLine()
			tp.PrintfLine("250-fake.test\r\n250-AUTH SCRAM-SHA-256\r\n250 ATRN")
			line, _ := tp.ReadLine()
			seen = append(seen, line)
			_, ir, _ := strings.Cut(strings.TrimPrefix(line, "AUTH "), " ")
			first, _ := base64.StdEncoding.DecodeString(ir)
			var user string
			srv, err := newSCRAMServer(SCRAMSHA256, &user, func(u string) (SCRAMCredentials, error) {
				return deriveSCRAM(SCRAMSHA256, u, testSecret, []byte("0123456789abcdef"), 4096)
			})
			if err != nil {
				return
			}
			chal, _, err := srv.Next(first)
			if err != nil {
				return
			}
			tp.PrintfLine("334 %s", base64.StdEncoding.EncodeToString(chal))
			line, _ = tp.ReadLine()
			seen = append(seen, "(client-final)")
			final, _ := base64.StdEncoding.DecodeString(line)
			if _, _, err := srv.Next(final); err != nil {
				tp.PrintfLine("535 5.7.8 proof wrong")
				return
			}
			forged := "v=" + base64.StdEncoding.EncodeToString(make([]byte, 32))
			tp.PrintfLine("334 %s", base64.StdEncoding.EncodeToString([]byte(forged)))
			line, _ = tp.ReadLine()
			seen = append(seen, line)
			tp.PrintfLine("501 5.7.0 Authentication cancelled")
			line, _ = tp.ReadLine()
			seen = append(seen, line)
			tp.PrintfLine("221 2.0.0 Bye")
		})
		c := &Customer{Addr: addr, Username: testUser, Secret: testSecret, Hostname: "customer.test", Sink: &ctlsSink{}, Logger: discardLogger(),
			AcceptDomains: []string{"example.org"}}
		_, err := c.Fetch(context.Background())
		wait()
		require.Error(t, err)
		assert.True(t, strings.HasPrefix(err.Error(), "odmr: AUTH SCRAM-SHA-256: SCRAM: "), err.Error())
		assert.NotErrorIs(t, err, ErrAuthFailed)
		require.Len(t, seen, 4)
		assert.True(t, strings.HasPrefix(seen[0], "AUTH SCRAM-SHA-256 "), seen[0])
		assert.Equal(t, []string{"(client-final)", "*", "QUIT"}, seen[1:], "cancelled, never ATRN")
	})
}

// saslPayloads returns what crossed the wire inside AUTH exchanges: the
// initial response, the customer's responses and the provider's 334
// texts, in base64 and decoded.
func saslPayloads(tap *wireTap) []string {
	in, out := tap.lines()
	var payloads []string
	add := func(b64 string) {
		if b64 == "" || b64 == "=" {
			return
		}
		payloads = append(payloads, b64)
		if dec, err := base64.StdEncoding.DecodeString(b64); err == nil && len(dec) > 0 {
			payloads = append(payloads, string(dec))
		}
	}
	inAuth := false
	for _, l := range out {
		switch {
		case strings.HasPrefix(l, "AUTH "):
			inAuth = true
			if f := strings.Fields(l); len(f) == 3 {
				add(f[2])
			}
		case strings.HasPrefix(l, "ATRN"), strings.HasPrefix(l, "QUIT"):
			inAuth = false
		case inAuth:
			add(l)
		}
	}
	for _, l := range in {
		if p, ok := strings.CutPrefix(l, "334 "); ok {
			add(p)
		}
	}
	return payloads
}

func TestCustomerDebugTranscriptRedactsSASL(t *testing.T) {
	cases := []struct {
		mech   string
		secret string // the customer's
		auth   string // the AUTH line in the transcript
		ok     bool
	}{
		{"PLAIN", testSecret, "C: AUTH PLAIN <redacted>", true},
		{"LOGIN", testSecret, "C: AUTH LOGIN", true},
		{"CRAM-MD5", testSecret, "C: AUTH CRAM-MD5", true},
		{"SCRAM-SHA-256", testSecret, "C: AUTH SCRAM-SHA-256 <redacted>", true},
		{"SCRAM-SHA-1", testSecret, "C: AUTH SCRAM-SHA-1 <redacted>", true},
		// A failed login leaks nothing either.
		{"PLAIN", "wrong-Secret-1", "C: AUTH PLAIN <redacted>", false},
		{"CRAM-MD5", "wrong-Secret-2", "C: AUTH CRAM-MD5", false},
	}
	for _, tc := range cases {
		t.Run(tc.mech+map[bool]string{true: "", false: " wrong secret"}[tc.ok], func(t *testing.T) {
			// In clear text, so that the tap sees the SASL payloads to look
			// for.
			e := ctlsProvider(t, false, func(p *Provider) { p.AllowInsecureAuth = true })
			debug, logs, tap := &syncBuffer{}, &syncBuffer{}, &wireTap{}
			c := ctlsCustomer(e, &ctlsSink{}, logs)
			c.Secret = tc.secret
			c.AllowInsecureAuth = true
			c.Mechanisms = []string{tc.mech}
			c.Debug = debug
			c.Dial = tap.dial
			res, err := c.Fetch(context.Background())
			out := debug.String()
			if tc.ok {
				require.NoError(t, err)
				assert.Equal(t, 1, res.Messages)
				for _, want := range []string{
					e.addr + " C: EHLO customer.test",
					e.addr + " P: 250 ATRN",
					e.addr + " C: ATRN example.org",
					e.addr + " P: 250 2.0.0 OK now reversing the connection",
					// After the swap.
					e.addr + " C: 220 customer.test ESMTP Service Ready",
					e.addr + " P: EHLO provider.test",
					e.addr + " P: MAIL FROM:<sender@x.test>",
					e.addr + " P: Subject: over TLS",
					e.addr + " P: QUIT",
					e.addr + " C: 221 ",
				} {
					assert.Contains(t, out, want)
				}
			} else {
				require.ErrorIs(t, err, ErrAuthFailed)
				assert.Contains(t, out, "P: 535 ")
			}
			assert.Contains(t, out, tc.auth+"\n")
			if tc.mech != "PLAIN" {
				assert.Contains(t, out, "P: 334 <redacted>\n")
				assert.Contains(t, out, "C: <redacted>\n")
			}

			payloads := saslPayloads(tap)
			require.NotEmpty(t, payloads, "the tap saw the exchange")
			payloads = append(payloads, tc.secret, base64.StdEncoding.EncodeToString([]byte(tc.secret)))
			for _, p := range payloads {
				assert.NotContains(t, out, p, "the transcript holds a SASL payload")
				assert.NotContains(t, logs.String(), p, "the log holds a SASL payload")
			}
		})
	}
}

func TestCustomerOpportunisticTLS(t *testing.T) {
	t.Run("offered: STARTTLS, verified", func(t *testing.T) {
		e := ctlsProvider(t, false, withTLS)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.OpportunisticTLS = true
		c.TLSConfig = &tls.Config{RootCAs: pki.Pool}
		res, err := c.Fetch(context.Background())
		require.NoError(t, err)
		require.NotNil(t, res.TLS)
		assert.Equal(t, []string{"EHLO customer.test", "STARTTLS", "EHLO customer.test"}, clientLines(e.debug.String())[:3])
	})
	t.Run("offered, a certificate that does not verify: no fallback", func(t *testing.T) {
		e := ctlsProvider(t, false, withTLS)
		c := ctlsCustomer(e, &ctlsSink{}, nil)
		c.OpportunisticTLS = true // and the system's roots
		_, err := c.Fetch(context.Background())
		var ve *tls.CertificateVerificationError
		require.ErrorAs(t, err, &ve)
		assert.Equal(t, []string{"EHLO customer.test", "STARTTLS"}, clientLines(e.debug.String()))
		assert.Equal(t, 1, e.q.Len())
	})
	t.Run("not offered: clear text, with a warning", func(t *testing.T) {
		e := ctlsProvider(t, false)
		var logs syncBuffer
		c := ctlsCustomer(e, &ctlsSink{}, &logs)
		c.OpportunisticTLS = true
		res, err := c.Fetch(context.Background())
		require.NoError(t, err)
		assert.Nil(t, res.TLS)
		assert.Equal(t, 1, res.Messages)
		assert.Contains(t, logs.String(), `level=WARN msg="odmr: the provider does not offer STARTTLS; the session runs in clear text"`)
	})
}
