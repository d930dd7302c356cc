package odmr

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
		got, err := readCRLF(strings.NewReader(in))
		require.NoError(t, err)
		assert.Equal(t, want, string(got), "%q", in)
		// One byte per read: a CR at the end of one read and the LF at the
		// start of the next are still a CRLF.
		got, err = readCRLF(iotest.OneByteReader(strings.NewReader(in)))
		require.NoError(t, err)
		assert.Equal(t, want, string(got), "%q one byte at a time", in)
	}
	_, err := readCRLF(iotest.ErrReader(errors.New("boom")))
	assert.ErrorContains(t, err, "boom")
}

func TestMemoryQueueBatchesShareWithoutDoubles(t *testing.T) {
	ctx := context.Background()
	q := &MemoryQueue{}
	for i := 0; i < 10; i++ {
		_, err := q.Enqueue(Envelope{From: "s@x.test", To: []string{"a@example.org", "b@example.com"}}, strings.NewReader("x\r\n"))
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
	require.NoError(t, m1.Complete(ctx, []RecipientResult{{Recipient: "a@example.org", Err: errors.New("cut")}}))
	require.NoError(t, m2.Complete(ctx, []RecipientResult{{Recipient: "b@example.com", Err: nil}}))

	// A batch never returns a message twice, even after a temporary failure.
	n := 1
	for {
		m, err := b1.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		require.NoError(t, m.Complete(ctx, []RecipientResult{{Recipient: "a@example.org", Err: nil}}))
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

func TestMemoryQueueCloseReleasesLeases(t *testing.T) {
	ctx := context.Background()
	q := &MemoryQueue{}
	q.Enqueue(Envelope{To: []string{"a@example.org"}}, strings.NewReader("x"))
	b, _ := q.Claim(ctx, []string{"example.org"})
	_, err := b.Next(ctx)
	require.NoError(t, err)
	b.Close()
	b2, _ := q.Claim(ctx, []string{"example.org"})
	_, err = b2.Next(ctx)
	assert.NoError(t, err, "a message leased by a closed batch is free again")
}

func TestMemoryQueueEnqueueFillsEnvelope(t *testing.T) {
	q := &MemoryQueue{}
	_, err := q.Enqueue(Envelope{From: "s@x.test"}, strings.NewReader("x"))
	assert.Error(t, err, "no recipients")
	_, err = q.Enqueue(Envelope{From: "s@x.test", To: []string{"jos\u00e9@example.org"}}, strings.NewReader("caf\xc3\xa9\n"))
	require.NoError(t, err)
	env := q.Messages()[0]
	assert.True(t, env.UTF8)
	assert.Equal(t, Body8BitMIME, env.Body)
	assert.Equal(t, int64(7), env.Size)
}

func TestMemoryQueueBodyTypeComesFromContent(t *testing.T) {
	q := &MemoryQueue{}
	// go-smtp's client declares BODY=8BITMIME for any message.
	q.Enqueue(Envelope{To: []string{"a@example.org"}, Body: Body8BitMIME}, strings.NewReader("plain\r\n"))
	q.Enqueue(Envelope{To: []string{"a@example.org"}}, strings.NewReader("caf\xc3\xa9\r\n"))
	q.Enqueue(Envelope{To: []string{"a@example.org"}, Body: BodyBinaryMIME}, strings.NewReader("x\r\n"))
	m := q.Messages()
	assert.Equal(t, BodyType(""), m[0].Body)
	assert.Equal(t, Body8BitMIME, m[1].Body)
	assert.Equal(t, BodyBinaryMIME, m[2].Body)
}
