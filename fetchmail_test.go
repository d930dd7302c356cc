package odmr

import (
	"context"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/fetchmailtest"
	"github.com/go-odmr/odmr/internal/smtptest"
)

// These tests run the real fetchmail, the ODMR customer people actually
// use, against Provider. fetchmail relays the reversed session to a go-smtp
// server in the test. Outside CI they skip when fetchmail is missing; under
// CI (CI set) a missing fetchmail fails them.

// sinkMessage is what the local MTA behind fetchmail received.
type sinkMessage struct {
	From string
	To   []string
	Data string
}

// smtpSink is a go-smtp server standing in for fetchmail's local MTA.
type smtpSink struct {
	// slow delays the reply to each message's data, as a real MTA's
	// queue write does.
	slow time.Duration

	mu   sync.Mutex
	msgs []sinkMessage
}

func (s *smtpSink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{sink: s}, nil }

func (s *smtpSink) messages() []sinkMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkMessage(nil), s.msgs...)
}

type sinkSession struct {
	sink *smtpSink
	cur  sinkMessage
}

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.cur = sinkMessage{From: from}
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.cur.To = append(ss.cur.To, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.cur.Data = string(b)
	time.Sleep(ss.sink.slow)
	ss.sink.mu.Lock()
	ss.sink.msgs = append(ss.sink.msgs, ss.cur)
	ss.sink.mu.Unlock()
	return nil
}

func (ss *sinkSession) Reset()        {}
func (ss *sinkSession) Logout() error { return nil }

// startSink starts the local MTA. hide are EHLO keywords it does not
// offer, though go-smtp's server would: they go out with their first
// letter made an X.
func startSink(t *testing.T, hide ...string) (*smtpSink, string) {
	t.Helper()
	sink := &smtpSink{}
	srv := smtp.NewServer(sink)
	srv.Domain = "sink.test"
	srv.AllowInsecureAuth = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(hidingListener{l, hide})
	t.Cleanup(func() { smtptest.Shutdown(t, srv) })
	return sink, l.Addr().String()
}

// hidingListener's connections rename the EHLO keywords in hide in what
// the server writes.
type hidingListener struct {
	net.Listener
	hide []string
}

func (l hidingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil || len(l.hide) == 0 {
		return c, err
	}
	return hidingConn{c, l.hide}, nil
}

type hidingConn struct {
	net.Conn
	hide []string
}

func (c hidingConn) Write(p []byte) (int, error) {
	s := string(p)
	for _, h := range c.hide {
		s = strings.ReplaceAll(s, "250-"+h+"\r\n", "250-X"+h[1:]+"\r\n")
		s = strings.ReplaceAll(s, "250 "+h+"\r\n", "250 X"+h[1:]+"\r\n")
	}
	return c.Conn.Write([]byte(s))
}

// runFetchmail polls the provider at addr once, relaying to sinkAddr, and
// returns fetchmail's exit code and output.
func runFetchmail(t *testing.T, bin, addr, user, secret, domains, sinkAddr string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	poll := fetchmailtest.Poll{Addr: addr, User: user, Secret: secret, Domains: strings.Split(domains, ","), Sink: sinkAddr}
	out, err := poll.Run(ctx, bin)
	require.NoError(t, ctx.Err(), "fetchmail timed out; its log ends:\n%s", lastLines(string(out), 30))
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	assert.NotContains(t, string(out), "panic")
	return code, string(out)
}

