package odmr

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/saslmech"
)

const (
	testUser   = "alice"
	testSecret = "s3cret-Alice"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers (log handlers).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	p    *Provider
	q    memQueue
	addr string
	logs *syncBuffer
	// stopped is closed when ServeListener has returned: Shutdown or
	// Close has begun.
	stopped <-chan struct{}
}

// newFixture starts a provider on loopback with two accounts: alice owns
// example.org and example.com, bob owns example.net.
func newFixture(t *testing.T, opts ...func(*Provider)) *fixture {
	t.Helper()
	logs := &syncBuffer{}
	q := newMemQueue()
	accts := testAccounts{
		testUser: {Name: testUser, Secret: testSecret, Domains: []string{"example.org", "example.com"}},
		"bob":    {Name: "bob", Secret: "bobs-secret", Domains: []string{"example.net"}},
	}
	p := &Provider{
		Hostname:      "provider.test",
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         q,
		Logger:        slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(p)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	stopped := make(chan struct{})
	go func() { done <- p.ServeListener(l); close(stopped) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			p.Close()
		}
		assert.ErrorIs(t, <-done, ErrProviderClosed)
		// Secrets never reach the log.
		assert.NotContains(t, logs.String(), testSecret)
	})
	return &fixture{p: p, q: q, addr: l.Addr().String(), logs: logs, stopped: stopped}
}

// settle waits for the provider's sessions to end, so that what they log
// and record is there to be checked: Shutdown returns once every session
// has ended. The bound is a safety net, not a measure: a session that
// hangs fails the test instead of hanging it.
func (f *fixture) settle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, f.p.Shutdown(ctx), "the provider's sessions did not end")
}

func (f *fixture) enqueue(t *testing.T, from string, body string, to ...string) string {
	t.Helper()
	id, err := f.q.Enqueue(Envelope{From: from, To: to}, strings.NewReader(body))
	require.NoError(t, err)
	return id
}

// client is a scripted customer speaking raw text.
type client struct {
	t    *testing.T
	conn net.Conn
	tp   *textproto.Conn
}

func (f *fixture) dial(t *testing.T) *client {
	t.Helper()
	conn, err := net.Dial("tcp", f.addr)
	require.NoError(t, err)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := &client{t: t, conn: conn, tp: textproto.NewConn(conn)}
	t.Cleanup(func() { conn.Close() })
	c.expect(220)
	return c
}

// expect reads one reply and checks its code.
func (c *client) expect(code int) string {
	c.t.Helper()
	got, msg, err := c.tp.ReadResponse(0)
	require.NoError(c.t, err)
	require.Equal(c.t, code, got, "reply text: %q", msg)
	return msg
}

// cmd sends a line and checks the reply code.
func (c *client) cmd(code int, line string) string {
	c.t.Helper()
	require.NoError(c.t, c.tp.PrintfLine("%s", line))
	return c.expect(code)
}

func (c *client) raw(s string) {
	c.t.Helper()
	_, err := io.WriteString(c.conn, s)
	require.NoError(c.t, err)
}

func (c *client) login() {
	c.t.Helper()
	c.cmd(250, "EHLO customer.test")
	c.authCRAM(testUser, testSecret, 235)
}

func (c *client) authCRAM(user, secret string, code int) {
	c.t.Helper()
	chal := c.cmd(334, "AUTH CRAM-MD5")
	raw, err := base64.StdEncoding.DecodeString(chal)
	require.NoError(c.t, err)
	resp, _ := saslmech.NewCRAMMD5Client(user, secret).Next(raw)
	c.cmd(code, base64.StdEncoding.EncodeToString(resp))
}

// expectClosed checks that the provider closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	_, err := c.tp.ReadLine()
	require.ErrorIs(c.t, err, io.EOF)
}

func TestGreetingAndBasicCommands(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	// Lower-case verbs are the same commands.
	c.cmd(250, "noop")
	c.cmd(250, "RSET")
	c.cmd(250, "HELO customer.test")
	c.cmd(501, "EHLO")
	c.cmd(221, "QUIT")
	c.expectClosed()
}

