package pipeline

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/pipeline/pipetest"
)

// TestQuitRunsHeldDoneBeforeQUIT: with Overlap, when the last message's
// DATA is refused, the outcomes read in the same wait (the message
// before it was delivered) were held back and recorded only after the
// 221; a crash in between would deliver that message again.
func TestQuitRunsHeldDoneBeforeQUIT(t *testing.T) {
	dataModes(t, func(t *testing.T, mode Config) {
		var calls atomic.Int32
		var atQuit int32 = -1
		n := 0
		srv := &pipetest.Server{
			Data: func(int) string {
				n++
				if n == 2 {
					return "451 4.3.0 try later"
				}
				return "354 go ahead"
			},
			Cut: func(l string) bool {
				if l == "QUIT" {
					atQuit = calls.Load()
				}
				return false
			},
		}
		snd := start(t, srv, mode)
		m1, _ := msg("s1@x.test", "one\r\n", "a@y.test")
		m2, _ := msg("s2@x.test", "two\r\n", "b@y.test")
		for _, m := range []*Mail{m1, m2} {
			d := m.Done
			m.Done = func(e []error) { calls.Add(1); d(e) }
			require.NoError(t, snd.Send(m))
		}
		require.NoError(t, snd.Quit())
		assert.EqualValues(t, 2, calls.Load())
		assert.EqualValues(t, 2, atQuit, "every Done ran before the server saw QUIT")
	})
}

// TestOverlapTimeoutAndCancelWithBodyPending: with a body pending, a
// reply that does not come ends Quit at ReplyTimeout, and a cancelled
// context ends the next Send; neither message passes for delivered.
func TestOverlapTimeoutAndCancelWithBodyPending(t *testing.T) {
	readers(t, func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, s := net.Pipe()
			go silentServer(s)
			defer c.Close()
			snd := NewSender(context.Background(), c, Config{ReplyTimeout: 50 * time.Millisecond, Overlap: true})
			defer snd.Close()
			_, err := snd.Hello("client.test")
			require.NoError(t, err)
			m, o := msg("s@x.test", "hi\r\n", "a@y.test")
			require.NoError(t, snd.Send(m))
			start := time.Now()
			require.ErrorIs(t, snd.Quit(), errTimeout)
			assert.Equal(t, 50*time.Millisecond, time.Since(start))
			assert.Equal(t, []int{-1}, o.codes())
		})
		synctest.Test(t, func(t *testing.T) {
			c, s := net.Pipe()
			go silentServer(s)
			defer c.Close()
			ctx, cancel := context.WithCancel(context.Background())
			snd := NewSender(ctx, c, Config{Overlap: true})
			defer snd.Close()
			_, err := snd.Hello("client.test")
			require.NoError(t, err)
			m1, o1 := msg("s@x.test", "hi\r\n", "a@y.test")
			m2, o2 := msg("s@x.test", "hi\r\n", "a@y.test")
			require.NoError(t, snd.Send(m1))
			go func() { synctest.Wait(); cancel() }()
			require.ErrorIs(t, snd.Send(m2), context.Canceled)
			assert.Equal(t, []int{-1}, o1.codes())
			assert.Equal(t, []int{-1}, o2.codes())
		})
	})
}
