package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

var (
	errUnknownUser = &odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "User unknown"}
	errMailboxBusy = &odmr.Error{Code: 451, EnhancedCode: odmr.EnhancedCode{4, 3, 0}, Message: "Mailbox busy"}
)

func TestEnqueueAndDeliver(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	assert.False(t, has(t, f.s, "example.org"))

	body := "From: a@origin.test\nSubject: hello\n\nline one\r\nline two\n\xc3\xa9\n"
	id := f.enqueue("a@origin.test", body, "u@Example.ORG")
	assert.True(t, isID(id), id)
	assert.True(t, has(t, f.s, "example.org"))
	assert.True(t, has(t, f.s, "EXAMPLE.org."), "domains compare like RecipientDomain")
	assert.False(t, has(t, f.s, "example.com"))

	b, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	d, err := next(t, b)
	require.NoError(t, err)
	want := "From: a@origin.test\r\nSubject: hello\r\n\r\nline one\r\nline two\r\n\xc3\xa9\r\n"
	assert.Equal(t, want, d.body, "bare LF becomes CRLF, CRLF stays")
	assert.Equal(t, id, d.env.ID)
	assert.Equal(t, "a@origin.test", d.env.From)
	assert.Equal(t, []string{"u@Example.ORG"}, d.env.To)
	assert.Equal(t, int64(len(want)), d.env.Size)
	assert.Equal(t, odmr.Body8BitMIME, d.env.Body)
	assert.False(t, d.env.UTF8)
	assert.WithinDuration(t, time.Now(), d.env.Received, time.Minute)

	_, err = b.Next(ctx)
	assert.ErrorIs(t, err, io.EOF)
	d.complete(t, nil)
	require.NoError(t, b.Close())

	assert.False(t, has(t, f.s, "example.org"))
	_, err = f.s.Stat(id)
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.NoFileExists(t, f.s.bodyPath(id))
	assert.NoFileExists(t, f.s.envPath(id))
	assert.NoFileExists(t, f.s.markerPath("example.org", id))
	_, dsns := f.bounces.All()
	assert.Empty(t, dsns)
}

func TestEnqueueFillsEnvelope(t *testing.T) {
	f := newFixture(t)
	received := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	id, err := f.s.Enqueue(context.Background(), odmr.Envelope{
		ID: "ignored", From: "jös@origin.test", To: []string{"u@example.org", "u@example.org", "v@example.org"},
		Received: received,
	}, strings.NewReader("Subject: x\r\n\r\nascii\r\n"))
	require.NoError(t, err)
	info, err := f.s.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, id, info.Envelope.ID)
	assert.True(t, info.Envelope.UTF8, "non-ASCII sender needs SMTPUTF8")
	assert.Equal(t, odmr.BodyType(""), info.Envelope.Body, "7-bit body")
	assert.True(t, info.Envelope.Received.Equal(received), "the caller's arrival time is kept")
	assert.Equal(t, []string{"u@example.org", "v@example.org"}, info.Envelope.To, "duplicates are queued once")
	for _, r := range info.Recipients {
		assert.Equal(t, Queued, r.State)
	}
}

func TestEnqueueRefusesBadInput(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.s.Enqueue(ctx, odmr.Envelope{From: "a@x.test"}, strings.NewReader("x"))
	assert.Error(t, err, "no recipients")
	_, err = f.s.Enqueue(ctx, odmr.Envelope{From: "a@x.test", To: []string{"u@example.org\r\nRCPT TO:<evil@x>"}}, strings.NewReader("x"))
	var e *odmr.Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, 501, e.Code)
	_, err = f.s.Enqueue(ctx, odmr.Envelope{From: "a@x.test\n", To: []string{"u@example.org"}}, strings.NewReader("x"))
	require.ErrorAs(t, err, &e)
	assert.Equal(t, 501, e.Code)

	// A body that fails half-way leaves nothing behind.
	_, err = f.s.Enqueue(ctx, odmr.Envelope{From: "a@x.test", To: []string{"u@example.org"}},
		io.MultiReader(strings.NewReader("Subject: x\r\n\r\npartial"), errReader{}))
	assert.Error(t, err)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = f.s.Enqueue(canceled, odmr.Envelope{From: "a@x.test", To: []string{"u@example.org"}}, strings.NewReader("x"))
	assert.ErrorIs(t, err, context.Canceled)
	assertEmptySpool(t, f.dir)
	assert.False(t, has(t, f.s, "example.org"))
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