func TestEHLOAdvertisesAUTHAndATRNInOneWrite(t *testing.T) {
	// net.Pipe delivers each Write to one Read, so one Read returning the
	// whole reply proves it was sent in one write (fetchmail reads it so).
	f := newFixture(t)
	srv, cli := net.Pipe()
	go f.p.Serve(srv)
	defer cli.Close()
	cli.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := cli.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "220 provider.test on-demand mail relay server ready\r\n", string(buf[:n]))
	_, err = cli.Write([]byte("EHLO vm\r\n"))
	require.NoError(t, err)
	n, err = cli.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "250-provider.test\r\n250-AUTH SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5\r\n250-ENHANCEDSTATUSCODES\r\n250 ATRN\r\n", string(buf[:n]))
}

func TestEHLOAdvertisesPLAINWhenAllowed(t *testing.T) {
	f := newFixture(t, func(p *Provider) { p.AllowInsecureAuth = true })
	c := f.dial(t)
	msg := c.cmd(250, "EHLO customer.test")
	assert.Contains(t, msg, "AUTH SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN")
}

func TestOtherCommands502(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	for _, cmd := range []string{"MAIL FROM:<a@b.c>", "RCPT TO:<x@example.org>", "DATA", "VRFY alice", "EXPN list", "TURN", "ETRN example.org", "HELP", "XYZZY"} {
		c.cmd(502, cmd)
	}
	c.cmd(221, "QUIT")
}

func TestRepeatedErrorsEndSessionWith421(t *testing.T) {
	f := newFixture(t, func(p *Provider) { p.MaxErrors = 3 })
	c := f.dial(t)
	c.cmd(502, "MAIL FROM:<a@b.c>")
	c.cmd(502, "DATA")
	c.cmd(421, "VRFY x")
	c.expectClosed()
}

func TestMalformedLines(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	// A line longer than the limit is answered, and the session goes on.
	c.raw("EHLO " + strings.Repeat("a", 5000) + "\r\n")
	c.expect(500)
	c.raw("NOOP\rNOOP\r\n")
	c.expect(500)
	c.raw("NOOP\x00\r\n")
	c.expect(500)
	c.cmd(250, "NOOP")
	// An endless line closes the session, with 421 as RFC 5321 section 3.8
	// asks of a server that closes.
	c.raw(strings.Repeat("x", 100<<10))
	c.expect(421)
	c.expectClosed()
}

func TestHTTPRequestClosesSession(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	c.cmd(421, "GET / HTTP/1.1")
	c.expectClosed()
}

