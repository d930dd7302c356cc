package odmr_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/internal/testcert"
	"github.com/go-odmr/odmr/maildir"
	"github.com/go-odmr/odmr/memqueue"
)

// The accounts of the test provider: alice owns two domains, bob a third.
const (
	custUser   = "alice"
	custSecret = "s3cret-alice"
)

func custAccounts() accounts.Map {
	return accounts.Map{
		custUser: {Name: custUser, Secret: custSecret, Domains: []string{"example.org", "example.com"}},
		"bob":    {Name: "bob", Secret: "bobs-secret", Domains: []string{"example.net"}},
	}
}

// custLogger discards logs unless ODMR_TEST_LOG is set.
func custLogger() *slog.Logger {
	if os.Getenv("ODMR_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// custProvider starts a Provider with q on loopback and returns its
// address; it is shut down when the test ends.
func custProvider(t *testing.T, q odmr.QueueSource, opts ...func(*odmr.Provider)) string {
	t.Helper()
	accts := custAccounts()
	p := &odmr.Provider{
		Hostname:      "provider.example.net",
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         q,
		Logger:        custLogger(),
	}
	for _, o := range opts {
		o(p)
	}
	return serveLoopback(t, p)
}

// serveLoopback serves p on a loopback port and returns its address; p
// is shut down when the test ends, and closed if that takes too long.
func serveLoopback(t *testing.T, p *odmr.Provider) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- p.ServeListener(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			p.Close()
		}
		<-done
	})
	return l.Addr().String()
}

// custCustomer returns a customer of alice's account for addr.
func custCustomer(addr string, sink odmr.MessageSink, domains ...string) *odmr.Customer {
	return &odmr.Customer{
		Addr:     addr,
		Username: custUser,
		Secret:   custSecret,
		Domains:  domains,
		Hostname: "customer.example.org",
		Sink:     sink,
		Logger:   custLogger(),
	}
}

// custNoLeaks fails the test if it ends with more goroutines than it
// started with. Call it first, so that its check runs after every other
// cleanup.
//
// The tests that use it run over real TCP, outside a synctest bubble, so
// there is no event to wait on: a goroutine that is ending cannot be
// joined from here. It polls with a back-off instead, and returns as soon
// as the count is back; custLeakWait bounds the wait only so that a real
// leak fails rather than hangs.
func custNoLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(custLeakWait)
		for pause := time.Millisecond; runtime.NumGoroutine() > before; pause = min(2*pause, 100*time.Millisecond) {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutines leaked: %d at the start, %d at the end, %v later\n%s", before, runtime.NumGoroutine(), custLeakWait, buf[:n])
				return
			}
			time.Sleep(pause)
		}
	})
}

// custLeakWait is how long custNoLeaks lets a test's goroutines take to
// end. Ending takes microseconds; this is a safety net sized for a loaded
// machine under the race detector, not a measure of anything.
const custLeakWait = 30 * time.Second

// closeWatch is a memqueue.Queue that reports each batch the provider
// closes. The provider records every outcome of a session before it
// closes the batch, so a test that must see what a broken session left
// in the queue waits on batchClosed instead of polling the queue.
type closeWatch struct {
	*memqueue.Queue
	closed chan struct{}
}

func newCloseWatch() *closeWatch {
	return &closeWatch{Queue: &memqueue.Queue{}, closed: make(chan struct{}, 16)}
}

func (w *closeWatch) Claim(ctx context.Context, domains []string) (odmr.Batch, error) {
	b, err := w.Queue.Claim(ctx, domains)
	if err != nil {
		return nil, err
	}
	return watchedBatch{b, w.closed}, nil
}

type watchedBatch struct {
	odmr.Batch
	closed chan<- struct{}
}

func (b watchedBatch) Close() error {
	err := b.Batch.Close()
	select {
	case b.closed <- struct{}{}:
	default: // no test waits for that many batches
	}
	return err
}

// batchClosed waits until the provider has closed a batch of w. The
// bound is a safety net, so that a provider that never ends its session
// fails the test instead of hanging it.
func (w *closeWatch) batchClosed(t *testing.T) {
	t.Helper()
	select {
	case <-w.closed:
	case <-time.After(custLeakWait):
		t.Fatalf("the provider did not close its batch within %v", custLeakWait)
	}
}

func custEnqueue(t *testing.T, q *memqueue.Queue, from, body string, to ...string) string {
	t.Helper()
	id, err := q.Enqueue(odmr.Envelope{From: from, To: to}, strings.NewReader(body))
	require.NoError(t, err)
	return id
}

// memSink keeps what it receives.
type memSink struct {
	mu   sync.Mutex
	msgs []gotMessage
}

type gotMessage struct {
	env      odmr.Envelope
	body     string // as the provider sent it
	received string // the Received: field the customer put in front
	session  odmr.ReversedSession
}

func (s *memSink) Deliver(ctx context.Context, env odmr.Envelope, body io.Reader) error {
	br := bufio.NewReader(body)
	trace, err := cutReceived(br)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(br)
	if err != nil {
		return err
	}
	s.mu.Lock()
	info, _ := odmr.ReversedSessionFromContext(ctx)
	s.msgs = append(s.msgs, gotMessage{env, string(b), trace, info})
	s.mu.Unlock()
	return nil
}

// cutReceived reads the Received: header field the customer puts in
// front of each message, folded lines and all, and returns it; "" when
// the message does not start with one.
func cutReceived(br *bufio.Reader) (string, error) {
	head, _ := br.Peek(len("Received:"))
	if string(head) != "Received:" {
		return "", nil
	}
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			return b.String(), err
		}
		if next, _ := br.Peek(1); len(next) == 0 || (next[0] != ' ' && next[0] != '\t') {
			return b.String(), nil
		}
	}
}

func (s *memSink) received() []gotMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]gotMessage(nil), s.msgs...)
}

// rcptSet is the recipients of messages, sorted, for comparisons.
func rcptSet(msgs []gotMessage) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.env.To...)
	}
	sort.Strings(out)
	return out
}

