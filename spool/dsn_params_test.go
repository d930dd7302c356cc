package spool

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/dsnreport"
)

// enqueueDSN queues a message for three recipients of example.org with
// the DSN requests the tests need.
func (f *fixture) enqueueDSN() {
	f.t.Helper()
	env := odmr.Envelope{
		From: "s@origin.test",
		To:   []string{"never@example.org", "success@example.org", "plain@example.org", "orcpt@example.org"},
		DSN: &odmr.DSN{
			Return: odmr.ReturnHeaders,
			EnvID:  "QQ314159",
			Recipients: map[string]odmr.RecipientDSN{
				"never@example.org":   {Notify: []odmr.DSNNotify{odmr.NotifyNever}},
				"success@example.org": {Notify: []odmr.DSNNotify{odmr.NotifySuccess}},
				"orcpt@example.org":   {Notify: []odmr.DSNNotify{odmr.NotifyFailure}, ORcptType: "RFC822", ORcpt: "old@example.org"},
			},
		},
	}
	_, err := f.s.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	require.NoError(f.t, err)
}

// onlyReport sends the outbox and returns the one report that was in it.
func (f *fixture) onlyReport() string {
	f.t.Helper()
	sent, err := f.s.FlushBounces(context.Background())
	require.NoError(f.t, err)
	require.Equal(f.t, 1, sent)
	_, dsns := f.bounces.All()
	require.Len(f.t, dsns, 1)
	return dsns[0]
}

// deliverWithoutDSN claims example.org's mail and completes it as a
// customer that took every recipient without offering DSN.
func (f *fixture) deliverWithoutDSN() {
	f.t.Helper()
	b, err := f.s.Claim(context.Background(), []string{"example.org"})
	require.NoError(f.t, err)
	d, err := next(f.t, b)
	require.NoError(f.t, err)
	var results []odmr.RecipientResult
	for _, r := range d.env.To {
		results = append(results, odmr.RecipientResult{Recipient: r, NoDSN: true})
	}
	require.NoError(f.t, d.msg.Complete(context.Background(), results))
	require.NoError(f.t, b.Close())
}

func TestDSNParametersSurviveTheSpool(t *testing.T) {
	f := newFixture(t)
	f.enqueueDSN()
	require.NoError(t, f.s.Close())
	f.s = f.open() // from the files alone
	b, err := f.s.Claim(context.Background(), []string{"example.org"})
	require.NoError(t, err)
	defer b.Close()
	d, err := next(t, b)
	require.NoError(t, err)
	require.NotNil(t, d.env.DSN)
	assert.Equal(t, odmr.ReturnHeaders, d.env.DSN.Return)
	assert.Equal(t, "QQ314159", d.env.DSN.EnvID)
	assert.Equal(t, odmr.RecipientDSN{Notify: []odmr.DSNNotify{odmr.NotifyFailure}, ORcptType: "RFC822", ORcpt: "old@example.org"},
		d.env.DSN.Recipients["orcpt@example.org"])
	assert.Len(t, d.env.DSN.Recipients, 3)
	d.complete(t, nil)
}

func TestFailureReportHonoursNOTIFY(t *testing.T) {
	f := newFixture(t)
	f.enqueueDSN()
	failOne(t, f.s, "example.org")
	dsn := f.onlyReport()
	// NOTIFY=NEVER and NOTIFY=SUCCESS ask for no failure report; no
	// NOTIFY means failures are reported.
	assert.NotContains(t, dsn, "never@example.org")
	assert.NotContains(t, dsn, "success@example.org")
	assert.Contains(t, dsn, "Final-Recipient: rfc822; plain@example.org")
	assert.Contains(t, dsn, "Original-Recipient: rfc822;old@example.org\r\nFinal-Recipient: rfc822; orcpt@example.org")
	assert.Contains(t, dsn, "Original-Envelope-Id: QQ314159\r\nReporting-MTA: ", "in the order of RFC 3464 section 2.2")
	assert.Contains(t, f.logs.String(), "their NOTIFY asks for no DSN")
}