func TestAUTH(t *testing.T) {
	plain := func(authz, user, pass string) string {
		return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name     string
		insecure bool
		script   func(c *client)
	}{
		{"CRAM-MD5 succeeds", false, func(c *client) { c.authCRAM(testUser, testSecret, 235) }},
		{"CRAM-MD5 wrong secret is 535", false, func(c *client) {
			c.authCRAM(testUser, "wrong", 535)
		}},
		{"CRAM-MD5 unknown user is 535", false, func(c *client) { c.authCRAM("mallory", testSecret, 535) }},
		{"CRAM-MD5 with an initial response is refused", false, func(c *client) {
			c.cmd(535, "AUTH CRAM-MD5 "+b64("x"))
		}},
		{"mechanism is case-insensitive", false, func(c *client) {
			c.cmd(334, "auth cram-md5")
			c.cmd(535, b64("alice 00000000000000000000000000000000"))
		}},
		{"* cancels with 501", false, func(c *client) {
			c.cmd(334, "AUTH CRAM-MD5")
			c.cmd(501, "*")
		}},
		{"* as initial response cancels", true, func(c *client) { c.cmd(501, "AUTH PLAIN *") }},
		{"invalid base64 is 501", false, func(c *client) {
			c.cmd(334, "AUTH CRAM-MD5")
			c.cmd(501, "!!!not base64!!!")
		}},
		{"invalid base64 initial response is 501", true, func(c *client) { c.cmd(501, "AUTH PLAIN %%%") }},
		{"unknown mechanism is 504", false, func(c *client) { c.cmd(504, "AUTH GSSAPI") }},
		{"missing mechanism is 501", false, func(c *client) { c.cmd(501, "AUTH") }},
		{"PLAIN without TLS is refused with 538", false, func(c *client) {
			c.cmd(538, "AUTH PLAIN "+plain("", testUser, testSecret))
		}},
		{"LOGIN without TLS is refused with 538", false, func(c *client) { c.cmd(538, "AUTH LOGIN") }},
		{"PLAIN with initial response", true, func(c *client) {
			c.cmd(235, "AUTH PLAIN "+plain("", testUser, testSecret))
		}},
		{"PLAIN after empty challenge", true, func(c *client) {
			c.cmd(334, "AUTH PLAIN")
			c.cmd(235, plain(testUser, testUser, testSecret))
		}},
		{"PLAIN wrong password is 535", true, func(c *client) {
			c.cmd(535, "AUTH PLAIN "+plain("", testUser, "nope"))
		}},
		{"PLAIN authorization identity of another user is 535", true, func(c *client) {
			c.cmd(535, "AUTH PLAIN "+plain("bob", testUser, testSecret))
		}},
		{"LOGIN", true, func(c *client) {
			assert.Equal(t, b64("Username:"), c.cmd(334, "AUTH LOGIN"))
			assert.Equal(t, b64("Password:"), c.cmd(334, b64(testUser)))
			c.cmd(235, b64(testSecret))
		}},
		{"LOGIN with initial response", true, func(c *client) {
			c.cmd(334, "AUTH LOGIN "+b64(testUser))
			c.cmd(535, b64("wrong"))
		}},
		{"second AUTH after success is 503", false, func(c *client) {
			c.authCRAM(testUser, testSecret, 235)
			c.cmd(503, "AUTH CRAM-MD5")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, func(p *Provider) { p.AllowInsecureAuth = tt.insecure })
			c := f.dial(t)
			c.t = t
			c.cmd(250, "EHLO customer.test")
			tt.script(c)
			c.cmd(221, "QUIT")
		})
	}
}

func TestAUTHBeforeEHLOIs503(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	c.cmd(503, "AUTH CRAM-MD5")
}

func TestTooManyAuthFailuresClose(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	for i := 0; i < defaults.MaxAuthFailures; i++ {
		c.authCRAM(testUser, "wrong", 535)
	}
	c.authCRAM(testUser, "wrong", 421)
	c.expectClosed()
}

func TestAuthStoreFailureIs454(t *testing.T) {
	f := newFixture(t, func(p *Provider) {
		p.Authenticator = AuthenticatorFunc(func(ctx context.Context, u string) ([]byte, error) {
			return nil, errors.New("database down")
		})
	})
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	c.authCRAM(testUser, testSecret, 454)
	assert.Contains(t, f.logs.String(), "database down")
}

