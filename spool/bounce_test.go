package spool

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/smtptest"
)

// failOne leases the next message for domain and fails it permanently.
func failOne(t *testing.T, s *Spool, domain string) {
	t.Helper()
	b, err := s.Claim(context.Background(), []string{domain})
	require.NoError(t, err)
	defer b.Close()
	d, err := next(t, b)
	require.NoError(t, err)
	d.complete(t, errUnknownUser)
}

func TestDirBouncer(t *testing.T) {
	out := filepath.Join(t.TempDir(), "bounces")
	f := newFixture(t, func(o *Options) { o.Bouncer = DirBouncer{Dir: out} })
	f.enqueue("s@origin.test", "Subject: lost\r\n\r\nx\r\n", "gone@example.org")
	failOne(t, f.s, "example.org")
	sent, err := f.s.FlushBounces(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, sent)
	names, err := os.ReadDir(out)
	require.NoError(t, err)
	require.Len(t, names, 1, "no temporary file left")
	name := names[0].Name()
	assert.True(t, strings.HasSuffix(name, ".eml"), name)
	assert.True(t, isID(strings.TrimSuffix(name, ".eml")), name)
	data, err := os.ReadFile(filepath.Join(out, name))
	require.NoError(t, err)
	p := parseDSN(t, string(data))
	assert.Equal(t, "5.1.1", p.recipient("gone@example.org").Get("Status"))
	assert.Contains(t, p.headers, "Subject: lost")
	n, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestFailingBouncerIsRetried(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "gone@example.org")
	failOne(t, f.s, "example.org")

	f.bounces.fail = errors.New("smarthost unreachable")
	sent, err := f.s.FlushBounces(ctx)
	assert.ErrorContains(t, err, "smarthost unreachable")
	assert.Zero(t, sent)
	n, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Equal(t, 1, n, "kept for a retry")

	// The periodic flush honours the delay before the next attempt ...
	f.bounces.fail = nil
	sent, err = f.s.flush(ctx, true)
	require.NoError(t, err)
	assert.Zero(t, sent)
	// ... which survives a restart, as does the DSN.
	require.NoError(t, f.s.Close())
	f.s = f.open()
	sent, err = f.s.flush(ctx, true)
	require.NoError(t, err)
	assert.Zero(t, sent)
	sent, err = f.s.FlushBounces(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, sent)
	_, dsns := f.bounces.all()
	require.Len(t, dsns, 1)
	n, err = f.s.PendingBounces()
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestPermanentlyRefusedDSNGoesToDead(t *testing.T) {
	f := newFixture(t)
	f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "gone@example.org")
	failOne(t, f.s, "example.org")
	f.bounces.fail = &odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "no such sender"}
	_, err := f.s.FlushBounces(context.Background())
	assert.Error(t, err)
	n, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Zero(t, n)
	dead, err := readNames(f.s.path(deadDir))
	require.NoError(t, err)
	assert.Len(t, dead, 2, "the report and its envelope, kept for the operator")
	assert.Contains(t, f.logs.String(), "moved to the dead directory")
}

func TestNoBouncerKeepsDSNs(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Bouncer = nil })
	f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "gone@example.org")
	failOne(t, f.s, "example.org")
	sent, err := f.s.FlushBounces(context.Background())
	require.NoError(t, err)
	assert.Zero(t, sent)
	require.NoError(t, f.s.Close())

	// Opened later with a Bouncer, the spool sends what waited.
	f.s = f.open()
	sent, err = f.s.FlushBounces(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, sent)
}

// With background work on, a new DSN reaches the Bouncer by itself, and
// old messages expire by themselves.
func TestBackgroundWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, func(o *Options) { o.MaintenanceInterval = time.Minute; o.MaxAge = time.Hour })
		f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "gone@example.org")
		failOne(t, f.s, "example.org")
		synctest.Wait()
		_, dsns := f.bounces.all()
		assert.Len(t, dsns, 1, "sent as soon as written")

		f.enqueue("s@origin.test", "Subject: y\r\n\r\ny\r\n", "later@example.org")
		time.Sleep(59 * time.Minute)
		synctest.Wait()
		assert.True(t, has(t, f.s, "example.org"))
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		assert.False(t, has(t, f.s, "example.org"), "expired by the maintenance")
		_, dsns = f.bounces.all()
		require.Len(t, dsns, 2)
		assert.Equal(t, "4.4.7", parseDSN(t, dsns[1]).recipient("later@example.org").Get("Status"))
	})
}