func TestCustomerFetchesSeveralDomainsEndToEnd(t *testing.T) {
	custNoLeaks(t)
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: one\r\n\r\nFirst.\r\n", "u1@example.org")
	custEnqueue(t, q, "b@sender.test", "Subject: two\r\n\r\nSecond.\r\n", "u2@example.com", "u3@example.com")
	// One message for both of alice's domains and for bob's: alice gets
	// her two recipients, bob's stays queued.
	custEnqueue(t, q, "", "Subject: three\r\n\r\nThird.\r\n", "u4@example.org", "b1@example.net", "u5@example.com")
	custEnqueue(t, q, "c@sender.test", "Subject: bob only\r\n\r\nFor bob.\r\n", "b2@example.net")
	addr := custProvider(t, q)

	sink := &memSink{}
	res, err := custCustomer(addr, sink, "example.org", "Example.COM").Fetch(context.Background())
	require.NoError(t, err)
	assert.False(t, res.NoMail)
	assert.Equal(t, []string{"example.org", "example.com"}, res.Domains)
	assert.Equal(t, "SCRAM-SHA-256", res.Mechanism, "the strongest mechanism offered")
	assert.Equal(t, 3, res.Messages)
	assert.Equal(t, 5, res.Recipients)
	assert.Zero(t, res.Refused)

	got := sink.received()
	require.Len(t, got, 3)
	assert.Equal(t, []string{"u1@example.org", "u2@example.com", "u3@example.com", "u4@example.org", "u5@example.com"}, rcptSet(got))
	var total int64
	bodies := map[string]string{}
	for _, m := range got {
		bodies[m.env.From] = m.body
		total += int64(len(m.body))
	}
	assert.Equal(t, total, res.Bytes)
	assert.Equal(t, "Subject: two\r\n\r\nSecond.\r\n", bodies["b@sender.test"])
	assert.Equal(t, "Subject: three\r\n\r\nThird.\r\n", bodies[""], "the null sender arrives as \"\"")

	// What is left is bob's.
	assert.Zero(t, q.Queued("example.org"))
	assert.Zero(t, q.Queued("example.com"))
	assert.Equal(t, 2, q.Queued("example.net"))
	assert.Empty(t, q.Failed())
}

func TestCustomerMechanismChoice(t *testing.T) {
	cert, pool := testcert.SelfSigned(t, "provider.example.net")
	noChallengeResponse := func(p *odmr.Provider) { p.DisableSCRAM, p.DisableCRAMMD5 = true, true }
	cases := []struct {
		name     string
		provider []func(*odmr.Provider)
		customer func(*odmr.Customer)
		want     string // mechanism, or "" for ErrNoAuthMechanism
	}{
		// SCRAM first: it proves that the provider knows the secret too.
		{"default", nil, nil, "SCRAM-SHA-256"},
		// The mechanism RFC 2645 makes mandatory, when asked for.
		{"pinned CRAM-MD5", nil, func(c *odmr.Customer) { c.Mechanisms = []string{"CRAM-MD5"} }, "CRAM-MD5"},
		{"SCRAM-SHA-1", []func(*odmr.Provider){func(p *odmr.Provider) { p.DisableCRAMMD5 = true }},
			func(c *odmr.Customer) { c.Mechanisms = []string{"SCRAM-SHA-1", "CRAM-MD5"} }, "SCRAM-SHA-1"},
		// PLAIN in clear only when the customer allows it too.
		{"PLAIN refused in clear", []func(*odmr.Provider){noChallengeResponse, func(p *odmr.Provider) { p.AllowInsecureAuth = true }},
			nil, ""},
		{"PLAIN allowed in clear", []func(*odmr.Provider){noChallengeResponse, func(p *odmr.Provider) { p.AllowInsecureAuth = true }},
			func(c *odmr.Customer) { c.AllowInsecureAuth = true }, "PLAIN"},
		{"LOGIN", []func(*odmr.Provider){noChallengeResponse, func(p *odmr.Provider) { p.AllowInsecureAuth = true }},
			func(c *odmr.Customer) { c.AllowInsecureAuth, c.Mechanisms = true, []string{"LOGIN"} }, "LOGIN"},
		// Under STARTTLS PLAIN needs no permission.
		{"PLAIN under STARTTLS", []func(*odmr.Provider){noChallengeResponse, func(p *odmr.Provider) {
			p.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		}}, func(c *odmr.Customer) {
			c.TLSConfig = &tls.Config{RootCAs: pool, ServerName: "provider.example.net"}
		}, "PLAIN"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := &memqueue.Queue{}
			custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org")
			addr := custProvider(t, q, tc.provider...)
			sink := &memSink{}
			c := custCustomer(addr, sink, "example.org")
			if tc.customer != nil {
				tc.customer(c)
			}
			res, err := c.Fetch(context.Background())
			if tc.want == "" {
				require.ErrorIs(t, err, odmr.ErrNoAuthMechanism)
				assert.Contains(t, err.Error(), "AllowInsecureAuth")
				assert.Equal(t, 1, q.Len())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, res.Mechanism)
			assert.Equal(t, 1, res.Messages)
		})
	}
}

func TestCustomerSTARTTLSRequiredButNotOffered(t *testing.T) {
	q := &memqueue.Queue{}
	addr := custProvider(t, q)
	c := custCustomer(addr, &memSink{}, "example.org")
	c.TLSConfig = &tls.Config{}
	_, err := c.Fetch(context.Background())
	assert.ErrorIs(t, err, odmr.ErrNoStartTLS)
}

func TestCustomerSTARTTLSVerifiesTheCertificate(t *testing.T) {
	cert, _ := testcert.SelfSigned(t, "provider.example.net")
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org")
	addr := custProvider(t, q, func(p *odmr.Provider) { p.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}} })
	c := custCustomer(addr, &memSink{}, "example.org")
	c.TLSConfig = &tls.Config{ServerName: "provider.example.net"} // system roots: untrusted
	_, err := c.Fetch(context.Background())
	var ue *tls.CertificateVerificationError
	assert.ErrorAs(t, err, &ue)
	assert.Equal(t, 1, q.Len())
}

