package odmr

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testDSN asks for headers only, carries an ENVID that needs xtext, and
// has NOTIFY and ORCPT for one recipient of two.
func testDSN() *DSN {
	return &DSN{
		Return: ReturnHeaders,
		EnvID:  "QQ314159 a+b=c",
		Recipients: map[string]RecipientDSN{
			"u1@example.org": {Notify: []DSNNotify{NotifySuccess, NotifyFailure}, ORcptType: "RFC822", ORcpt: "Old+Name@example.org"},
		},
	}
}

func TestDSNValuesThatCannotBeSentAreLeftOut(t *testing.T) {
	env := Envelope{DSN: &DSN{Return: "full", Recipients: map[string]RecipientDSN{
		"tab@x":   {ORcptType: "UTF-8", ORcpt: "a\tb@x"},
		"slash@x": {ORcptType: "utf-8", ORcpt: `a\b@x`},
		"ok@x":    {ORcptType: "utf-8", ORcpt: "josé@x"},
	}}}
	assert.Equal(t, " RET=FULL", dsnMailParams(env), "RET is sent in the spelling it must have")
	env.DSN.Return = "sometimes"
	assert.Empty(t, dsnMailParams(env))
	assert.Empty(t, dsnRcptParams(env, "tab@x", true), "an ORCPT that cannot be encoded is left out, not the recipient")
	assert.Empty(t, dsnRcptParams(env, "slash@x", false))
	assert.Equal(t, " ORCPT=UTF-8;jos\\x{E9}@x", dsnRcptParams(env, "ok@x", false))

	// RFC 3461 sections 4.2 and 4.4: at most 500 and 100 characters.
	env.DSN.EnvID = strings.Repeat("e", 101)
	env.DSN.Recipients["long@x"] = RecipientDSN{ORcptType: "rfc822", ORcpt: strings.Repeat("o", 500) + "@x"}
	assert.Empty(t, dsnMailParams(env))
	assert.Empty(t, dsnRcptParams(env, "long@x", false))
}

func TestDSNNotifies(t *testing.T) {
	var none *DSN
	assert.True(t, none.Notifies("a@x", NotifyFailure), "failures are reported by default")
	assert.True(t, none.Notifies("a@x", NotifyDelay))
	assert.False(t, none.Notifies("a@x", NotifySuccess))
	d := &DSN{Recipients: map[string]RecipientDSN{
		"never@x":   {Notify: []DSNNotify{NotifyNever}},
		"success@x": {Notify: []DSNNotify{NotifySuccess}},
	}}
	assert.False(t, d.Notifies("never@x", NotifyFailure))
	assert.False(t, d.Notifies("success@x", NotifyFailure))
	assert.True(t, d.Notifies("success@x", NotifySuccess))
	assert.True(t, d.Notifies("other@x", NotifyFailure))
	c := d.Clone()
	c.Recipients["never@x"].Notify[0] = NotifyDelay
	assert.Equal(t, NotifyNever, d.Recipients["never@x"].Notify[0], "Clone copies deeply")
}

