package memqueue

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

func TestReadCRLF(t *testing.T) {
	for in, want := range map[string]string{
		"":                 "",
		"a\nb\n":           "a\r\nb\r\n",
		"a\r\nb\r\n":       "a\r\nb\r\n",
		"\n\n":             "\r\n\r\n",
		"a\rb\n":           "a\rb\r\n",
		"x\r\n\ny":         "x\r\n\r\ny",
		"\xc3\xa9\n.\r\n.": "\xc3\xa9\r\n.\r\n.",
	} {
		got, _, err := readCRLF(strings.NewReader(in))
		require.NoError(t, err)
		assert.Equal(t, want, string(got), "%q", in)
		// One byte per read: a CR at the end of one read and the LF at the
		// start of the next are still a CRLF.
		got, _, err = readCRLF(iotest.OneByteReader(strings.NewReader(in)))
		require.NoError(t, err)
		assert.Equal(t, want, string(got), "%q one byte at a time", in)
	}
	_, _, err := readCRLF(iotest.ErrReader(errors.New("boom")))
	assert.ErrorContains(t, err, "boom")
}

func TestQueueBatchesShareWithoutDoubles(t *testing.T) {
	ctx := context.Background()
	q := &Queue{}
	for i := 0; i < 10; i++ {
		_, err := q.Enqueue(odmr.Envelope{From: "s@x.test", To: []string{"a@example.org", "b@example.com"}}, strings.NewReader("x\r\n"))
		require.NoError(t, err)
	}
	b1, _ := q.Claim(ctx, []string{"example.org"})
	b2, _ := q.Claim(ctx, []string{"example.org", "example.com"})
	m1, err := b1.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"a@example.org"}, m1.Envelope().To)
	m2, err := b2.Next(ctx)
	require.NoError(t, err)
	// The first message's example.org recipient is leased by b1.
	assert.Equal(t, []string{"b@example.com"}, m2.Envelope().To)
	assert.Equal(t, m1.Envelope().ID, m2.Envelope().ID)
	require.NoError(t, m1.Complete(ctx, []odmr.RecipientResult{{Recipient: "a@example.org", Err: errors.New("cut")}}))
	require.NoError(t, m2.Complete(ctx, []odmr.RecipientResult{{Recipient: "b@example.com", Err: nil}}))

	// A batch never returns a message twice, even after a temporary failure.
	n := 1
	for {
		m, err := b1.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		require.NoError(t, m.Complete(ctx, []odmr.RecipientResult{{Recipient: "a@example.org", Err: nil}}))
		n++
	}
	assert.Equal(t, 10, n)
	b1.Close()
	b2.Close()
	assert.Equal(t, 1, q.Queued("example.org"), "the temporary failure stays queued")
	assert.Equal(t, 9, q.Queued("example.com"))

	// A new batch gets it again.
	b3, _ := q.Claim(ctx, []string{"example.org"})
	m, err := b3.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, m1.Envelope().ID, m.Envelope().ID)
	b3.Close()
	attempts, lastErr := q.LastError(m1.Envelope().ID, "a@example.org")
	assert.Equal(t, 1, attempts)
	assert.ErrorContains(t, lastErr, "cut")
}

func TestQueueEnqueueFillsEnvelope(t *testing.T) {
	q := &Queue{}
	_, err := q.Enqueue(odmr.Envelope{From: "s@x.test"}, strings.NewReader("x"))
	assert.Error(t, err, "no recipients")
	_, err = q.Enqueue(odmr.Envelope{From: "s@x.test", To: []string{"jos\u00e9@example.org"}}, strings.NewReader("caf\xc3\xa9\n"))
	require.NoError(t, err)
	env := q.Messages()[0]
	assert.True(t, env.UTF8)
	assert.Equal(t, odmr.Body8BitMIME, env.Body)
	assert.Equal(t, int64(7), env.Size)
}

func TestQueueFIFOAcrossDomains(t *testing.T) {
	ctx := context.Background()
	q := &Queue{}
	var want []string
	for i := range 6 {
		to := []string{"u@a.example"}
		if i%2 == 1 {
			to = []string{"u@b.example"}
		}
		if i%3 == 2 {
			to = append(to, "v@c.example")
		}
		id, err := q.Enqueue(odmr.Envelope{To: to}, strings.NewReader("x\r\n"))
		require.NoError(t, err)
		want = append(want, id)
	}
	b, _ := q.Claim(ctx, []string{"c.example", "b.example", "a.example"})
	defer b.Close()
	var got []string
	for {
		m, err := b.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		got = append(got, m.Envelope().ID)
		if len(m.Envelope().To) == 2 {
			// Both recipients of a message come in one lease.
			assert.Contains(t, m.Envelope().To, "v@c.example")
		}
	}
	assert.Equal(t, want, got, "arrival order across the batch's domains")
}

func TestQueueCompletedMessagesLeave(t *testing.T) {
	ctx := context.Background()
	q := &Queue{}
	for range 100 {
		q.Enqueue(odmr.Envelope{To: []string{"u@a.example", "u@b.example"}}, strings.NewReader("x\r\n"))
	}
	// Complete every a.example recipient, then every b.example one, each
	// in a session of its own: the queue ends empty, with no domain left.
	for _, d := range []string{"a.example", "b.example"} {
		b, _ := q.Claim(ctx, []string{d})
		for {
			m, err := b.Next(ctx)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
			require.NoError(t, m.Complete(ctx, []odmr.RecipientResult{{Recipient: m.Envelope().To[0]}}))
		}
		b.Close()
		assert.Equal(t, 0, q.Queued(d))
		ok, _ := q.HasMail(ctx, []string{d})
		assert.False(t, ok)
	}
	assert.Equal(t, 0, q.Len())
	assert.Empty(t, q.Messages())
	assert.Empty(t, q.domains, "no per-domain queue is left behind")
}