func TestCustomerBareATRNPullsEveryDomainOfTheAccount(t *testing.T) {
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org")
	custEnqueue(t, q, "a@sender.test", "Subject: y\r\n\r\ny\r\n", "u2@example.com")
	addr := custProvider(t, q)
	sink := &memSink{}
	c := custCustomer(addr, sink)
	c.AcceptDomains = []string{"example.org", "example.com"} // a bare ATRN needs them
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Empty(t, res.Domains)
	assert.Equal(t, 2, res.Messages)
	assert.Zero(t, q.Len())
}

func TestCustomerNoMailIs453AndNotAnError(t *testing.T) {
	custNoLeaks(t)
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "b1@example.net")
	addr := custProvider(t, q)
	sink := &memSink{}
	res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.True(t, res.NoMail)
	assert.Zero(t, res.Messages)
	assert.Empty(t, sink.received())
}

func TestCustomerATRNForAnotherAccountsDomainIs450(t *testing.T) {
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org")
	custEnqueue(t, q, "a@sender.test", "Subject: y\r\n\r\ny\r\n", "b1@example.net")
	addr := custProvider(t, q)
	sink := &memSink{}
	// example.org is alice's, example.net is bob's: the whole request is
	// refused, and nothing at all is delivered (RFC 2645 section 5.2.1).
	res, err := custCustomer(addr, sink, "example.org", "example.net").Fetch(context.Background())
	require.Error(t, err)
	assert.ErrorIs(t, err, odmr.ErrATRNRefused)
	var e *odmr.Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, 450, e.Code)
	assert.True(t, e.Temporary())
	assert.Contains(t, err.Error(), "example.net")
	assert.False(t, res.NoMail)
	assert.Empty(t, sink.received())
	assert.Equal(t, 2, q.Len())
	assert.Equal(t, 1, q.Queued("example.org"))
}

func TestCustomerWrongSecretIs535(t *testing.T) {
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org")
	addr := custProvider(t, q)
	c := custCustomer(addr, &memSink{}, "example.org")
	c.Secret = "wrong"
	_, err := c.Fetch(context.Background())
	assert.ErrorIs(t, err, odmr.ErrAuthFailed)
	assert.NotContains(t, err.Error(), "wrong", "the secret never appears in errors")
	assert.Equal(t, 1, q.Len())
}

// refuseSink refuses one recipient at RCPT time.
type refuseSink struct {
	memSink
	refuse string
}

func (s *refuseSink) CheckRecipient(ctx context.Context, env odmr.Envelope, rcpt string) error {
	if rcpt == s.refuse {
		return &odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	}
	return nil
}

func TestCustomerRecipientRefusedByTheSinkFailsAtTheProvider(t *testing.T) {
	q := &memqueue.Queue{}
	id := custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "good@example.org", "nobody@example.org", "other@example.com")
	addr := custProvider(t, q)
	sink := &refuseSink{refuse: "nobody@example.org"}
	res, err := custCustomer(addr, sink, "example.org", "example.com").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages)
	assert.Equal(t, 2, res.Recipients)
	assert.Equal(t, 1, res.RefusedRecipients)

	got := sink.received()
	require.Len(t, got, 1)
	assert.Equal(t, []string{"good@example.org", "other@example.com"}, got[0].env.To)

	failed := q.Failed()
	require.Len(t, failed, 1, "the refused recipient failed permanently")
	assert.Equal(t, "nobody@example.org", failed[0].Recipient)
	var e *odmr.Error
	require.ErrorAs(t, failed[0].Err, &e)
	assert.Equal(t, 550, e.Code)
	assert.Equal(t, odmr.EnhancedCode{5, 1, 1}, e.EnhancedCode)
	assert.Equal(t, "No such user here", e.Message, "the sink's reply reaches the provider")
	assert.Zero(t, q.Len(), "message %s is done: delivered twice, failed once", id)
}

func TestCustomerSinkErrorsBecomeReplies(t *testing.T) {
	q := &memqueue.Queue{}
	custEnqueue(t, q, "perm@sender.test", "Subject: 1\r\n\r\n1\r\n", "u1@example.org")
	custEnqueue(t, q, "temp@sender.test", "Subject: 2\r\n\r\n2\r\n", "u2@example.org")
	custEnqueue(t, q, "other@sender.test", "Subject: 3\r\n\r\n3\r\n", "u3@example.org")
	addr := custProvider(t, q)
	sink := odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
		io.Copy(io.Discard, body)
		switch env.From {
		case "perm@sender.test":
			return &odmr.Error{Code: 552, EnhancedCode: odmr.EnhancedCode{5, 2, 2}, Message: "Mailbox full"}
		case "temp@sender.test":
			return odmr.ErrTryLater
		}
		// Not an *Error: answered 451 without the text.
		return errors.New("disk on fire at /secret/path")
	})
	res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 3, res.Refused)
	assert.Zero(t, res.Messages)

	failed := q.Failed()
	require.Len(t, failed, 1)
	assert.Equal(t, "u1@example.org", failed[0].Recipient)
	assert.True(t, odmr.Permanent(failed[0].Err))

	msgs := q.Messages()
	require.Len(t, msgs, 2, "temporary failures stay queued")
	for _, m := range msgs {
		_, lastErr := q.LastError(m.ID, m.To[0])
		var e *odmr.Error
		require.ErrorAs(t, lastErr, &e)
		assert.Equal(t, 451, e.Code)
		assert.NotContains(t, e.Message, "secret", "a sink's error text is never sent to the peer")
	}
}

// TestCustomerSinkOutOfSpaceIs452: a sink that fails for want of disk
// space (a full maildir) gets the provider RFC 5321's 452 4.3.1, not the
// 451 of any other failure; the message stays queued either way.
func TestCustomerSinkOutOfSpaceIs452(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT} {
		t.Run(errno.Error(), func(t *testing.T) { testSinkOutOfSpace(t, errno) })
	}
}