// assertEmptySpool checks that nothing is left in the queue, the markers or
// the temporary files.
func assertEmptySpool(t *testing.T, dir string) {
	t.Helper()
	for _, sub := range []string{queueDir, tmpDir} {
		names, err := readNames(filepath.Join(dir, sub))
		require.NoError(t, err)
		assert.Empty(t, names, sub)
	}
	doms, err := readNames(filepath.Join(dir, domainsDir))
	require.NoError(t, err)
	for _, d := range doms {
		names, err := readNames(filepath.Join(dir, domainsDir, d))
		require.NoError(t, err)
		assert.Empty(t, names, "markers of %s", d)
	}
}

func TestMultiDomainMessageIsDeliveredPerDomain(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.enqueue("s@origin.test", "Subject: shared\r\n\r\nfor two customers\r\n",
		"a@example.org", "b@example.com", "c@Example.org")

	// Two customers pull at the same time; each gets its own recipients.
	org, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	com, err := f.s.Claim(ctx, []string{"example.com"})
	require.NoError(t, err)
	dOrg, err := next(t, org)
	require.NoError(t, err)
	dCom, err := next(t, com)
	require.NoError(t, err)
	assert.Equal(t, []string{"a@example.org", "c@Example.org"}, dOrg.env.To)
	assert.Equal(t, []string{"b@example.com"}, dCom.env.To)
	assert.Equal(t, dOrg.body, dCom.body)

	dOrg.complete(t, nil)
	info, err := f.s.Stat(id)
	require.NoError(t, err)
	states := map[string]State{}
	for _, r := range info.Recipients {
		states[r.Addr] = r.State
	}
	assert.Equal(t, map[string]State{"a@example.org": Delivered, "c@Example.org": Delivered, "b@example.com": Queued}, states)
	assert.False(t, has(t, f.s, "example.org"))
	assert.True(t, has(t, f.s, "example.com"))
	assert.FileExists(t, f.s.bodyPath(id), "the body stays while a recipient is queued")

	dCom.complete(t, nil)
	require.NoError(t, org.Close())
	require.NoError(t, com.Close())
	assert.False(t, has(t, f.s, "example.com"))
	assert.NoFileExists(t, f.s.bodyPath(id))
	assertEmptySpool(t, f.dir)
}

func TestOneBatchForSeveralDomains(t *testing.T) {
	f := newFixture(t)
	f.enqueue("s@origin.test", "Subject: 1\r\n\r\n1\r\n", "a@example.org", "b@example.com", "c@example.net")
	f.enqueue("s@origin.test", "Subject: 2\r\n\r\n2\r\n", "d@example.com")
	got := drain(t, f.s, "example.org", "example.com")
	require.Len(t, got, 2)
	assert.Equal(t, []string{"a@example.org", "b@example.com"}, got[0].env.To, "one delivery for both domains")
	assert.Equal(t, []string{"d@example.com"}, got[1].env.To)
	assert.True(t, has(t, f.s, "example.net"))
}

func TestTemporaryFailureStaysQueued(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org", "b@example.org", "c@example.org")
	b, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	d, err := next(t, b)
	require.NoError(t, err)
	cut := fmt.Errorf("%w: read: connection reset by peer", &odmr.Error{Code: 421, EnhancedCode: odmr.EnhancedCode{4, 4, 2}, Message: "Connection lost during delivery"})
	require.NoError(t, d.msg.Complete(ctx, []odmr.RecipientResult{
		{Recipient: "a@example.org", Err: errMailboxBusy},
		{Recipient: "b@example.org", Err: cut},
		// c@example.org: no result at all.
	}))
	_, err = b.Next(ctx)
	assert.ErrorIs(t, err, io.EOF, "a batch never returns a message twice")
	require.NoError(t, b.Close())

	info, err := f.s.Stat(id)
	require.NoError(t, err)
	for _, r := range info.Recipients {
		assert.Equal(t, Queued, r.State, r.Addr)
		assert.Equal(t, 1, r.Attempts, r.Addr)
		assert.WithinDuration(t, time.Now(), r.LastAttempt, time.Minute)
		require.Error(t, r.LastError, r.Addr)
	}
	var e *odmr.Error
	require.ErrorAs(t, info.Recipients[0].LastError, &e)
	assert.Equal(t, 451, e.Code)
	assert.Equal(t, odmr.EnhancedCode{4, 3, 0}, e.EnhancedCode)
	assert.ErrorIs(t, info.Recipients[1].LastError, &odmr.Error{Code: 421}, "the reply of a cut connection is kept")
	assert.Contains(t, info.Recipients[1].LastError.Error(), "connection reset by peer")
	assert.Contains(t, info.Recipients[2].LastError.Error(), "no result reported")

	// The next session gets them again, and a second failure counts.
	b2, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	d2, err := next(t, b2)
	require.NoError(t, err)
	assert.Equal(t, []string{"a@example.org", "b@example.org", "c@example.org"}, d2.env.To)
	d2.complete(t, errMailboxBusy)
	require.NoError(t, b2.Close())
	info, err = f.s.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, 2, info.Recipients[0].Attempts)
	_, dsns := f.bounces.All()
	assert.Empty(t, dsns)
}