func TestATRNReplies(t *testing.T) {
	t.Run("530 before AUTH", func(t *testing.T) {
		f := newFixture(t)
		f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "u@example.org")
		c := f.dial(t)
		c.cmd(250, "EHLO customer.test")
		c.cmd(530, "ATRN example.org")
		c.cmd(530, "ATRN")
	})
	t.Run("501 for bad arguments", func(t *testing.T) {
		f := newFixture(t)
		c := f.dial(t)
		c.login()
		for _, arg := range []string{"exa_mple.org", "example..org", "-example.org", "example.org,", ",", "ex ample.org", "exämple.org", "a@b.org"} {
			c.cmd(501, "ATRN "+arg)
		}
	})
	t.Run("450 for another account's domain, sending nothing", func(t *testing.T) {
		f := newFixture(t)
		f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "u@example.org")
		f.enqueue(t, "s@x.test", "Subject: y\r\n\r\nhi\r\n", "v@example.net")
		c := f.dial(t)
		c.login()
		msg := c.cmd(450, "ATRN example.org,example.net")
		assert.Contains(t, msg, "example.net")
		assert.Equal(t, 2, f.q.Len())
		// The session stays usable.
		c.cmd(250, "NOOP")
		c.cmd(221, "QUIT")
	})
	t.Run("451 when the authorizer fails", func(t *testing.T) {
		f := newFixture(t, func(p *Provider) {
			p.Authorizer = DomainAuthorizerFunc(func(context.Context, string) ([]string, error) {
				return nil, errors.New("ldap timeout")
			})
		})
		c := f.dial(t)
		c.login()
		c.cmd(451, "ATRN example.org")
	})
	t.Run("451 when the queue fails", func(t *testing.T) {
		f := newFixture(t, func(p *Provider) { p.Queue = failingQueue{} })
		c := f.dial(t)
		c.login()
		c.cmd(451, "ATRN example.org")
	})
	t.Run("453 when nothing is queued", func(t *testing.T) {
		f := newFixture(t)
		f.enqueue(t, "s@x.test", "Subject: y\r\n\r\nhi\r\n", "v@example.net")
		c := f.dial(t)
		c.login()
		c.cmd(453, "ATRN example.org,example.com")
		c.cmd(453, "ATRN")
		c.cmd(221, "QUIT")
	})
	t.Run("450 for an identity without domains", func(t *testing.T) {
		f := newFixture(t, func(p *Provider) {
			p.Authorizer = DomainAuthorizerFunc(func(context.Context, string) ([]string, error) { return nil, nil })
		})
		c := f.dial(t)
		c.login()
		c.cmd(450, "ATRN")
	})
	t.Run("250 as a single line, liberal parsing", func(t *testing.T) {
		for _, arg := range []string{"example.org", "EXAMPLE.ORG.", "example.com, example.org", "example.org,example.org", ""} {
			f := newFixture(t)
			f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "u@example.org")
			c := f.dial(t)
			c.login()
			line := "ATRN"
			if arg != "" {
				line += " " + arg
			}
			require.NoError(t, c.tp.PrintfLine("%s", line))
			reply, err := c.tp.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "250 2.0.0 OK now reversing the connection", reply, "ATRN %q", arg)
		}
	})
}

type failingQueue struct{}

func (failingQueue) HasMail(context.Context, []string) (bool, error) {
	return false, errors.New("spool unreadable")
}
func (failingQueue) Claim(context.Context, []string) (Batch, error) {
	return nil, errors.New("spool unreadable")
}

// received is a message the scripted customer took.
type received struct {
	from string
	to   []string
	data string
}

// scriptedCustomer plays the customer's SMTP server after a 250 to ATRN.
// rcptReply picks the reply to each RCPT; dataReply the reply after the
// data; nil means 250.
type scriptedCustomer struct {
	ehlo      []string // the EHLO reply's extension lines
	rcptReply func(rcpt string) string
	dataReply func(m received) string
	// cutAfter closes the connection after this many bytes of DATA.
	cutAfter int
	// greeted means the 220 was already sent.
	greeted bool
}