func testSinkOutOfSpace(t *testing.T, errno syscall.Errno) {
	q := &memqueue.Queue{}
	custEnqueue(t, q, "s@sender.test", "Subject: 1\r\n\r\n1\r\n", "u1@example.org")
	addr := custProvider(t, q)
	sink := odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
		io.Copy(io.Discard, body)
		return &fs.PathError{Op: "write", Path: "/var/mail/new/x", Err: errno}
	})
	res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Refused)
	msgs := q.Messages()
	require.Len(t, msgs, 1, "the message stays queued")
	_, lastErr := q.LastError(msgs[0].ID, msgs[0].To[0])
	var e *odmr.Error
	require.ErrorAs(t, lastErr, &e)
	assert.Equal(t, 452, e.Code)
	assert.Equal(t, odmr.EnhancedCode{4, 3, 1}, e.EnhancedCode)
	assert.NotContains(t, e.Message, "/var/mail", "a sink's error text is never sent to the peer")
}

func TestCustomerDotStuffingAnd8BitArriveByteForByte(t *testing.T) {
	body := "Subject: =?utf-8?q?dots?=\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		".\r\n" +
		"..\r\n" +
		".leading dot\r\n" +
		"...three\r\n" +
		" .space then dot\r\n" +
		strings.Repeat("a line longer than RFC 5321 allows, as real mail has ", 100) + "\r\n" +
		"Grüße, ½ € \xff\xfe raw bytes\r\n" +
		"\r\n" +
		".\r\n"
	for _, chunking := range []bool{false, true} {
		t.Run(map[bool]string{false: "DATA", true: "BDAT"}[chunking], func(t *testing.T) {
			q := &memqueue.Queue{}
			custEnqueue(t, q, "a@sender.test", body, "u1@example.org")
			addr := custProvider(t, q, func(p *odmr.Provider) { p.DisableChunking = !chunking })
			sink := &memSink{}
			res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
			require.NoError(t, err)
			got := sink.received()
			require.Len(t, got, 1)
			assert.Equal(t, body, got[0].body)
			assert.Equal(t, int64(len(body)), res.Bytes)
			assert.Equal(t, odmr.Body8BitMIME, got[0].env.Body)
		})
	}
}

// custQueue is a QueueSource of single messages whose bodies are made by
// a function, for bodies memqueue.Queue would not keep (too large, or with
// bare line endings it would repair).
type custQueue struct {
	env  odmr.Envelope
	open func() io.Reader

	mu      sync.Mutex
	done    bool
	results []odmr.RecipientResult
}

func (q *custQueue) HasMail(ctx context.Context, domains []string) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return !q.done, nil
}

func (q *custQueue) Claim(ctx context.Context, domains []string) (odmr.Batch, error) {
	return &custBatch{q: q}, nil
}

func (q *custQueue) outcome() []odmr.RecipientResult {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]odmr.RecipientResult(nil), q.results...)
}

type custBatch struct {
	q    *custQueue
	sent bool
}

func (b *custBatch) Next(ctx context.Context) (odmr.Message, error) {
	b.q.mu.Lock()
	defer b.q.mu.Unlock()
	if b.sent || b.q.done {
		return nil, io.EOF
	}
	b.sent = true
	return custMessage{b.q}, nil
}

func (b *custBatch) Close() error { return nil }

type custMessage struct{ q *custQueue }

func (m custMessage) Envelope() odmr.Envelope { return m.q.env }

func (m custMessage) Open() (io.ReadCloser, error) { return io.NopCloser(m.q.open()), nil }

func (m custMessage) Complete(ctx context.Context, results []odmr.RecipientResult) error {
	m.q.mu.Lock()
	defer m.q.mu.Unlock()
	m.q.results = results
	m.q.done = true
	for _, r := range results {
		if r.Err != nil && !odmr.Permanent(r.Err) {
			m.q.done = false
		}
	}
	return nil
}

// lineReader produces size bytes of numbered CRLF lines without holding
// them; a few lines start with a dot, to exercise dot-stuffing.
type lineReader struct {
	left, line int64
	pending    []byte
}

func (r *lineReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && r.left > 0 {
		if len(r.pending) == 0 {
			r.line++
			prefix := ""
			if r.line%1000 == 0 {
				prefix = "."
			}
			r.pending = fmt.Appendf(r.pending[:0], "%s%09d The quick brown fox jumps over the lazy dog; 8-bit: \xc3\xa9\r\n", prefix, r.line)
		}
		c := copy(p[n:], r.pending)
		if int64(c) > r.left {
			c = int(r.left)
		}
		n += c
		r.left -= int64(c)
		r.pending = r.pending[c:]
	}
	if n == 0 && r.left == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// bigBody returns a reader of the big message: a header, then lines,
// ending in CRLF.
func bigBody(size int64) io.Reader {
	head := "Subject: big\r\n\r\n"
	tail := "end\r\n"
	return io.MultiReader(strings.NewReader(head),
		&lineReader{left: size - int64(len(head)+len(tail))}, strings.NewReader(tail))
}

// hashSink hashes each body and throws it away.
type hashSink struct {
	mu   sync.Mutex
	sums [][32]byte
	n    int64
}

func (s *hashSink) Deliver(ctx context.Context, env odmr.Envelope, body io.Reader) error {
	br := bufio.NewReader(body)
	if _, err := cutReceived(br); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(h, br)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sums = append(s.sums, [32]byte(h.Sum(nil)))
	s.n += n
	return nil
}

func TestCustomerRelays100MiBWithBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 100 MiB")
	}
	const size = 100 << 20
	want := sha256.New()
	_, err := io.Copy(want, bigBody(size))
	require.NoError(t, err)

	q := &custQueue{
		env:  odmr.Envelope{ID: "big", From: "big@sender.test", To: []string{"u1@example.org"}, Size: size, Body: odmr.Body8BitMIME},
		open: func() io.Reader { return bigBody(size) },
	}
	addr := custProvider(t, q)

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()

	sink := &hashSink{}
	res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	close(stop)
	<-sampled
	require.NoError(t, err)
	require.Equal(t, 1, res.Messages)
	assert.Equal(t, int64(size), res.Bytes)
	require.Len(t, sink.sums, 1)
	assert.Equal(t, [32]byte(want.Sum(nil)), sink.sums[0], "the body arrives intact")
	require.Len(t, q.outcome(), 1)
	assert.NoError(t, q.outcome()[0].Err)

	growth := int64(peak) - int64(base.HeapInuse)
	t.Logf("heap in use: %d MiB before, %d MiB at the peak", base.HeapInuse>>20, peak>>20)
	assert.Less(t, growth, int64(64<<20), "provider and customer together must stream, not buffer")
}

