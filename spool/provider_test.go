package spool

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/saslmech"
	"github.com/go-odmr/odmr/internal/smtptest"
)

// oneConnListener hands out one connection, then waits to be closed.
type oneConnListener struct {
	conn   chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{conn: make(chan net.Conn, 1), closed: make(chan struct{})}
	l.conn <- c
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conn:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return &net.TCPAddr{} }

// customerSession is the customer's SMTP server after the role swap.
type customerSession struct {
	got  *[]smtptest.Message
	mu   *sync.Mutex
	cur  smtptest.Message
	done func()
}

func (s *customerSession) Reset()        { s.cur = smtptest.Message{} }
func (s *customerSession) Logout() error { s.done(); return nil }
func (s *customerSession) Mail(from string, _ *smtp.MailOptions) error {
	s.cur = smtptest.Message{From: from}
	return nil
}
func (s *customerSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	switch to {
	case "gone@example.org":
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	case "busy@example.org":
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Mailbox full"}
	}
	s.cur.To = append(s.cur.To, to)
	return nil
}
func (s *customerSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.Body = string(b)
	s.mu.Lock()
	*s.got = append(*s.got, s.cur)
	s.mu.Unlock()
	return nil
}

// pullThroughProvider runs one ODMR session of odmr.Provider over a pipe,
// with the spool as its queue, and plays the customer: AUTH, ATRN, then a
// go-smtp server on the reversed connection.
func pullThroughProvider(t *testing.T, s *Spool, domain string, opts ...func(*odmr.Provider)) (atrnReply int, got []smtptest.Message) {
	t.Helper()
	p := &odmr.Provider{
		Hostname: "provider.test",
		Authenticator: odmr.AuthenticatorFunc(func(_ context.Context, user string) ([]byte, error) {
			if user != "alice" {
				return nil, odmr.ErrUnknownUser
			}
			return []byte("alice-secret"), nil
		}),
		Authorizer: odmr.DomainAuthorizerFunc(func(context.Context, string) ([]string, error) {
			return []string{"example.org", "example.com"}, nil
		}),
		Queue:  s,
		Logger: slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		o(p)
	}
	provConn, custConn := net.Pipe()
	served := make(chan error, 1)
	go func() { served <- p.Serve(provConn) }()
	custConn.SetDeadline(time.Now().Add(30 * time.Second))

	tp := textproto.NewConn(custConn)
	expect := func(code int) string {
		t.Helper()
		c, msg, err := tp.ReadResponse(0)
		require.NoError(t, err)
		require.Equal(t, code, c, msg)
		return msg
	}
	cmd := func(code int, line string) string {
		t.Helper()
		require.NoError(t, tp.PrintfLine("%s", line))
		return expect(code)
	}
	expect(220)
	cmd(250, "EHLO customer.test")
	chal, err := base64.StdEncoding.DecodeString(cmd(334, "AUTH CRAM-MD5"))
	require.NoError(t, err)
	resp, err := saslmech.NewCRAMMD5Client("alice", "alice-secret").Next(chal)
	require.NoError(t, err)
	cmd(235, base64.StdEncoding.EncodeToString(resp))
	require.NoError(t, tp.PrintfLine("ATRN %s", domain))
	code, _, err := tp.ReadResponse(0)
	require.NoError(t, err)
	if code != 250 {
		custConn.Close()
		<-served
		return code, nil
	}

	var mu sync.Mutex
	done := make(chan struct{})
	var once sync.Once
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &customerSession{got: &got, mu: &mu, done: func() { once.Do(func() { close(done) }) }}, nil
	}))
	srv.Domain = "customer.test"
	l := newOneConnListener(custConn)
	go srv.Serve(l)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the provider did not finish delivering")
	}
	smtptest.Shutdown(t, srv)
	<-served
	mu.Lock()
	defer mu.Unlock()
	return code, got
}

func TestThroughProvider(t *testing.T) {
	f := newFixture(t)
	code, _ := pullThroughProvider(t, f.s, "example.org")
	assert.Equal(t, 453, code, "nothing queued")

	body := checksummed("through the provider", []byte(".a line with a dot\r\nand 8-bit: \xc3\xa9\r\n"))
	id := f.enqueue("sender@origin.test", body, "u@example.org", "gone@example.org", "busy@example.org", "w@example.com")
	code, got := pullThroughProvider(t, f.s, "example.org")
	require.Equal(t, 250, code)
	require.Len(t, got, 1)
	assert.Equal(t, "sender@origin.test", got[0].From)
	assert.Equal(t, []string{"u@example.org"}, got[0].To)
	assert.Equal(t, body, got[0].Body)
	assert.NoError(t, verifyChecksum(got[0].Body))

	info, err := f.s.Stat(id)
	require.NoError(t, err)
	states := map[string]State{}
	for _, r := range info.Recipients {
		states[r.Addr] = r.State
	}
	assert.Equal(t, map[string]State{
		"u@example.org": Delivered, "gone@example.org": Failed, "busy@example.org": Queued, "w@example.com": Queued,
	}, states)
	assert.Equal(t, 1, info.Recipients[2].Attempts)
	assert.ErrorIs(t, info.Recipients[2].LastError, &odmr.Error{Code: 452})

	_, err = f.s.FlushBounces(context.Background())
	require.NoError(t, err)
	_, dsns := f.bounces.All()
	require.Len(t, dsns, 1)
	p := parseDSN(t, dsns[0])
	require.Len(t, p.recipients, 1)
	assert.Equal(t, "smtp; 550 5.1.1 No such user", p.recipient("gone@example.org").Get("Diagnostic-Code"))
	assert.Contains(t, p.headers, "Subject: through the provider")

	// The other customer gets its recipient; busy@ stays for later.
	code, got = pullThroughProvider(t, f.s, "example.com")
	require.Equal(t, 250, code)
	require.Len(t, got, 1)
	assert.Equal(t, []string{"w@example.com"}, got[0].To)
	assert.True(t, has(t, f.s, "example.org"))
	assert.False(t, has(t, f.s, "example.com"))
}