func (sc scriptedCustomer) run(t *testing.T, c *client) ([]received, []string) {
	t.Helper()
	var got []received
	var cmds []string
	if !sc.greeted {
		c.raw("220 customer.test ready\r\n")
	}
	var cur received
	for {
		line, err := c.tp.ReadLine()
		if err != nil {
			return got, cmds
		}
		cmds = append(cmds, line)
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		switch verb {
		case "EHLO":
			ext := sc.ehlo
			if ext == nil {
				ext = []string{"8BITMIME", "SIZE 0", "ENHANCEDSTATUSCODES"}
			}
			reply := "250-customer.test\r\n"
			for i, e := range ext {
				sep := "-"
				if i == len(ext)-1 {
					sep = " "
				}
				reply += "250" + sep + e + "\r\n"
			}
			c.raw(reply)
		case "MAIL":
			cur = received{from: strings.TrimSuffix(strings.TrimPrefix(strings.Fields(line)[1], "FROM:<"), ">")}
			c.raw("250 2.1.0 OK\r\n")
		case "RCPT":
			rcpt := strings.TrimSuffix(strings.TrimPrefix(line[len("RCPT "):], "TO:<"), ">")
			reply := "250 2.1.5 OK"
			if sc.rcptReply != nil {
				reply = sc.rcptReply(rcpt)
			}
			if strings.HasPrefix(reply, "2") {
				cur.to = append(cur.to, rcpt)
			}
			c.raw(reply + "\r\n")
		case "DATA":
			c.raw("354 go ahead\r\n")
			var data bytes.Buffer
			for {
				l, err := c.tp.R.ReadString('\n')
				if err != nil {
					return got, cmds
				}
				if l == ".\r\n" {
					break
				}
				data.WriteString(l)
				if sc.cutAfter > 0 && data.Len() >= sc.cutAfter {
					c.conn.Close()
					return got, cmds
				}
			}
			cur.data = data.String()
			reply := "250 2.0.0 queued"
			if sc.dataReply != nil {
				reply = sc.dataReply(cur)
			}
			if strings.HasPrefix(reply, "2") {
				got = append(got, cur)
			}
			c.raw(reply + "\r\n")
		case "RSET":
			c.raw("250 2.0.0 OK\r\n")
		case "QUIT":
			c.raw("221 2.0.0 bye\r\n")
			c.expectClosed()
			return got, cmds
		default:
			c.raw("502 5.5.1 unexpected\r\n")
		}
	}
}

// pull logs in, sends ATRN and runs the scripted customer.
func (f *fixture) pull(t *testing.T, atrn string, sc scriptedCustomer) ([]received, []string) {
	t.Helper()
	c := f.dial(t)
	c.login()
	c.cmd(250, atrn)
	return sc.run(t, c)
}

func TestFullSessionDeliversThroughReversedConnection(t *testing.T) {
	f := newFixture(t)
	body1 := "From: s@x.test\r\nSubject: one\r\n\r\n.leading dot\r\n..two dots\r\n\xc3\xa9t\xc3\xa9 8-bit\r\n"
	f.enqueue(t, "s@x.test", body1, "u@example.org", "w@EXAMPLE.COM")
	f.enqueue(t, "", "Subject: bounce\r\n\r\nnull sender\r\n", "u@example.org")
	f.enqueue(t, "s@x.test", "Subject: other\r\n\r\nfor bob\r\n", "v@example.net", "u2@example.org")

	got, cmds := f.pull(t, "ATRN example.org,example.com", scriptedCustomer{})
	require.Len(t, got, 3)
	assert.Equal(t, "EHLO provider.test", cmds[0])
	// Dot-stuffing on the wire, undone by the receiver: here we read raw
	// lines, so the stuffed form shows.
	assert.Equal(t, "From: s@x.test\r\nSubject: one\r\n\r\n..leading dot\r\n...two dots\r\n\xc3\xa9t\xc3\xa9 8-bit\r\n", got[0].data)
	assert.Equal(t, []string{"u@example.org", "w@EXAMPLE.COM"}, got[0].to)
	assert.Contains(t, cmds, fmt.Sprintf("MAIL FROM:<s@x.test> BODY=8BITMIME SIZE=%d", len(body1)))
	assert.Equal(t, "", got[1].from)
	// Only the recipient in the requested domains is sent.
	assert.Equal(t, []string{"u2@example.org"}, got[2].to)
	assert.Equal(t, "QUIT", cmds[len(cmds)-1])

	// bob's recipient stays queued; everything else is gone.
	require.Equal(t, 1, f.q.Len())
	assert.Equal(t, []string{"v@example.net"}, f.q.Messages()[0].To)
	assert.Equal(t, 0, f.q.Queued("example.org"))
	assert.Equal(t, 1, f.q.Queued("example.net"))
	f.settle(t)
	assert.Contains(t, f.logs.String(), "delivered=4")
}