func TestCustomerRefusesBareCR(t *testing.T) {
	// Our provider never sends a bare CR (see TestProviderNeverSendsBare*),
	// but another may: the customer refuses the message for good.
	got := make(chan int, 1)
	addr := fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		if !fakeReversed(c, raw) {
			return
		}
		for _, cmd := range []string{"MAIL FROM:<a@sender.test>", "RCPT TO:<u1@example.org>", "DATA"} {
			c.PrintfLine("%s", cmd)
			if _, _, err := c.ReadResponse(0); err != nil {
				return
			}
		}
		io.WriteString(raw, "Subject: smuggle\r\n\r\nline\rMAIL FROM:<x>\r\n.\r\n")
		code, _, _ := c.ReadResponse(0)
		got <- code
		c.PrintfLine("QUIT")
		c.ReadResponse(221)
	})
	sink := &memSink{}
	res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Refused)
	assert.Empty(t, sink.received())
	assert.Equal(t, 554, <-got)
}

// fakeReversed plays a provider up to the customer's EHLO reply after
// the swap (fakeLogin, 250 to ATRN, the greeting, EHLO).
func fakeReversed(c *textproto.Conn, raw net.Conn) bool {
	if !fakeLogin(c) {
		return false
	}
	if _, err := c.ReadLine(); err != nil { // ATRN
		return false
	}
	c.PrintfLine("250 OK now reversing the connection")
	if _, _, err := c.ReadResponse(220); err != nil {
		return false
	}
	c.PrintfLine("EHLO fake.example.net")
	_, _, err := c.ReadResponse(250)
	return err == nil
}

func TestCustomerMaxMessageSize(t *testing.T) {
	const limit = 4096
	var b strings.Builder
	b.WriteString("Subject: exact\r\n\r\n")
	for b.Len() < limit-100 {
		b.WriteString(strings.Repeat("x", 78) + "\r\n")
	}
	b.WriteString(strings.Repeat("y", limit-b.Len()-2) + "\r\n")
	exact := b.String()
	require.Len(t, exact, limit)
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", exact, "u1@example.org")
	custEnqueue(t, q, "b@sender.test", exact[:limit-2]+"x\r\n", "u2@example.org")
	addr := custProvider(t, q)
	sink := &memSink{}
	c := custCustomer(addr, sink, "example.org")
	c.MaxMessageSize = limit
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages, "a message of exactly the limit passes")
	require.Len(t, sink.received(), 1)
	assert.Equal(t, exact, sink.received()[0].body)
	failed := q.Failed()
	require.Len(t, failed, 1, "one byte more does not")
	assert.Equal(t, "u2@example.org", failed[0].Recipient)
	var e *odmr.Error
	require.ErrorAs(t, failed[0].Err, &e)
	assert.Equal(t, 552, e.Code)
}

func TestCustomerMaxMessageSizeWithoutDeclaredSize(t *testing.T) {
	// Without SIZE= in MAIL FROM the limit is enforced on the data.
	const limit = 4096
	q := &custQueue{
		env:  odmr.Envelope{ID: "big", From: "a@sender.test", To: []string{"u1@example.org"}},
		open: func() io.Reader { return bigBody(limit + 100) },
	}
	addr := custProvider(t, q)
	sink := &hashSink{}
	c := custCustomer(addr, sink, "example.org")
	c.MaxMessageSize = limit
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Refused)
	assert.Empty(t, sink.sums)
	out := q.outcome()
	require.Len(t, out, 1)
	var e *odmr.Error
	require.ErrorAs(t, out[0].Err, &e)
	assert.Equal(t, 552, e.Code)
}

func TestCustomerConnectionCutMidDataLeavesMailQueued(t *testing.T) {
	custNoLeaks(t)
	q := newCloseWatch()
	body := "Subject: cut\r\n\r\n" + strings.Repeat("a line of the message that will be cut\r\n", 50000)
	custEnqueue(t, q.Queue, "a@sender.test", body, "u1@example.org")
	addr := custProvider(t, q)

	var mu sync.Mutex
	var conn net.Conn
	sink := odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, r io.Reader) error {
		if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
			return err
		}
		mu.Lock()
		conn.Close() // the line drops in the middle of the message
		mu.Unlock()
		_, err := io.Copy(io.Discard, r)
		if err == nil {
			return errors.New("expected the body to break")
		}
		return err
	})
	c := custCustomer(addr, sink, "example.org")
	c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		cn, err := d.DialContext(ctx, network, addr)
		mu.Lock()
		conn = cn
		mu.Unlock()
		return cn, err
	}
	res, err := c.Fetch(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lost during a message")
	assert.Zero(t, res.Messages)

	// The provider notices when its next write fails; then the message is
	// released, and the next fetch gets it whole.
	q.batchClosed(t)
	attempts, _ := q.LastError("1", "u1@example.org")
	assert.Equal(t, 1, attempts)
	assert.Empty(t, q.Failed())
	sink2 := &memSink{}
	res, err = custCustomer(addr, sink2, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages)
	require.Len(t, sink2.received(), 1)
	assert.Equal(t, body, sink2.received()[0].body)
	assert.Zero(t, q.Len())
}

func TestCustomerCancelDuringDeliveryLeavesMailQueued(t *testing.T) {
	custNoLeaks(t)
	q := newCloseWatch()
	custEnqueue(t, q.Queue, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org")
	addr := custProvider(t, q)
	ctx, cancel := context.WithCancel(context.Background())
	sink := odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, r io.Reader) error {
		io.Copy(io.Discard, r)
		cancel()
		<-ctx.Done()
		return ctx.Err()
	})
	_, err := custCustomer(addr, sink, "example.org").Fetch(ctx)
	require.ErrorIs(t, err, context.Canceled)
	q.batchClosed(t)
	attempts, _ := q.LastError("1", "u1@example.org")
	assert.Equal(t, 1, attempts)
	assert.Equal(t, 1, q.Len())
}