func TestNoReportWhenNoRecipientWantsOne(t *testing.T) {
	f := newFixture(t)
	_, err := f.s.Enqueue(context.Background(), odmr.Envelope{
		From: "s@origin.test", To: []string{"never@example.org"},
		DSN: &odmr.DSN{Recipients: map[string]odmr.RecipientDSN{"never@example.org": {Notify: []odmr.DSNNotify{odmr.NotifyNever}}}},
	}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	require.NoError(t, err)
	failOne(t, f.s, "example.org")
	n, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestRelayedReportForNOTIFYSuccess(t *testing.T) {
	f := newFixture(t)
	f.enqueueDSN()
	f.deliverWithoutDSN()
	dsn := f.onlyReport()
	assert.Contains(t, dsn, "Subject: Successful Mail Delivery Report\r\n")
	assert.Contains(t, dsn, "Final-Recipient: rfc822; success@example.org\r\nAction: relayed\r\nStatus: 2.0.0\r\n")
	assert.Contains(t, dsn, "Original-Envelope-Id: QQ314159\r\n")
	for _, quiet := range []string{"never@", "plain@", "orcpt@"} {
		assert.NotContains(t, dsn, quiet, "only NOTIFY=SUCCESS asks for a relayed report")
	}
}

func TestNoRelayedReportWhenTheCustomerOffersDSN(t *testing.T) {
	f := newFixture(t)
	f.enqueueDSN()
	b, err := f.s.Claim(context.Background(), []string{"example.org"})
	require.NoError(t, err)
	d, err := next(t, b)
	require.NoError(t, err)
	d.complete(t, nil)
	require.NoError(t, b.Close())
	n, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Zero(t, n, "the customer reports success itself")
}

func TestRelayedReportIsSentAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, func(o *Options) { o.MaintenanceInterval = time.Hour })
		f.enqueueDSN()
		f.deliverWithoutDSN()
		synctest.Wait()
		_, dsns := f.bounces.All()
		assert.Len(t, dsns, 1, "sent as soon as written, not at the next maintenance")
	})
}

func TestRETFullReturnsTheMessage(t *testing.T) {
	body := "Subject: x\r\n\r\nthe text, 8-bit: \xc3\xa9\r\n"
	for _, c := range []struct {
		name string
		ret  odmr.DSNReturn
		body string
		full bool
	}{
		{"FULL", odmr.ReturnFull, body, true},
		{"HDRS", odmr.ReturnHeaders, body, false},
		{"none", "", body, false},
		{"FULL, too large", odmr.ReturnFull, body + strings.Repeat("x", dsnreport.MaxReturnedMessage), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			_, err := f.s.Enqueue(context.Background(), odmr.Envelope{From: "s@origin.test", To: []string{"gone@example.org"},
				DSN: &odmr.DSN{Return: c.ret}}, strings.NewReader(c.body))
			require.NoError(t, err)
			failOne(t, f.s, "example.org")
			dsn := f.onlyReport()
			envs, _ := f.bounces.All()
			if c.full {
				assert.Contains(t, dsn, "Content-Type: message/rfc822\r\n")
				assert.Contains(t, dsn, "Content-Transfer-Encoding: 8bit\r\n")
				assert.Contains(t, dsn, "\r\n\r\n"+body, "the whole message, as it was queued")
				assert.Contains(t, dsn, "It is attached below.")
				assert.Equal(t, odmr.Body8BitMIME, envs[0].Body, "the report is sent as 8-bit")
			} else {
				assert.NotContains(t, dsn, "message/rfc822")
				assert.Contains(t, dsn, "Content-Type: text/rfc822-headers\r\n")
				assert.NotContains(t, dsn, "the text, 8-bit")
			}
		})
	}
}