func TestRecipientOutcomesReachTheQueue(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "ok@example.org", "gone@example.org", "full@example.org")
	got, _ := f.pull(t, "ATRN example.org", scriptedCustomer{rcptReply: func(r string) string {
		switch r {
		case "gone@example.org":
			return "550 5.1.1 no such user"
		case "full@example.org":
			return "452 4.2.2 mailbox full"
		}
		return "250 OK"
	}})
	require.Len(t, got, 1)
	assert.Equal(t, []string{"ok@example.org"}, got[0].to)
	failed := f.q.Failed()
	require.Len(t, failed, 1)
	assert.Equal(t, "gone@example.org", failed[0].Recipient)
	assert.ErrorIs(t, failed[0].Err, &Error{Code: 550})
	require.Equal(t, []string{"full@example.org"}, f.q.Messages()[0].To)
	attempts, lastErr := f.q.LastError(id, "full@example.org")
	assert.Equal(t, 1, attempts)
	assert.ErrorContains(t, lastErr, "mailbox full")
}

func TestDataRepliesDecideTheOutcome(t *testing.T) {
	f := newFixture(t)
	f.enqueue(t, "s@x.test", "Subject: temp\r\n\r\nhi\r\n", "a@example.org")
	f.enqueue(t, "s@x.test", "Subject: perm\r\n\r\nhi\r\n", "b@example.org")
	f.pull(t, "ATRN", scriptedCustomer{dataReply: func(m received) string {
		if strings.Contains(m.data, "temp") {
			return "451 4.3.0 try later"
		}
		return "554 5.6.0 rejected content"
	}})
	assert.Equal(t, 1, f.q.Len())
	require.Len(t, f.q.Failed(), 1)
	assert.Equal(t, "b@example.org", f.q.Failed()[0].Recipient)
}

func TestConnectionCutMidDataLeavesMailQueued(t *testing.T) {
	f := newFixture(t)
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef\r\n", 4096)
	id := f.enqueue(t, "s@x.test", big, "u@example.org")
	got, _ := f.pull(t, "ATRN example.org", scriptedCustomer{cutAfter: 10000})
	assert.Empty(t, got)
	f.settle(t)
	_, err := f.q.LastError(id, "u@example.org")
	assert.Error(t, err)
	assert.Equal(t, 1, f.q.Len())
	assert.Empty(t, f.q.Failed())
}

func TestCustomerWithoutSMTPUTF8GetsPermanentFailure(t *testing.T) {
	f := newFixture(t)
	f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "jos\u00e9@example.org")
	got, _ := f.pull(t, "ATRN example.org", scriptedCustomer{})
	assert.Empty(t, got)
	require.Len(t, f.q.Failed(), 1)
	assert.ErrorIs(t, f.q.Failed()[0].Err, &Error{Code: 553})
}

func TestSizeLimitOfCustomerIsRespected(t *testing.T) {
	f := newFixture(t)
	f.enqueue(t, "s@x.test", "Subject: x\r\n\r\n"+strings.Repeat("x", 200)+"\r\n", "u@example.org")
	got, cmds := f.pull(t, "ATRN example.org", scriptedCustomer{ehlo: []string{"SIZE 100"}})
	assert.Empty(t, got)
	assert.NotContains(t, strings.Join(cmds, "\n"), "MAIL FROM")
	require.Len(t, f.q.Failed(), 1)
	assert.ErrorIs(t, f.q.Failed()[0].Err, &Error{Code: 552})
}

func TestPipelinedBytesAfterATRNReachTheReversedSession(t *testing.T) {
	// A customer that sends its 220 greeting in the same packet as ATRN
	// must not lose it to the command reader's read-ahead.
	f := newFixture(t)
	f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "u@example.org")
	c := f.dial(t)
	c.login()
	c.raw("ATRN example.org\r\n220 customer.test pipelined greeting\r\n")
	assert.Equal(t, "2.0.0 OK now reversing the connection", c.expect(250))
	got, cmds := scriptedCustomer{greeted: true}.run(t, c)
	assert.Equal(t, "EHLO provider.test", cmds[0])
	require.Len(t, got, 1)
}