// fakeProvider runs script on the first connection to a loopback listener
// and returns the listener's address.
func fakeProvider(t *testing.T, script func(c *textproto.Conn, raw net.Conn)) string {
	t.Helper()
	addr, _ := smtptest.Script(t, script)
	return addr
}

// fakeLogin plays the provider's side up to ATRN: greeting, an EHLO reply
// with ehlo as its keywords, and a CRAM-MD5 exchange that it accepts.
func fakeLogin(c *textproto.Conn, ehlo ...string) bool {
	if len(ehlo) == 0 {
		ehlo = []string{"AUTH CRAM-MD5", "ATRN"}
	}
	c.PrintfLine("220 fake.example.net ODMR ready")
	if _, err := c.ReadLine(); err != nil {
		return false
	}
	c.PrintfLine("250-fake.example.net")
	for i, kw := range ehlo {
		sep := "-"
		if i == len(ehlo)-1 {
			sep = " "
		}
		c.PrintfLine("250%s%s", sep, kw)
	}
	if _, err := c.ReadLine(); err != nil { // AUTH CRAM-MD5
		return false
	}
	c.PrintfLine("334 %s", base64.StdEncoding.EncodeToString([]byte("<1.2@fake.example.net>")))
	if _, err := c.ReadLine(); err != nil {
		return false
	}
	c.PrintfLine("235 2.7.0 Authentication successful")
	return true
}

func TestCustomerEximPatternIsNoMail(t *testing.T) {
	custNoLeaks(t)
	// Exim 4.99 with mail queued but not yet due: 250 to ATRN, then at
	// once a bare QUIT without waiting for the greeting, and a half-close.
	saw := make(chan [2]string, 1)
	addr := fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		if !fakeLogin(c) {
			return
		}
		c.ReadLine() // ATRN
		io.WriteString(raw, "250 ODMR provider turning line around\r\nQUIT\r\n")
		raw.(*net.TCPConn).CloseWrite()
		greeting, _ := c.ReadLine()
		bye, _ := c.ReadLine()
		io.Copy(io.Discard, raw)
		saw <- [2]string{greeting, bye}
	})
	sink := &memSink{}
	res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.True(t, res.NoMail)
	assert.Empty(t, sink.received())
	lines := <-saw
	assert.True(t, strings.HasPrefix(lines[0], "220 customer.example.org"), lines[0])
	assert.True(t, strings.HasPrefix(lines[1], "221"), lines[1])
}

func TestCustomerProviderClosingAfter250IsNoMail(t *testing.T) {
	// The variant where the provider just drops the line after 250.
	addr := fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		if !fakeLogin(c) {
			return
		}
		c.ReadLine()
		c.PrintfLine("250 OK")
	})
	res, err := custCustomer(addr, &memSink{}, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.True(t, res.NoMail)
}

func TestCustomerTypedErrors(t *testing.T) {
	atrnReply := func(line string) func(*textproto.Conn, net.Conn) {
		return func(c *textproto.Conn, raw net.Conn) {
			if fakeLogin(c) {
				c.ReadLine()
				c.PrintfLine("%s", line)
				c.ReadLine() // QUIT
				c.PrintfLine("221 bye")
			}
		}
	}
	cases := []struct {
		name   string
		script func(*textproto.Conn, net.Conn)
		is     error
		code   int
	}{
		// RFC 2645 section 7: a domain the account may not pull, or too
		// frequent requests.
		{"450", atrnReply("450 4.7.1 Access to domain example.org denied"), odmr.ErrATRNRefused, 450},
		// The provider cannot verify access now.
		{"451", atrnReply("451 4.3.0 Unable to process ATRN request now"), odmr.ErrTryLater, 451},
		// ATRN without authentication (a provider that lost track).
		{"530", atrnReply("530 5.7.0 Authentication required"), odmr.ErrAuthRequired, 530},
		// A provider that does not implement ATRN after all.
		{"502", atrnReply("502 5.5.1 Command not implemented"), odmr.ErrNotImplemented, 502},
		// Wrong credentials.
		{"535", func(c *textproto.Conn, raw net.Conn) {
			c.PrintfLine("220 fake ready")
			c.ReadLine()
			c.PrintfLine("250-fake\r\n250-AUTH CRAM-MD5\r\n250 ATRN")
			c.ReadLine()
			c.PrintfLine("334 PDEuMkBmYWtlPg==")
			c.ReadLine()
			c.PrintfLine("535 5.7.8 Authentication credentials invalid")
			c.ReadLine()
		}, odmr.ErrAuthFailed, 535},
		// A busy provider at the greeting.
		{"421 greeting", func(c *textproto.Conn, raw net.Conn) {
			c.PrintfLine("421 4.3.2 Too busy, try later")
		}, &odmr.Error{Code: 421}, 421},
		// Not an ODMR provider: the customer quits before AUTH.
		{"no ATRN", func(c *textproto.Conn, raw net.Conn) {
			c.PrintfLine("220 plain smtp")
			c.ReadLine()
			c.PrintfLine("250-smtp\r\n250 AUTH CRAM-MD5")
			c.ReadLine() // QUIT, not AUTH
		}, odmr.ErrNoATRN, 0},
		// Only mechanisms that send the secret, and no TLS.
		{"PLAIN only", func(c *textproto.Conn, raw net.Conn) {
			c.PrintfLine("220 odmr")
			c.ReadLine()
			c.PrintfLine("250-odmr\r\n250-AUTH PLAIN LOGIN\r\n250 ATRN")
			c.ReadLine()
		}, odmr.ErrNoAuthMechanism, 0},
		// A reply that is not SMTP.
		{"garbage", func(c *textproto.Conn, raw net.Conn) {
			c.PrintfLine("HTTP/1.1 400 Bad Request")
		}, odmr.ErrProtocol, 0},
		// Codes of a multi-line reply that do not agree.
		{"mixed codes", func(c *textproto.Conn, raw net.Conn) {
			c.PrintfLine("220 odmr")
			c.ReadLine()
			c.PrintfLine("250-odmr\r\n251 ATRN")
		}, odmr.ErrProtocol, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeProvider(t, tc.script)
			sink := &memSink{}
			res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
			require.Error(t, err)
			assert.ErrorIs(t, err, tc.is)
			assert.True(t, strings.HasPrefix(err.Error(), "odmr: "), err.Error())
			if tc.code != 0 {
				var e *odmr.Error
				require.ErrorAs(t, err, &e)
				assert.Equal(t, tc.code, e.Code)
			}
			assert.False(t, res.NoMail)
			assert.Empty(t, sink.received())
		})
	}
}

