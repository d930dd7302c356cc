package odmr

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/pipeline"
	"github.com/go-odmr/odmr/internal/smtptest"
)

// fullDiskQueue is a memqueue.Queue whose Complete fails, as a spool's does
// when the disk is full: the results are not recorded and the messages
// stay queued.
type fullDiskQueue struct{ memQueue }

func (q fullDiskQueue) Claim(ctx context.Context, domains []string) (Batch, error) {
	b, err := q.memQueue.Claim(ctx, domains)
	return fullDiskBatch{b}, err
}

type fullDiskBatch struct{ Batch }

func (b fullDiskBatch) Next(ctx context.Context) (Message, error) {
	m, err := b.Batch.Next(ctx)
	if err != nil {
		return nil, err
	}
	return fullDiskMessage{m}, nil
}

type fullDiskMessage struct{ Message }

func (fullDiskMessage) Complete(context.Context, []RecipientResult) error {
	return fmt.Errorf("spool: %w", syscall.ENOSPC)
}

// TestFailedRecordStopsDelivery: once the queue cannot record what was
// delivered, the session delivers nothing more. Every message it sent
// after that would stay queued and be delivered again by the next
// session; only those already in flight are. With BDAT nothing waits for
// a reply, so how many are in flight when the failure is read depends on
// how fast the customer answers: at most the Sender's window of
// unanswered commands, four a message (RSET, MAIL, RCPT, BDAT LAST);
// there must be more messages than that for the stop to show.
func TestFailedRecordStopsDelivery(t *testing.T) {
	const n = 3 * pipeline.DefaultMaxPending / 4
	for _, mode := range plModes {
		t.Run(mode.name, func(t *testing.T) {
			b := &smtptest.Refusing{}
			srv := smtp.NewServer(b)
			srv.Domain = "customer.test"
			srv.ErrorLog = silentLog{}
			pc := smtptest.Dial(t, srv, false)
			var hide [][]byte
			if !mode.pipelined {
				hide = [][]byte{[]byte("-PIPELINING"), []byte("-CHUNKING")}
			} else if !mode.chunking {
				hide = [][]byte{[]byte("-CHUNKING")}
			}
			q := fullDiskQueue{newMemQueue()}
			for i := range n {
				_, err := q.Enqueue(Envelope{From: "s@x.test", To: []string{fmt.Sprintf("ok%d@example.org", i)}}, strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nx\r\n", i)))
				require.NoError(t, err)
			}
			var logs syncBuffer
			rc := hideConn{pc, hide}
			p := &Provider{Hostname: "provider.test", Queue: q, Logger: slog.New(slog.NewTextHandler(&logs, nil)), DisableChunking: !mode.chunking}
			err := newSession(p, rc).deliver(context.Background(), rc, []string{"example.org"})
			pc.Close()
			got := len(b.Messages())
			t.Logf("%s: %d of %d messages reached the customer (err %v)", mode.name, got, n, err)
			if mode.chunking {
				assert.LessOrEqual(t, got, 1+pipeline.DefaultMaxPending/4, "at most the messages in flight")
			} else if mode.pipelined {
				// The failed one, and the one whose 354 came in the same
				// wait as its 250 (recordCheckBody).
				assert.LessOrEqual(t, got, 2, "at most the messages in flight")
			} else {
				require.NoError(t, err)
				assert.Equal(t, 1, got, "the first message, whose record failed, and no other")
			}
			assert.Contains(t, logs.String(), "stopping delivery")
			has, err := q.HasMail(context.Background(), []string{"example.org"})
			require.NoError(t, err)
			assert.True(t, has, "nothing was recorded")
		})
	}
}