func TestProviderPassesDSNParameters(t *testing.T) {
	for _, ehlo := range [][]string{
		{"DSN"},               // one command at a time, go-smtp's client
		{"DSN", "PIPELINING"}, // pipelined DATA
	} {
		t.Run(strings.Join(ehlo, "+"), func(t *testing.T) {
			f := newFixture(t)
			_, err := f.q.Enqueue(Envelope{From: "s@x.test", To: []string{"u1@example.org", "u2@example.org"}, DSN: testDSN()},
				strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
			require.NoError(t, err)
			got, cmds := f.pull(t, "ATRN example.org", scriptedCustomer{ehlo: ehlo})
			require.Len(t, got, 1)
			all := strings.Join(cmds, "\n")
			assert.Contains(t, all, "MAIL FROM:<s@x.test> RET=HDRS ENVID=QQ314159+20a+2Bb+3Dc")
			assert.Contains(t, all, "RCPT TO:<u1@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=RFC822;Old+2BName@example.org\n")
			assert.Contains(t, all, "RCPT TO:<u2@example.org>\n")
		})
	}
	t.Run("customer without DSN", func(t *testing.T) {
		f := newFixture(t)
		_, err := f.q.Enqueue(Envelope{From: "s@x.test", To: []string{"u1@example.org"}, DSN: testDSN()},
			strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
		require.NoError(t, err)
		got, cmds := f.pull(t, "ATRN example.org", scriptedCustomer{ehlo: []string{"PIPELINING"}})
		require.Len(t, got, 1)
		all := strings.Join(cmds, "\n")
		assert.NotContains(t, all, "RET=")
		assert.NotContains(t, all, "NOTIFY=")
	})
}

func TestDSNParametersReachTheCustomersSink(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run(map[bool]string{false: "DATA", true: "BDAT"}[chunking], func(t *testing.T) {
			q := newMemQueue()
			dsn := testDSN()
			dsn.Recipients["u2@example.org"] = RecipientDSN{Notify: []DSNNotify{NotifyNever}, ORcptType: "UTF-8", ORcpt: "josé@example.org"}
			_, err := q.Enqueue(Envelope{From: "s@x.test", To: []string{"u1@example.org", "u2@example.org"}, DSN: dsn},
				strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
			require.NoError(t, err)
			e := ctlsProvider(t, false, func(p *Provider) { p.Queue, p.DisableChunking = q, !chunking })
			var got Envelope
			sink := dsnSink{func(ctx context.Context, env Envelope, body io.Reader) error {
				got = env
				_, err := io.Copy(io.Discard, body)
				return err
			}}
			res, err := ctlsCustomer(e, sink, nil).Fetch(context.Background())
			require.NoError(t, err)
			require.Equal(t, 1, res.Messages)
			assert.Equal(t, dsn, got.DSN)
		})
	}
}

// resultQueue is a memqueue.Queue that keeps the results its messages are
// completed with.
type resultQueue struct {
	memQueue
	mu      sync.Mutex
	results []RecipientResult
}

func (q *resultQueue) Claim(ctx context.Context, domains []string) (Batch, error) {
	b, err := q.memQueue.Claim(ctx, domains)
	return resultBatch{b, q}, err
}

type resultBatch struct {
	Batch
	q *resultQueue
}

func (b resultBatch) Next(ctx context.Context) (Message, error) {
	m, err := b.Batch.Next(ctx)
	if err != nil {
		return nil, err
	}
	return resultMessage{m, b.q}, nil
}

type resultMessage struct {
	Message
	q *resultQueue
}

func (m resultMessage) Complete(ctx context.Context, results []RecipientResult) error {
	m.q.mu.Lock()
	m.q.results = append(m.q.results, results...)
	m.q.mu.Unlock()
	return m.Message.Complete(ctx, results)
}

func TestProviderTellsTheQueueWhenTheCustomerLacksDSN(t *testing.T) {
	for _, ehlo := range [][]string{{"PIPELINING"}, {"PIPELINING", "DSN"}, nil} {
		t.Run(strings.Join(ehlo, "+"), func(t *testing.T) {
			var q *resultQueue
			f := newFixture(t, func(p *Provider) {
				q = &resultQueue{memQueue: p.Queue.(memQueue)}
				p.Queue = q
			})
			f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "u@example.org")
			got, _ := f.pull(t, "ATRN example.org", scriptedCustomer{ehlo: ehlo})
			require.Len(t, got, 1)
			q.mu.Lock()
			defer q.mu.Unlock()
			require.Len(t, q.results, 1)
			assert.NoError(t, q.results[0].Err)
			assert.Equal(t, !slices.Contains(ehlo, "DSN"), q.results[0].NoDSN)
		})
	}
}

// dsnSink is a sink that takes on DSN requests.
type dsnSink struct{ MessageSinkFunc }

func (dsnSink) PassesDSN() bool { return true }

func TestCustomerOffersDSNOnlyForASinkThatPassesItOn(t *testing.T) {
	for _, passes := range []bool{false, true} {
		t.Run(fmt.Sprint("passes=", passes), func(t *testing.T) {
			q := &resultQueue{memQueue: newMemQueue()}
			_, err := q.Enqueue(Envelope{From: "s@x.test", To: []string{"u1@example.org"}, DSN: testDSN()},
				strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
			require.NoError(t, err)
			e := ctlsProvider(t, false, func(p *Provider) { p.Queue = q })
			var got Envelope
			var sink MessageSink = MessageSinkFunc(func(ctx context.Context, env Envelope, body io.Reader) error {
				got = env
				_, err := io.Copy(io.Discard, body)
				return err
			})
			if passes {
				sink = dsnSink{sink.(MessageSinkFunc)}
			}
			_, err = ctlsCustomer(e, sink, nil).Fetch(context.Background())
			require.NoError(t, err)
			q.mu.Lock()
			defer q.mu.Unlock()
			require.Len(t, q.results, 1)
			assert.NoError(t, q.results[0].Err)
			// A Maildir-like sink ends the line and sends nothing: the
			// customer does not offer DSN, and the provider's queue is told
			// to answer NOTIFY=SUCCESS itself.
			assert.Equal(t, !passes, q.results[0].NoDSN)
			assert.Equal(t, passes, got.DSN != nil)
		})
	}
}