func TestFetchmailInterop(t *testing.T) {
	bin := fetchmailtest.Binary(t)
	body := "From: s@x.test\r\nTo: u@example.org\r\nSubject: interop\r\n\r\n.dot-stuffed line\r\n\xc3\xa9t\xc3\xa9\r\n"

	t.Run("mail delivered", func(t *testing.T) {
		f := newFixture(t)
		f.enqueue(t, "s@x.test", body, "u@example.org")
		f.enqueue(t, "", "Subject: second\r\n\r\nfor example.com\r\n", "w@example.com")
		sink, sinkAddr := startSink(t)
		code, out := runFetchmail(t, bin, f.addr, testUser, testSecret, "example.org,example.com", sinkAddr)
		require.Equal(t, 0, code, out)
		msgs := sink.messages()
		require.Len(t, msgs, 2, out)
		assert.Equal(t, sinkMessage{From: "s@x.test", To: []string{"u@example.org"}, Data: body}, msgs[0])
		assert.Equal(t, []string{"w@example.com"}, msgs[1].To)
		assert.Equal(t, 0, f.q.Len(), "delivered mail is acknowledged to the queue")
		assert.NotContains(t, out, testSecret)
	})

	t.Run("mail delivered in lock-step to an MTA without PIPELINING", func(t *testing.T) {
		// fetchmail relays the MTA's EHLO reply: the provider's one
		// delivery engine sends one command at a time, and DATA.
		f := newFixture(t)
		f.enqueue(t, "s@x.test", body, "u@example.org")
		f.enqueue(t, "s@x.test", "Subject: second\r\n\r\ntwo\r\n", "w@example.org", "x@example.org")
		sink, sinkAddr := startSink(t, "PIPELINING", "CHUNKING")
		code, out := runFetchmail(t, bin, f.addr, testUser, testSecret, "example.org", sinkAddr)
		require.Equal(t, 0, code, out)
		msgs := sink.messages()
		require.Len(t, msgs, 2, out)
		assert.Equal(t, sinkMessage{From: "s@x.test", To: []string{"u@example.org"}, Data: body}, msgs[0])
		assert.Equal(t, []string{"w@example.org", "x@example.org"}, msgs[1].To)
		assert.Equal(t, 0, f.q.Len())
		f.settle(t)
		assert.Contains(t, f.logs.String(), "pipelining=false chunking=false")
	})

	t.Run("a large message after a small one, with BDAT", func(t *testing.T) {
		// fetchmail relays line by line and, while it waits for the end
		// of a line from the provider, reads nothing from its MTA. A
		// provider that stopped with part of a line sent (a chunk cut
		// mid-line) to wait for the MTA's replies waited forever; seen
		// against Postfix with a 2 MB message.
		f := newFixture(t)
		f.enqueue(t, "s@x.test", body, "u@example.org")
		line := strings.Repeat("0123456789", 99) + "\r\n" // 1000 bytes: 64 KiB chunks end mid-line
		big := "Subject: big\r\n\r\n" + strings.Repeat(line, 300)
		f.enqueue(t, "s@x.test", big, "u@example.org")
		f.enqueue(t, "s@x.test", body, "u@example.org")
		sink, sinkAddr := startSink(t)
		sink.slow = 300 * time.Millisecond // the provider gets ahead of the replies
		code, out := runFetchmail(t, bin, f.addr, testUser, testSecret, "example.org", sinkAddr)
		require.Equal(t, 0, code, lastLines(out, 20))
		msgs := sink.messages()
		require.Len(t, msgs, 3, lastLines(out, 20))
		assert.Equal(t, big, msgs[1].Data)
		assert.Equal(t, 0, f.q.Len())
	})

	t.Run("no mail is 453 and exit 0", func(t *testing.T) {
		f := newFixture(t)
		f.enqueue(t, "s@x.test", body, "v@example.net")
		sink, sinkAddr := startSink(t)
		code, out := runFetchmail(t, bin, f.addr, testUser, testSecret, "example.org", sinkAddr)
		assert.Equal(t, 0, code, out)
		assert.Contains(t, out, "453")
		assert.Empty(t, sink.messages())
	})

	t.Run("refused domain is 450 and exit 4", func(t *testing.T) {
		f := newFixture(t)
		f.enqueue(t, "s@x.test", body, "u@example.org")
		f.enqueue(t, "s@x.test", body, "v@example.net")
		sink, sinkAddr := startSink(t)
		code, out := runFetchmail(t, bin, f.addr, testUser, testSecret, "example.org,example.net", sinkAddr)
		assert.Equal(t, 4, code, out)
		assert.Contains(t, out, "450")
		assert.Empty(t, sink.messages())
		assert.Equal(t, 2, f.q.Len())
	})

	t.Run("wrong secret is 535", func(t *testing.T) {
		f := newFixture(t)
		f.enqueue(t, "s@x.test", body, "u@example.org")
		sink, sinkAddr := startSink(t)
		code, out := runFetchmail(t, bin, f.addr, testUser, "not-the-secret", "example.org", sinkAddr)
		// fetchmail leaks its internal SM_ERROR (128) for a 535 after the
		// CRAM-MD5 response; any non-zero status is a refusal to it.
		assert.NotEqual(t, 0, code, out)
		assert.Contains(t, out, "535")
		assert.Empty(t, sink.messages())
		assert.Equal(t, 1, f.q.Len())
	})

	t.Run("single-label domain as fetchmail sends its host name", func(t *testing.T) {
		accts := testAccounts{"vmuser": {Name: "vmuser", Secret: "pw-vm", Domains: []string{"vm"}}}
		f := newFixture(t, func(p *Provider) { p.Authenticator, p.Authorizer = accts, accts })
		f.enqueue(t, "s@x.test", body, "root@vm")
		sink, sinkAddr := startSink(t)
		code, out := runFetchmail(t, bin, f.addr, "vmuser", "pw-vm", "vm", sinkAddr)
		require.Equal(t, 0, code, out)
		require.Len(t, sink.messages(), 1)
	})
}

// lastLines is the end of a long log.
func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
