package odmr

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/oneconn"
	"github.com/go-odmr/odmr/internal/smtptest"
)

// fullDiskQueue is a MemoryQueue whose Complete fails, as a spool's does
// when the disk is full: the results are not recorded and the messages
// stay queued.
type fullDiskQueue struct{ *MemoryQueue }

func (q fullDiskQueue) Claim(ctx context.Context, domains []string) (Batch, error) {
	b, err := q.MemoryQueue.Claim(ctx, domains)
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
// session; only those already in flight are.
func TestFailedRecordStopsDelivery(t *testing.T) {
	const n = 20
	for _, mode := range plModes {
		t.Run(mode.name, func(t *testing.T) {
			b := &refusingBackend{}
			srv := smtp.NewServer(b)
			srv.Domain = "customer.test"
			srv.ErrorLog = silentLog{}
			pc, cc := net.Pipe()
			go srv.Serve(oneconn.New(cc))
			defer smtptest.Shutdown(t, srv)
			var hide [][]byte
			if !mode.pipelined {
				hide = [][]byte{[]byte("-PIPELINING"), []byte("-CHUNKING")}
			} else if !mode.chunking {
				hide = [][]byte{[]byte("-CHUNKING")}
			}
			q := fullDiskQueue{&MemoryQueue{}}
			for i := range n {
				_, err := q.Enqueue(Envelope{From: "s@x.test", To: []string{fmt.Sprintf("ok%d@example.org", i)}}, strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nx\r\n", i)))
				require.NoError(t, err)
			}
			var logs syncBuffer
			rc := hideConn{pc, hide}
			p := &Provider{Hostname: "provider.test", Queue: q, Logger: slog.New(slog.NewTextHandler(&logs, nil)), DisableChunking: !mode.chunking}
			err := newSession(p, rc).deliver(context.Background(), rc, []string{"example.org"})
			pc.Close()
			b.mu.Lock()
			got := len(b.got)
			b.mu.Unlock()
			t.Logf("%s: %d of %d messages reached the customer (err %v)", mode.name, got, n, err)
			if mode.pipelined {
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