func TestCloseReleasesUncompletedLeases(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org")
	b1, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	_, err = next(t, b1)
	require.NoError(t, err)

	// Leased: another session passes it over, but it is still mail.
	b2, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	_, err = b2.Next(ctx)
	assert.ErrorIs(t, err, io.EOF)
	require.NoError(t, b2.Close())
	assert.True(t, has(t, f.s, "example.org"))

	require.NoError(t, b1.Close())
	info, err := f.s.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, 0, info.Recipients[0].Attempts, "released as it was")
	got := drain(t, f.s, "example.org")
	require.Len(t, got, 1)
	assert.Equal(t, id, got[0].env.ID)
}

func TestCompleteTwiceOrAfterClose(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org")
	f.enqueue("s@origin.test", "Subject: y\r\n\r\ny\r\n", "b@example.org")
	b, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	d1, err := next(t, b)
	require.NoError(t, err)
	d1.complete(t, errMailboxBusy)
	assert.Error(t, d1.msg.Complete(ctx, nil), "already completed")
	d2, err := next(t, b)
	require.NoError(t, err)
	require.NoError(t, b.Close())
	assert.Error(t, d2.msg.Complete(ctx, []odmr.RecipientResult{{Recipient: "b@example.org"}}), "released by Close")
	info, err := f.s.Stat(d2.env.ID)
	require.NoError(t, err)
	assert.Equal(t, Queued, info.Recipients[0].State)
}

