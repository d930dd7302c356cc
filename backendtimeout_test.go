package odmr

import (
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hungQueue is a queue whose backend stops answering: HasMail when
// hangHasMail is set, and Next from its hangNext-th call on (counting
// from 1; 0 never). A hung call returns only when its context ends.
type hungQueue struct {
	memQueue
	hangHasMail bool
	hangNext    int32
	nexts       atomic.Int32
}

func (q *hungQueue) HasMail(ctx context.Context, domains []string) (bool, error) {
	if q.hangHasMail {
		<-ctx.Done()
		return false, ctx.Err()
	}
	return q.memQueue.HasMail(ctx, domains)
}

func (q *hungQueue) Claim(ctx context.Context, domains []string) (Batch, error) {
	b, err := q.memQueue.Claim(ctx, domains)
	if err != nil {
		return nil, err
	}
	return hungBatch{b, q}, nil
}

type hungBatch struct {
	Batch
	q *hungQueue
}

func (b hungBatch) Next(ctx context.Context) (Message, error) {
	if n := b.q.nexts.Add(1); b.q.hangNext > 0 && n >= b.q.hangNext {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return b.Batch.Next(ctx)
}

// TestBackendTimeoutBoundsATRN: a queue that stops answering HasMail
// costs the customer a 451 after BackendTimeout, and the session goes
// on; it used to wait for as long as the backend did, for ever with a
// frozen database.
func TestBackendTimeoutBoundsATRN(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := &hungQueue{memQueue: newMemQueue(), hangHasMail: true}
		p := pipeProvider(io.Discard, func(p *Provider) {
			p.Queue = q
			p.BackendTimeout = 20 * time.Second
		})
		defer p.Close()
		c, _ := pipeDial(t, p, "", 220)
		c.login()
		start := time.Now()
		c.cmd(451, "ATRN example.org")
		assert.Equal(t, 20*time.Second, time.Since(start), "the reply comes at BackendTimeout")
		c.cmd(221, "QUIT")
	})
}

// TestBackendTimeoutBoundsNext: during delivery a Next that does not
// return is given up after BackendTimeout; the provider sends what it
// holds and QUIT, the message delivered before stays delivered and the
// one not handed out stays queued. With PIPELINING the provider calls
// Next while the customer waits, after its 354, for the body.
func TestBackendTimeoutBoundsNext(t *testing.T) {
	for _, ehlo := range []string{"250 customer.test\r\n", "250-customer.test\r\n250 PIPELINING\r\n"} {
		synctest.Test(t, func(t *testing.T) {
			mq := newMemQueue()
			for _, subj := range []string{"one", "two"} {
				_, err := mq.Enqueue(Envelope{From: "s@x.test", To: []string{"u@example.org"}}, strings.NewReader("Subject: "+subj+"\r\n\r\nhi\r\n"))
				require.NoError(t, err)
			}
			q := &hungQueue{memQueue: mq, hangNext: 2}
			p := pipeProvider(io.Discard, func(p *Provider) {
				p.Queue = q
				p.BackendTimeout = 20 * time.Second
			})
			defer p.Close()
			c, _ := pipeDial(t, p, "", 220)
			c.login()
			c.cmd(250, "ATRN example.org")
			start := time.Now()
			// The customer's side of the reversed session.
			c.raw("220 customer.test ESMTP\r\n")
			line, err := c.tp.ReadLine()
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(line, "EHLO "), line)
			c.raw(ehlo)
			for _, want := range []string{"MAIL FROM:<s@x.test>", "RCPT TO:<u@example.org>", "DATA"} {
				line, err := c.tp.ReadLine()
				require.NoError(t, err)
				require.True(t, strings.HasPrefix(line, want), "got %q, want %q", line, want)
				if want == "DATA" {
					c.raw("354 go ahead\r\n")
				} else {
					c.raw("250 ok\r\n")
				}
			}
			body, err := c.tp.ReadDotBytes()
			require.NoError(t, err)
			assert.Contains(t, string(body), "Subject: one")
			c.raw("250 queued\r\n")
			line, err = c.tp.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "QUIT", line)
			assert.Equal(t, 20*time.Second, time.Since(start), "QUIT comes at BackendTimeout")
			c.raw("221 bye\r\n")
			c.expectClosed()
			synctest.Wait()
			assert.Equal(t, 1, mq.Len(), "the message not handed out stays queued")
		})
	}
}

// deadlineQueue records whether HasMail's context has a deadline.
type deadlineQueue struct {
	memQueue
	hasDeadline atomic.Bool
}

func (q *deadlineQueue) HasMail(ctx context.Context, domains []string) (bool, error) {
	_, ok := ctx.Deadline()
	q.hasDeadline.Store(ok)
	return q.memQueue.HasMail(ctx, domains)
}

// TestBackendTimeoutNegativeMeansNoBound: as for the other limits, a
// negative BackendTimeout turns the bound off; it used to expire every
// backend call at once.
func TestBackendTimeoutNegativeMeansNoBound(t *testing.T) {
	for _, c := range []struct {
		timeout time.Duration
		bounded bool
	}{{0, true}, {time.Second, true}, {-1, false}} {
		q := &deadlineQueue{memQueue: newMemQueue()}
		p := pipeProvider(io.Discard, func(p *Provider) {
			p.Queue = q
			p.BackendTimeout = c.timeout
		})
		c1, _ := pipeDial(t, p, "", 220)
		c1.login()
		c1.cmd(453, "ATRN example.org")
		assert.Equal(t, c.bounded, q.hasDeadline.Load(), "BackendTimeout %v", c.timeout)
		c1.cmd(221, "QUIT")
		p.Close()
	}
}