func TestCustomerCancelWhileWaitingForATRN(t *testing.T) {
	// In the bubble the deadline of ctx passes at exactly 200 ms of fake
	// time, and Fetch must return at that same instant: cancellation
	// reaches the socket, not the next command timeout. The bubble also
	// checks that no goroutine is left behind.
	synctest.Test(t, func(t *testing.T) {
		c := custCustomer("provider.test:366", &memSink{}, "example.org")
		c.Dial = pipeProvider(t, func(c *textproto.Conn, raw net.Conn) {
			if fakeLogin(c) {
				io.Copy(io.Discard, raw) // never answer ATRN
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Fetch(ctx)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, 200*time.Millisecond, time.Since(start), "cancellation reaches the socket")
	})
}

// pipeProvider runs script as the provider's side of a net.Pipe and
// returns a Customer.Dial that hands the customer the other side. Inside
// a synctest bubble the customer's deadlines then run on the bubble's
// clock. The script's end is closed when it returns, and the test waits
// for it.
func pipeProvider(t *testing.T, script func(c *textproto.Conn, raw net.Conn)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	t.Helper()
	cli, srv := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer srv.Close()
		script(textproto.NewConn(srv), srv)
	}()
	t.Cleanup(func() {
		cli.Close()
		<-done
	})
	return func(context.Context, string, string) (net.Conn, error) { return cli, nil }
}

func TestCustomerCommandTimeout(t *testing.T) {
	// The command timeout runs on the bubble's clock: it fires exactly
	// when due, however loaded the machine.
	synctest.Test(t, func(t *testing.T) {
		c := custCustomer("provider.test:366", &memSink{}, "example.org")
		c.Dial = pipeProvider(t, func(c *textproto.Conn, raw net.Conn) {
			io.Copy(io.Discard, raw) // no greeting
		})
		c.CommandTimeout = 100 * time.Millisecond
		start := time.Now()
		_, err := c.Fetch(context.Background())
		require.Error(t, err)
		assert.Equal(t, 100*time.Millisecond, time.Since(start), "the command timeout, on the bubble's clock")
		assert.Contains(t, err.Error(), "greeting")
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		assert.True(t, ne.Timeout())
	})
}

func TestCustomerIdleTimeoutAfterTheSwap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := custCustomer("provider.test:366", &memSink{}, "example.org")
		var swapped time.Time
		c.Dial = pipeProvider(t, func(c *textproto.Conn, raw net.Conn) {
			if fakeLogin(c) {
				c.ReadLine()
				swapped = time.Now() // before the write the customer reads: no race
				c.PrintfLine("250 OK")
				io.Copy(io.Discard, raw) // never says EHLO
			}
		})
		c.IdleTimeout = 100 * time.Millisecond
		_, err := c.Fetch(context.Background())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "sent nothing")
		// The customer's greeting after the swap restarts the wait; the
		// bubble's clock has not moved since the 250 to ATRN.
		assert.Equal(t, 100*time.Millisecond, time.Since(swapped), "the idle timeout, on the bubble's clock")
	})
}

func TestCustomerConfigurationErrors(t *testing.T) {
	for _, c := range []*odmr.Customer{
		{Addr: "x", Username: "u"},
		{Addr: "x", Username: "u", Sink: &memSink{}, Handler: odmr.Relay("y")},
		{Addr: "x", Sink: &memSink{}},
		{Addr: "x", Username: "u\r\nQUIT", Sink: &memSink{}},
		{Addr: "x", Username: "u", Sink: &memSink{}, Domains: []string{"bad domain"}},
		{Addr: "x", Username: "u", Sink: &memSink{}, Domains: []string{"a.example\r\nQUIT"}},
	} {
		res, err := c.Fetch(context.Background())
		require.Error(t, err)
		assert.True(t, strings.HasPrefix(err.Error(), "odmr: "), err.Error())
		assert.NotNil(t, res)
	}
}

func TestCustomerMaildirSinkEndToEnd(t *testing.T) {
	q := &memqueue.Queue{}
	b1 := "Subject: one\r\n\r\nFirst.\r\n..dot\r\n"
	b2 := "Subject: two\r\n\r\nSecond, 8-bit: \xe2\x82\xac\r\n"
	custEnqueue(t, q, "a@sender.test", b1, "u1@example.org")
	custEnqueue(t, q, "b@sender.test", b2, "u2@example.com", "u3@example.com")
	addr := custProvider(t, q)

	dir := filepath.Join(t.TempDir(), "Maildir")
	sink, err := maildir.New(dir)
	require.NoError(t, err)
	sink.KeepCRLF = true
	sink.NoReturnPath, sink.NoDeliveredTo = true, true
	res, err := custCustomer(addr, sink, "example.org", "example.com").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 2, res.Messages)

	entries, err := os.ReadDir(filepath.Join(dir, "new"))
	require.NoError(t, err)
	require.Len(t, entries, 2)
	var got []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, "new", e.Name()))
		require.NoError(t, err)
		br := bufio.NewReader(bytes.NewReader(b))
		trace, err := cutReceived(br)
		require.NoError(t, err)
		assert.Contains(t, trace, "by customer.example.org with ESMTP id ")
		rest, _ := io.ReadAll(br)
		got = append(got, string(rest))
	}
	sort.Strings(got)
	assert.Equal(t, []string{b1, b2}, got, "exact content")
	tmp, err := os.ReadDir(filepath.Join(dir, "tmp"))
	require.NoError(t, err)
	assert.Empty(t, tmp)
}