func TestPermanentFailureSendsDSN(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	body := checksummed("Quarterly report", []byte("the numbers\r\n"))
	id := f.enqueue("sender@origin.test", body, "gone@example.org", "ok@example.org", "refused@example.org", "later@example.org")
	b, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	d, err := next(t, b)
	require.NoError(t, err)
	require.NoError(t, d.msg.Complete(ctx, []odmr.RecipientResult{
		{Recipient: "gone@example.org", Err: errUnknownUser},
		{Recipient: "ok@example.org"},
		// A reply without an enhanced code gets a status from its class.
		{Recipient: "refused@example.org", Err: &odmr.Error{Code: 554, Message: "Transaction failed"}},
		{Recipient: "later@example.org", Err: errMailboxBusy},
	}))
	require.NoError(t, b.Close())

	info, err := f.s.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, Failed, info.Recipients[0].State)
	assert.Equal(t, Delivered, info.Recipients[1].State)
	assert.Equal(t, Failed, info.Recipients[2].State)
	assert.Equal(t, Queued, info.Recipients[3].State)

	n, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Equal(t, 1, n, "one DSN for the failures of one delivery")
	sent, err := f.s.FlushBounces(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, sent)
	envs, dsns := f.bounces.All()
	require.Len(t, dsns, 1)
	assert.Equal(t, "", envs[0].From, "DSNs go from the null sender")
	assert.Equal(t, []string{"sender@origin.test"}, envs[0].To)
	assert.Equal(t, int64(len(dsns[0])), envs[0].Size)

	p := parseDSN(t, dsns[0])
	assert.Equal(t, "delivery-status", p.reportType)
	assert.Equal(t, []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}, p.types)
	assert.Equal(t, "<sender@origin.test>", p.header.Get("To"))
	assert.Equal(t, "auto-replied", p.header.Get("Auto-Submitted"))
	assert.Contains(t, p.header.Get("From"), "MAILER-DAEMON@mx.provider.test")
	assert.Equal(t, "1.0", p.header.Get("MIME-Version"))
	_, err = p.header.Date()
	assert.NoError(t, err)
	assert.Equal(t, "dns; mx.provider.test", p.perMessage.Get("Reporting-MTA"))
	arrival, err := time.Parse(time.RFC1123Z, p.perMessage.Get("Arrival-Date"))
	require.NoError(t, err)
	assert.True(t, arrival.Equal(info.Envelope.Received.Truncate(time.Second)))
	require.Len(t, p.recipients, 2, "only the permanent failures")

	gone := p.recipient("gone@example.org")
	require.NotNil(t, gone)
	assert.Equal(t, "rfc822; gone@example.org", gone.Get("Final-Recipient"))
	assert.Equal(t, "failed", gone.Get("Action"))
	assert.Equal(t, "5.1.1", gone.Get("Status"))
	assert.Equal(t, "smtp; 550 5.1.1 User unknown", gone.Get("Diagnostic-Code"))
	refused := p.recipient("refused@example.org")
	require.NotNil(t, refused)
	assert.Equal(t, "5.0.0", refused.Get("Status"))
	assert.Equal(t, "smtp; 554 Transaction failed", refused.Get("Diagnostic-Code"))

	assert.Contains(t, p.headers, "Subject: Quarterly report\r\n")
	assert.Contains(t, p.headers, "X-Checksum: ")
	assert.NotContains(t, p.headers, "the numbers", "headers only, not the body")
	assert.Contains(t, p.text, "gone@example.org")
	assert.Contains(t, p.text, "550 5.1.1 User unknown")

	n, err = f.s.PendingBounces()
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestNullSenderGetsNoDSN(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("", "Subject: a bounce\r\n\r\nx\r\n", "gone@example.org")
	b, err := f.s.Claim(context.Background(), []string{"example.org"})
	require.NoError(t, err)
	d, err := next(t, b)
	require.NoError(t, err)
	d.complete(t, errUnknownUser)
	require.NoError(t, b.Close())
	_, err = f.s.Stat(id)
	assert.ErrorIs(t, err, fs.ErrNotExist, "failed recipients leave the queue")
	n, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Zero(t, n)
	sent, err := f.s.FlushBounces(context.Background())
	require.NoError(t, err)
	assert.Zero(t, sent)
	assert.Contains(t, f.logs.String(), "sender is null")
	assertEmptySpool(t, f.dir)
}

