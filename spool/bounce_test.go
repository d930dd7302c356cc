package spool

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
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

	f.bounces.Fail(errors.New("smarthost unreachable"))
	sent, err := f.s.FlushBounces(ctx)
	assert.ErrorContains(t, err, "smarthost unreachable")
	assert.Zero(t, sent)
	n, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Equal(t, 1, n, "kept for a retry")

	// The periodic flush honours the delay before the next attempt ...
	f.bounces.Fail(nil)
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
	_, dsns := f.bounces.All()
	require.Len(t, dsns, 1)
	n, err = f.s.PendingBounces()
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestPermanentlyRefusedDSNGoesToDead(t *testing.T) {
	f := newFixture(t)
	f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "gone@example.org")
	failOne(t, f.s, "example.org")
	f.bounces.Fail(&odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "no such sender"})
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
		_, dsns := f.bounces.All()
		assert.Len(t, dsns, 1, "sent as soon as written")

		f.enqueue("s@origin.test", "Subject: y\r\n\r\ny\r\n", "later@example.org")
		time.Sleep(59 * time.Minute)
		synctest.Wait()
		assert.True(t, has(t, f.s, "example.org"))
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		assert.False(t, has(t, f.s, "example.org"), "expired by the maintenance")
		_, dsns = f.bounces.All()
		require.Len(t, dsns, 2)
		assert.Equal(t, "4.4.7", parseDSN(t, dsns[1]).recipient("later@example.org").Get("Status"))
	})
}

func TestSMTPBouncer(t *testing.T) {
	h := &smtptest.Smarthost{}
	h.Start(t)
	f := newFixture(t, func(o *Options) {
		o.Bouncer = &SMTPBouncer{Addr: h.Addr, Security: Plaintext, Hostname: "mx.provider.test", Timeout: 10 * time.Second}
	})
	f.enqueue("sender@origin.test", "Subject: lost\r\n\r\n.dot line\r\n", "gone@example.org")
	failOne(t, f.s, "example.org")
	sent, err := f.s.FlushBounces(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, sent)
	mails := h.Messages()
	require.Len(t, mails, 1)
	m := mails[0]
	assert.Equal(t, "", m.From, "MAIL FROM:<>")
	assert.Equal(t, []string{"sender@origin.test"}, m.To)
	p := parseDSN(t, m.Body)
	assert.Equal(t, "smtp; 550 5.1.1 User unknown", p.recipient("gone@example.org").Get("Diagnostic-Code"))
}

func TestSMTPBouncerErrors(t *testing.T) {
	// A smarthost that takes AUTH in clear, though the bouncer must not
	// send it so, and one for each answer to RCPT.
	h := &smtptest.Smarthost{AllowInsecureAuth: true}
	h.Start(t)
	addr := h.Addr
	refusing := func(code int, ec smtp.EnhancedCode, msg string) string {
		h := &smtptest.Smarthost{Rcpt: func(string) error {
			return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: msg}
		}}
		h.Start(t)
		return h.Addr
	}
	env := odmr.Envelope{ID: "x", From: "", To: []string{"sender@origin.test"}}
	ctx := context.Background()

	// The zero Security requires STARTTLS, which this smarthost lacks.
	err := (&SMTPBouncer{Addr: addr, Timeout: 10 * time.Second}).Bounce(ctx, env, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	require.Error(t, err)
	assert.False(t, odmr.Permanent(err), "retried: %v", err)

	// No password in clear without consent.
	err = (&SMTPBouncer{Addr: addr, Security: Plaintext, Auth: fakeSASL{}}).Bounce(ctx, env, strings.NewReader("x\r\n"))
	assert.ErrorContains(t, err, "without TLS")

	err = (&SMTPBouncer{Addr: refusing(550, smtp.EnhancedCode{5, 1, 1}, "no such user"), Security: Plaintext}).Bounce(ctx, env, strings.NewReader("x\r\n"))
	assert.True(t, odmr.Permanent(err), "a 5xx is permanent: %v", err)
	err = (&SMTPBouncer{Addr: refusing(451, smtp.EnhancedCode{4, 3, 0}, "later"), Security: Plaintext}).Bounce(ctx, env, strings.NewReader("x\r\n"))
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