func TestTwoSessionsNeverDeliverTheSameMessageTwice(t *testing.T) {
	f := newFixture(t)
	const n = 40
	for i := 0; i < n; i++ {
		f.enqueue(t, "s@x.test", fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i), fmt.Sprintf("u%d@example.org", i))
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for s := 0; s < 4; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", f.addr)
			if !assert.NoError(t, err) {
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(20 * time.Second))
			c := &client{t: t, conn: conn, tp: textproto.NewConn(conn)}
			c.expect(220)
			c.login()
			require.NoError(t, c.tp.PrintfLine("ATRN example.org"))
			code, _, _ := c.tp.ReadResponse(0)
			if code != 250 {
				return // another session took everything already
			}
			got, _ := scriptedCustomer{}.run(t, c)
			mu.Lock()
			defer mu.Unlock()
			for _, m := range got {
				seen[m.to[0]]++
			}
		}()
	}
	wg.Wait()
	require.Len(t, seen, n)
	for rcpt, times := range seen {
		assert.Equal(t, 1, times, rcpt)
	}
	assert.Equal(t, 0, f.q.Len())
}

func TestShutdownEndsIdleSessions(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go f.p.Shutdown(ctx)
	assert.Contains(t, c.expect(421), "shutting down")
	c.expectClosed()
}

func TestServeWithoutConfigurationAnswers421(t *testing.T) {
	srv, cli := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- (&Provider{Logger: slog.New(slog.DiscardHandler)}).Serve(srv) }()
	line, err := bufio.NewReader(cli).ReadString('\n')
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(line, "421 "), line)
	assert.ErrorContains(t, <-done, "Authenticator")
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

func TestEightBitMessageToSevenBitCustomerFailsPermanently(t *testing.T) {
	f := newFixture(t)
	f.enqueue(t, "s@x.test", "Subject: x\r\n\r\n\xc3\xa9t\xc3\xa9\r\n", "u@example.org")
	f.enqueue(t, "s@x.test", "Subject: y\r\n\r\nplain ASCII\r\n", "u@example.org")
	got, _ := f.pull(t, "ATRN example.org", scriptedCustomer{ehlo: []string{"SIZE 0"}})
	require.Len(t, got, 1)
	assert.Contains(t, got[0].data, "plain ASCII")
	require.Len(t, f.q.Failed(), 1)
	assert.ErrorIs(t, f.q.Failed()[0].Err, &Error{Code: 554})
}

func TestAddressWithCRLFFailsOnlyThatRecipient(t *testing.T) {
	for _, pipelining := range []bool{false, true} {
		f := newFixture(t)
		f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "ok@example.org", "bad\r\nDATA@example.org")
		f.enqueue(t, "s\r\nRSET@x.test", "Subject: y\r\n\r\nhi\r\n", "u@example.org")
		f.enqueue(t, "s@x.test", "Subject: z\r\n\r\nafter\r\n", "u@example.org")
		ext := []string{"8BITMIME", "SIZE 0"}
		if pipelining {
			ext = append(ext, "PIPELINING")
		}
		got, cmds := f.pull(t, "ATRN example.org", scriptedCustomer{ehlo: ext})
		require.Len(t, got, 2, "pipelining %v", pipelining)
		assert.Equal(t, []string{"ok@example.org"}, got[0].to)
		assert.Contains(t, got[1].data, "after")
		for _, c := range cmds {
			assert.NotEqual(t, "RSET@x.test>", c)
			assert.NotContains(t, c, "DATA@")
		}
		require.Len(t, f.q.Failed(), 2)
		assert.ErrorIs(t, f.q.Failed()[0].Err, &Error{Code: 553})
		assert.Equal(t, 0, f.q.Len())
	}
}