func TestExpire(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	old := time.Now().Add(-DefaultMaxAge - time.Hour)
	id, err := f.s.Enqueue(ctx, odmr.Envelope{From: "s@origin.test", To: []string{"a@example.org", "b@example.com"}, Received: old},
		strings.NewReader("Subject: stale\r\n\r\nx\r\n"))
	require.NoError(t, err)
	nullID, err := f.s.Enqueue(ctx, odmr.Envelope{From: "", To: []string{"c@example.org"}, Received: old},
		strings.NewReader("Subject: stale bounce\r\n\r\nx\r\n"))
	require.NoError(t, err)
	fresh := f.enqueue("s@origin.test", "Subject: fresh\r\n\r\nx\r\n", "d@example.org")

	// A temporary failure first, so the DSN can tell the last error (with
	// a longer MaxAge meanwhile, or Next would expire the message).
	f.s.opts.MaxAge = 10 * DefaultMaxAge
	b, err := f.s.Claim(ctx, []string{"example.com"})
	require.NoError(t, err)
	require.NoError(t, f.s.lease2(t, b, errMailboxBusy))
	require.NoError(t, b.Close())
	f.s.opts.MaxAge = DefaultMaxAge

	n, err := f.s.Expire(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	for _, gone := range []string{id, nullID} {
		_, err = f.s.Stat(gone)
		assert.ErrorIs(t, err, fs.ErrNotExist)
	}
	_, err = f.s.Stat(fresh)
	assert.NoError(t, err)
	assert.False(t, has(t, f.s, "example.com"))
	// Issue #16: one WARN record per expired recipient, keyed by the
	// queue ID, and one for the bounce queued.
	logs := f.logs.String()
	for _, want := range []string{
		`level=WARN msg="spool: expired" id=` + id + " to=a@example.org",
		`level=WARN msg="spool: expired" id=` + id + " to=b@example.com",
		`level=WARN msg="spool: expired" id=` + nullID + " to=c@example.org",
		`level=INFO msg="spool: bounce queued" id=` + id + " to=s@origin.test recipients=2",
	} {
		assert.Equal(t, 1, strings.Count(logs, want), "%s in:\n%s", want, logs)
	}

	_, err = f.s.FlushBounces(ctx)
	require.NoError(t, err)
	_, dsns := f.bounces.All()
	require.Len(t, dsns, 1, "none for the null sender")
	p := parseDSN(t, dsns[0])
	require.Len(t, p.recipients, 2)
	for _, addr := range []string{"a@example.org", "b@example.com"} {
		r := p.recipient(addr)
		require.NotNil(t, r, addr)
		assert.Equal(t, "failed", r.Get("Action"))
		assert.Equal(t, "4.4.7", r.Get("Status"))
	}
	assert.Equal(t, "smtp; 451 4.3.0 Mailbox busy", p.recipient("b@example.com").Get("Diagnostic-Code"))
	assert.Empty(t, p.recipient("a@example.org").Get("Diagnostic-Code"), "never attempted")
	assert.Contains(t, p.text, "expired")

	n, err = f.s.Expire(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
}

// lease2 takes the next message of b and completes it with err.
func (s *Spool) lease2(t *testing.T, b odmr.Batch, err error) error {
	d, nerr := next(t, b)
	if nerr != nil {
		return nerr
	}
	d.complete(t, err)
	return nil
}

func TestNextExpiresOldMessages(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxAge = time.Hour })
	ctx := context.Background()
	_, err := f.s.Enqueue(ctx, odmr.Envelope{From: "s@origin.test", To: []string{"a@example.org"}, Received: time.Now().Add(-2 * time.Hour)},
		strings.NewReader("Subject: stale\r\n\r\nx\r\n"))
	require.NoError(t, err)
	fresh := f.enqueue("s@origin.test", "Subject: fresh\r\n\r\nx\r\n", "b@example.org")
	got := drain(t, f.s, "example.org")
	require.Len(t, got, 1, "the stale message is bounced, not delivered")
	assert.Equal(t, fresh, got[0].env.ID)
	n, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

func TestTemporaryFailureOfOldMessageExpires(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxAge = time.Hour })
	ctx := context.Background()
	id := f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org")
	b, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	m, err := b.Next(ctx)
	require.NoError(t, err)
	// The message turns old while it is being delivered.
	f.s.opts.MaxAge = time.Nanosecond
	require.NoError(t, m.Complete(ctx, []odmr.RecipientResult{{Recipient: "a@example.org", Err: errMailboxBusy}}))
	require.NoError(t, b.Close())
	_, err = f.s.Stat(id)
	assert.ErrorIs(t, err, fs.ErrNotExist)
	_, err = f.s.FlushBounces(ctx)
	require.NoError(t, err)
	_, dsns := f.bounces.All()
	require.Len(t, dsns, 1)
	r := parseDSN(t, dsns[0]).recipient("a@example.org")
	assert.Equal(t, "4.4.7", r.Get("Status"))
	assert.Equal(t, "smtp; 451 4.3.0 Mailbox busy", r.Get("Diagnostic-Code"))
}

func TestQuota(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Quota = func(domain string) (int64, int) {
			switch domain {
			case "few.test":
				return 0, 2
			case "small.test":
				return 1000, 0
			}
			return 0, 0
		}
	})
	ctx := context.Background()
	body := strings.Repeat("x", 600)
	f.enqueue("s@origin.test", body, "a@few.test")
	f.enqueue("s@origin.test", body, "b@few.test", "c@other.test")
	assertQuota(t, f.s.CheckQuota("z@few.test"), "few.test")
	assert.NoError(t, f.s.CheckQuota("z@other.test"))
	_, err := f.s.Enqueue(ctx, odmr.Envelope{From: "s@origin.test", To: []string{"ok@other.test", "d@few.test"}}, strings.NewReader(body))
	assertQuota(t, err, "few.test")

	f.enqueue("s@origin.test", body, "a@small.test")
	assert.NoError(t, f.s.CheckQuota("z@small.test"), "400 bytes left")
	// Refused after streaming, before anything is accepted.
	_, err = f.s.Enqueue(ctx, odmr.Envelope{From: "s@origin.test", To: []string{"b@small.test"}}, strings.NewReader(body))
	assertQuota(t, err, "small.test")
	// A small one still fits.
	f.enqueue("s@origin.test", strings.Repeat("y", 300), "c@small.test")

	names, err := readNames(f.s.path(tmpDir))
	require.NoError(t, err)
	assert.Empty(t, names, "refused bodies are removed")
	stats, err := f.s.List()
	require.NoError(t, err)
	got := map[string]int{}
	for _, st := range stats {
		got[st.Domain] = st.Messages
	}
	assert.Equal(t, map[string]int{"few.test": 2, "other.test": 1, "small.test": 2}, got)

	// Delivering frees the quota.
	drain(t, f.s, "few.test")
	assert.NoError(t, f.s.CheckQuota("z@few.test"))
	f.enqueue("s@origin.test", body, "d@few.test")
}