func TestCustomerHandlerGetsTheConnectionWithBufferedBytes(t *testing.T) {
	// Bytes the provider sends right behind its 250 must reach the
	// handler first.
	addr := fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		if fakeLogin(c) {
			c.ReadLine()
			io.WriteString(raw, "250 OK\r\nEHLO early.example.net\r\n")
			c.ReadLine()
		}
	})
	var first string
	c := custCustomer(addr, nil, "example.org")
	c.Handler = odmr.HandlerFunc(func(ctx context.Context, conn net.Conn) error {
		io.WriteString(conn, "220 handler ready\r\n")
		line, err := textproto.NewReader(bufio.NewReader(conn)).ReadLine()
		first = line
		return err
	})
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.False(t, res.NoMail)
	assert.Equal(t, "EHLO early.example.net", first)
}

// TestCustomerRFC2645Section6Transcript plays the provider's side of the
// RFC's example session (testdata/rfc2645-section6.txt, shared with the
// provider's transcript test) against the Customer. Before the swap the
// customer's lines must match the transcript exactly; after it, where the
// customer's SMTP server words its replies its own way, the reply codes
// must. The message must reach the sink unstuffed.
func TestCustomerRFC2645Section6Transcript(t *testing.T) {
	raw, err := os.ReadFile("testdata/rfc2645-section6.txt")
	require.NoError(t, err)
	type step struct{ who, line string }
	var steps []step
	for _, l := range strings.Split(strings.TrimRight(string(raw), "\n"), "\n") {
		if who, line, ok := strings.Cut(l, ": "); ok && (who == "P" || who == "C") {
			steps = append(steps, step{who, line})
		} else if l == "P:" || l == "C:" {
			steps = append(steps, step{l[:1], ""})
		}
	}

	var body []string
	inData := false
	for _, s := range steps {
		switch {
		case s.who == "P" && s.line == "DATA":
			inData = true
		case s.who == "P" && inData && s.line == ".":
			inData = false
		case s.who == "P" && inData:
			body = append(body, strings.TrimPrefix(s.line, "."))
		}
	}
	wantBody := strings.Join(body, "\r\n") + "\r\n"

	problems := make(chan string, 100)
	addr := fakeProvider(t, func(c *textproto.Conn, conn net.Conn) {
		defer close(problems)
		reversed, sawATRN := false, false
		for i := 0; i < len(steps); {
			if steps[i].who == "P" {
				var out strings.Builder
				for ; i < len(steps) && steps[i].who == "P"; i++ {
					out.WriteString(steps[i].line + "\r\n")
					if sawATRN && strings.HasPrefix(steps[i].line, "250 ") {
						reversed = true
					}
				}
				if _, err := io.WriteString(conn, out.String()); err != nil {
					problems <- err.Error()
					return
				}
				continue
			}
			if !reversed {
				got, err := c.ReadLine()
				if err != nil {
					problems <- fmt.Sprintf("step %d: %v", i, err)
					return
				}
				if got != steps[i].line {
					problems <- fmt.Sprintf("customer sent %q, the transcript has %q", got, steps[i].line)
				}
				sawATRN = sawATRN || strings.HasPrefix(got, "ATRN")
				i++
				continue
			}
			// A reply of the customer's SMTP server: one or more lines.
			want := steps[i].line[:3]
			for i < len(steps) && steps[i].who == "C" {
				i++
			}
			code, msg, err := c.ReadResponse(0)
			if err != nil && code == 0 {
				problems <- fmt.Sprintf("reading the reply %s...: %v", want, err)
				return
			}
			if fmt.Sprint(code) != want {
				problems <- fmt.Sprintf("customer replied %d %s, the transcript has %s", code, msg, want)
			}
		}
	})
	sink := &memSink{}
	c := custCustomer(addr, sink, "example.org", "example.com")
	c.Username, c.Secret, c.Hostname = "example.org", "tanstaaftanstaaf", "example.org"
	c.Mechanisms = []string{"CRAM-MD5"} // the RFC's mechanism
	res, err := c.Fetch(context.Background())
	for p := range problems {
		t.Error(p)
	}
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages)
	got := sink.received()
	require.Len(t, got, 1)
	assert.Equal(t, "Lester.Tester@dot.foo.bar", got[0].env.From)
	assert.Equal(t, []string{"l.eva.msg@example.com"}, got[0].env.To)
	assert.Equal(t, int64(54), got[0].env.Size)
	assert.Equal(t, wantBody, got[0].body)
}

// lockedBuffer collects what writers in several goroutines write.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestCustomerRelayOverSTARTTLSWithDebug(t *testing.T) {
	// The relay copies both ways at once through the debug transcript,
	// and passes half-closes through it.
	custNoLeaks(t)
	cert, pool := testcert.SelfSigned(t, "provider.example.net")
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: relayed\r\n\r\nOver TLS.\r\n", "u1@example.org")
	addr := custProvider(t, q, func(p *odmr.Provider) { p.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}} })
	mta := &localMTA{}
	debug := &lockedBuffer{}
	c := custCustomer(addr, nil, "example.org")
	c.Handler = odmr.Relay(startLocalMTA(t, mta, false, "tcp"))
	c.TLSConfig = &tls.Config{RootCAs: pool, ServerName: "provider.example.net"}
	c.Debug = debug
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	require.NotNil(t, res.TLS)
	require.Len(t, mta.received(), 1)
	assert.Equal(t, "Subject: relayed\r\n\r\nOver TLS.\r\n", mta.received()[0].body)
	assert.Zero(t, q.Len())
	out := debug.String()
	for _, want := range []string{
		addr + " C: STARTTLS\n",
		addr + " P: 220 2.0.0 Ready to start TLS\n",
		addr + " C: AUTH SCRAM-SHA-256 <redacted>\n",
		addr + " C: 220 local.example.org ESMTP Service Ready\n",
		addr + " P: MAIL FROM:<a@sender.test>",
		addr + " P: Over TLS.\n",
		addr + " P: QUIT\n",
		addr + " C: 221 ",
	} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, custSecret)
}