// smarthost is a go-smtp server that records what it receives.
type smarthost struct {
	mu    sync.Mutex
	mails []smarthostMail
	// rcpt, if set, answers RCPT TO.
	rcpt func(to string) error
}

type smarthostMail struct {
	from string
	to   []string
	data string
}

type smarthostSession struct {
	h   *smarthost
	cur smarthostMail
}

func (s *smarthostSession) Reset()        { s.cur = smarthostMail{} }
func (s *smarthostSession) Logout() error { return nil }
func (s *smarthostSession) Mail(from string, _ *smtp.MailOptions) error {
	s.cur.from = from
	return nil
}
func (s *smarthostSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.h.rcpt != nil {
		if err := s.h.rcpt(to); err != nil {
			return err
		}
	}
	s.cur.to = append(s.cur.to, to)
	return nil
}
func (s *smarthostSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.data = string(b)
	s.h.mu.Lock()
	s.h.mails = append(s.h.mails, s.cur)
	s.h.mu.Unlock()
	return nil
}

func startSmarthost(t *testing.T, h *smarthost) string {
	t.Helper()
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &smarthostSession{h: h}, nil
	}))
	srv.Domain = "smarthost.test"
	srv.AllowInsecureAuth = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { smtptest.Shutdown(t, srv) })
	return l.Addr().String()
}

func TestSMTPBouncer(t *testing.T) {
	h := &smarthost{}
	addr := startSmarthost(t, h)
	f := newFixture(t, func(o *Options) {
		o.Bouncer = &SMTPBouncer{Addr: addr, Security: Plaintext, Hostname: "mx.provider.test", Timeout: 10 * time.Second}
	})
	f.enqueue("sender@origin.test", "Subject: lost\r\n\r\n.dot line\r\n", "gone@example.org")
	failOne(t, f.s, "example.org")
	sent, err := f.s.FlushBounces(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, sent)
	h.mu.Lock()
	defer h.mu.Unlock()
	require.Len(t, h.mails, 1)
	m := h.mails[0]
	assert.Equal(t, "", m.from, "MAIL FROM:<>")
	assert.Equal(t, []string{"sender@origin.test"}, m.to)
	p := parseDSN(t, m.data)
	assert.Equal(t, "smtp; 550 5.1.1 User unknown", p.recipient("gone@example.org").Get("Diagnostic-Code"))
}

func TestSMTPBouncerErrors(t *testing.T) {
	h := &smarthost{}
	addr := startSmarthost(t, h)
	env := odmr.Envelope{ID: "x", From: "", To: []string{"sender@origin.test"}}
	ctx := context.Background()

	// The zero Security requires STARTTLS, which this smarthost lacks.
	err := (&SMTPBouncer{Addr: addr, Timeout: 10 * time.Second}).Bounce(ctx, env, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	require.Error(t, err)
	assert.False(t, odmr.Permanent(err), "retried: %v", err)

	// No password in clear without consent.
	err = (&SMTPBouncer{Addr: addr, Security: Plaintext, Auth: fakeSASL{}}).Bounce(ctx, env, strings.NewReader("x\r\n"))
	assert.ErrorContains(t, err, "without TLS")

	h.rcpt = func(string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	err = (&SMTPBouncer{Addr: addr, Security: Plaintext}).Bounce(ctx, env, strings.NewReader("x\r\n"))
	assert.True(t, odmr.Permanent(err), "a 5xx is permanent: %v", err)
	h.rcpt = func(string) error {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"}
	}
	err = (&SMTPBouncer{Addr: addr, Security: Plaintext}).Bounce(ctx, env, strings.NewReader("x\r\n"))
	require.Error(t, err)
	assert.False(t, odmr.Permanent(err))

	// A canceled context stops it.
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	err = (&SMTPBouncer{Addr: addr, Security: Plaintext}).Bounce(canceled, env, strings.NewReader("x\r\n"))
	assert.Error(t, err)
}

type fakeSASL struct{}

func (fakeSASL) Start() (string, []byte, error) { return "PLAIN", []byte("\x00u\x00p"), nil }
func (fakeSASL) Next([]byte) ([]byte, error)    { return nil, nil }