func assertQuota(t *testing.T, err error, domain string) {
	t.Helper()
	var e *odmr.Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, 452, e.Code)
	assert.Equal(t, odmr.EnhancedCode{4, 2, 2}, e.EnhancedCode)
	assert.Contains(t, e.Message, domain)
	assert.True(t, e.Temporary())
}

func TestList(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, to := range [][]string{{"a@example.org"}, {"b@example.org", "c@example.com"}, {"d@example.com"}} {
		_, err := f.s.Enqueue(ctx, odmr.Envelope{From: "s@x.test", To: to, Received: t0.Add(time.Duration(i) * time.Hour)},
			strings.NewReader(strings.Repeat("z", 10*(i+1))))
		require.NoError(t, err)
	}
	stats, err := f.s.List()
	require.NoError(t, err)
	assert.Equal(t, []DomainStats{
		{Domain: "example.com", Messages: 2, Bytes: 50, Oldest: t0.Add(time.Hour)},
		{Domain: "example.org", Messages: 2, Bytes: 30, Oldest: t0},
	}, normalize(stats))

	// Another process's view: a second Spool on the directory.
	other, err := Open(f.dir, f.options())
	require.NoError(t, err)
	defer other.Close()
	drain(t, other, "example.org")
	stats, err = f.s.List()
	require.NoError(t, err)
	assert.Equal(t, []DomainStats{{Domain: "example.com", Messages: 2, Bytes: 50, Oldest: t0.Add(time.Hour)}}, normalize(stats))
}

func normalize(stats []DomainStats) []DomainStats {
	for i := range stats {
		stats[i].Oldest = stats[i].Oldest.UTC()
	}
	return stats
}

func TestReopenKeepsMessagesAndState(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org", "b@example.com")
	b, err := f.s.Claim(ctx, []string{"example.com"})
	require.NoError(t, err)
	require.NoError(t, f.s.lease2(t, b, errMailboxBusy))
	require.NoError(t, b.Close())
	require.NoError(t, f.s.Close())
	_, err = f.s.Claim(ctx, nil)
	assert.ErrorIs(t, err, errClosed)

	// Simulate the loss of a marker, as after a power failure.
	require.NoError(t, os.Remove(f.s.markerPath("example.org", id)))
	f.s = f.open()
	assert.True(t, has(t, f.s, "example.org"), "the marker is restored from the envelope")
	info, err := f.s.Stat(id)
	require.NoError(t, err)
	assert.Equal(t, 1, info.Recipients[1].Attempts)
	got := drain(t, f.s, "example.org", "example.com")
	require.Len(t, got, 1)
	assert.Equal(t, []string{"a@example.org", "b@example.com"}, got[0].env.To)
	assertEmptySpool(t, f.dir)
}

func TestOpenRemovesDebris(t *testing.T) {
	f := newFixture(t)
	keep := f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org")
	require.NoError(t, f.s.Close())

	orphan := newID(time.Now())
	write := func(path, data string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o700))
		require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
	}
	write(f.s.bodyPath(orphan), "Subject: never committed\r\n\r\npart")
	write(f.s.markerPath("example.org", orphan), "")
	oldTmp := filepath.Join(f.dir, tmpDir, newID(time.Now().Add(-2*tmpGrace))+".eml")
	newTmp := filepath.Join(f.dir, tmpDir, newID(time.Now())+".eml")
	write(oldTmp, "debris")
	write(newTmp, "maybe someone's")
	foreign := filepath.Join(f.dir, queueDir, "README")
	write(foreign, "not ours")

	f.s = f.open()
	assert.NoFileExists(t, f.s.bodyPath(orphan))
	assert.NoFileExists(t, f.s.markerPath("example.org", orphan))
	assert.NoFileExists(t, oldTmp)
	assert.FileExists(t, newTmp, "young temporary files may belong to a live writer")
	assert.FileExists(t, foreign)
	got := drain(t, f.s, "example.org")
	require.Len(t, got, 1)
	assert.Equal(t, keep, got[0].env.ID)
}

