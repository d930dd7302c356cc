package spool

import (
	"context"
	"io"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

// A session that stops touching its message loses the lease after
// LeaseTTL; activity renews it. Fake time makes this deterministic.
func TestIdleLeaseIsTakenBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, func(o *Options) { o.LeaseTTL = time.Minute })
		ctx := context.Background()
		id := f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org")

		b1, err := f.s.Claim(ctx, []string{"example.org"})
		require.NoError(t, err)
		m1, err := b1.Next(ctx)
		require.NoError(t, err)
		body, err := m1.Open()
		require.NoError(t, err)
		time.Sleep(50 * time.Second)
		_, err = body.Read(make([]byte, 4)) // reading renews the lease
		require.NoError(t, err)
		time.Sleep(50 * time.Second)
		synctest.Wait()

		b2, err := f.s.Claim(ctx, []string{"example.org"})
		require.NoError(t, err)
		_, err = b2.Next(ctx)
		assert.ErrorIs(t, err, io.EOF, "still leased: touched 50s ago")
		require.NoError(t, b2.Close())

		time.Sleep(time.Minute)
		synctest.Wait()
		b3, err := f.s.Claim(ctx, []string{"example.org"})
		require.NoError(t, err)
		m3, err := b3.Next(ctx)
		require.NoError(t, err, "the idle lease was taken back")
		assert.Equal(t, id, m3.Envelope().ID)

		// The first session wakes up: its results are refused.
		err = m1.Complete(ctx, []odmr.RecipientResult{{Recipient: "a@example.org"}})
		assert.ErrorContains(t, err, "taken by another session")
		require.NoError(t, body.Close())
		require.NoError(t, m3.Complete(ctx, []odmr.RecipientResult{{Recipient: "a@example.org"}}))
		require.NoError(t, b1.Close())
		require.NoError(t, b3.Close())
		assert.False(t, has(t, f.s, "example.org"))
		assert.Contains(t, f.logs.String(), "lease idle too long")
	})
}

// A lease taken back for idleness that no one else took is taken again by
// Complete, and the results count.
func TestIdleLeaseCompletesIfNoOneTookIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, func(o *Options) { o.LeaseTTL = time.Minute })
		ctx := context.Background()
		id := f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org")
		b, err := f.s.Claim(ctx, []string{"example.org"})
		require.NoError(t, err)
		m, err := b.Next(ctx)
		require.NoError(t, err)
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		require.NoError(t, m.Complete(ctx, []odmr.RecipientResult{{Recipient: "a@example.org", Err: errMailboxBusy}}))
		require.NoError(t, b.Close())
		info, err := f.s.Stat(id)
		require.NoError(t, err)
		assert.Equal(t, 1, info.Recipients[0].Attempts)
	})
}

// Closing the Spool releases what its batches hold, so another Spool on the
// directory can deliver it.
func TestSpoolCloseReleasesLeases(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.enqueue("s@origin.test", "Subject: x\r\n\r\nx\r\n", "a@example.org")
	other := f.open()
	b, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	_, err = b.Next(ctx)
	require.NoError(t, err)
	assert.Empty(t, drain(t, other, "example.org"), "leased by the first Spool")
	require.NoError(t, f.s.Close())
	assert.Len(t, drain(t, other, "example.org"), 1)
	_, err = b.Next(ctx)
	assert.Error(t, err)
	assert.NoError(t, b.Close())
}