func TestUnreadableEnvelopesAreSkippedNotDeleted(t *testing.T) {
	f := newFixture(t)
	good := f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org")
	require.NoError(t, f.s.Close())

	corrupt, future := newID(time.Now()), newID(time.Now())
	files := map[string]string{
		f.s.envPath(corrupt): `{"version": 1, "id": "` + corrupt + `", "recipients": [`,
		f.s.envPath(future):  `{"version": 2, "id": "` + future + `", "recipients": [{"addr": "b@example.org", "state": "new"}]}`,
	}
	for path, data := range files {
		require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
	}
	for _, id := range []string{corrupt, future} {
		require.NoError(t, os.WriteFile(f.s.bodyPath(id), []byte("Subject: y\r\n\r\ny\r\n"), 0o600))
		require.NoError(t, os.WriteFile(f.s.markerPath("example.org", id), nil, 0o600))
	}

	f.s = f.open()
	got := drain(t, f.s, "example.org")
	require.Len(t, got, 1)
	assert.Equal(t, good, got[0].env.ID)
	for path, data := range files {
		b, err := os.ReadFile(path)
		require.NoError(t, err, "never deleted")
		assert.Equal(t, data, string(b), "never changed")
	}
	assert.FileExists(t, f.s.bodyPath(corrupt))
	logs := f.logs.String()
	assert.Contains(t, logs, "unreadable envelope")
	assert.Contains(t, logs, corrupt)
	assert.Contains(t, logs, "unknown envelope version 2")
	stats, err := f.s.List()
	require.NoError(t, err)
	require.Len(t, stats, 1)
	assert.Equal(t, 2, stats[0].Unreadable)
	_, err = f.s.Stat(future)
	assert.ErrorIs(t, err, errUnknownVersion)
}

func TestUnknownLayoutVersionIsRefused(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, layoutFile), []byte(`{"format":"odmr-spool","version":9}`), 0o600))
	_, err := Open(dir, Options{MaintenanceInterval: -1})
	assert.ErrorContains(t, err, "layout version 9")
}

func TestEnvelopeFileFormat(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org")
	data, err := os.ReadFile(f.s.envPath(id))
	require.NoError(t, err)
	s := string(data)
	for _, want := range []string{`"version": 1`, `"id": "` + id + `"`, `"from": "s@origin.test"`, `"addr": "a@example.org"`, `"state": "queued"`, `"received": `} {
		assert.Contains(t, s, want)
	}
	// Fields a later version 1 adds are ignored by this one.
	extended := strings.Replace(s, `"version": 1,`, `"version": 1, "priority": "bulk",`, 1)
	_, err = parseEnvelope([]byte(extended), "x", id)
	assert.NoError(t, err)
}

func TestDomainDirNames(t *testing.T) {
	for _, d := range []string{"example.org", "", "[192.0.2.1]", "xn--bcher-kva.example", "bücher.example", ".", "..", "a/b", "%", strings.Repeat("a", 300)} {
		name := dirName(d)
		assert.NotContains(t, name, "/", d)
		assert.NotEqual(t, ".", name)
		assert.NotEqual(t, "..", name)
		assert.LessOrEqual(t, len(name), 255)
		if back, ok := domainOfDir(name); ok {
			assert.Equal(t, d, back)
		} else {
			assert.Greater(t, len(d), 60, "only long names are hashed")
		}
	}
	assert.Equal(t, "example.org", dirName("example.org"))
}

func TestUnusualDomains(t *testing.T) {
	f := newFixture(t)
	f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@[192.0.2.1]", "b@bücher.example")
	assert.True(t, has(t, f.s, "[192.0.2.1]"))
	got := drain(t, f.s, "bücher.example")
	require.Len(t, got, 1)
	assert.Equal(t, []string{"b@bücher.example"}, got[0].env.To)
	assert.True(t, got[0].env.UTF8)
	stats, err := f.s.List()
	require.NoError(t, err)
	require.Len(t, stats, 1)
	assert.Equal(t, "[192.0.2.1]", stats[0].Domain)
}
