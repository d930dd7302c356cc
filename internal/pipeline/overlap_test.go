package pipeline

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/pipeline/pipetest"
)

func TestOverlapSendsEachBodyWithTheNextGroup(t *testing.T) {
	// With Overlap, Send returns without waiting for 354, and a body, its
	// dot and the next message's commands go out in one write: one write
	// per message. The last body goes with Quit, before QUIT.
	srv := &pipetest.Server{}
	snd := start(t, srv, Config{Overlap: true})
	var outs []*outcome
	for i := range 3 {
		m, o := msg(fmt.Sprintf("s%d@x.test", i), fmt.Sprintf("body %d\r\n", i), "a@y.test")
		require.NoError(t, snd.Send(m))
		outs = append(outs, o)
	}
	assert.Equal(t, 0, outs[2].calls, "the last message is not settled before its body is sent")
	require.NoError(t, snd.Quit())
	reads := srv.Reads()
	assert.Contains(t, reads, "MAIL FROM:<s0@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\n")
	assert.Contains(t, reads, "body 0\r\n.\r\nMAIL FROM:<s1@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\n")
	assert.Contains(t, reads, "body 1\r\n.\r\nMAIL FROM:<s2@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\n")
	assert.Contains(t, reads, "body 2\r\n.\r\n")
	assert.Equal(t, "QUIT\r\n", reads[len(reads)-1])
	for i, o := range outs {
		assert.Equal(t, 1, o.calls, "message %d", i)
		assert.Equal(t, []int{0}, o.codes(), "message %d", i)
	}
	require.Len(t, srv.Delivered(), 3)
	assert.Equal(t, "body 2\r\n", srv.Delivered()[2].Body)
}

// closeBody records that it was closed.
type closeBody struct {
	io.Reader
	closed bool
}

func (b *closeBody) Close() error {
	b.closed = true
	return nil
}

func TestOverlapCloseSettlesThePendingBody(t *testing.T) {
	// Close before the next Send: the body that waits is closed, unsent,
	// and its message is not taken for delivered.
	srv := &pipetest.Server{}
	snd := start(t, srv, Config{Overlap: true})
	body := &closeBody{Reader: strings.NewReader("hi\r\n")}
	m, o := msg("s@x.test", "", "a@y.test")
	m.Open = func() (io.ReadCloser, error) { return body, nil }
	require.NoError(t, snd.Send(m))
	assert.False(t, body.closed, "the body waits for the next Send")
	snd.Close()
	assert.True(t, body.closed)
	assert.Equal(t, []int{-1}, o.codes())
	assert.ErrorIs(t, o.errs[0], ErrClosed)
	assert.Empty(t, srv.Delivered())
}

func TestOverlapIsLockstepWithoutPipelining(t *testing.T) {
	// A server without PIPELINING gets one command at a time, Overlap or
	// not: the body follows its 354 before Send returns.
	srv := &pipetest.Server{Ext: []string{"8BITMIME"}}
	snd := start(t, srv, Config{Overlap: true})
	require.True(t, snd.Lockstep())
	m, o := msg("s@x.test", "hi\r\n", "a@y.test")
	require.NoError(t, snd.Send(m))
	assert.Equal(t, []int{0}, o.codes(), "settled when Send returns")
	require.NoError(t, snd.Quit())
	for _, r := range srv.Reads() {
		if !strings.HasSuffix(r, "\r\n.\r\n") {
			assert.Equal(t, 1, strings.Count(r, "\r\n"), "one command per write: %q", r)
		}
	}
}

func TestStopLeavesTheMessageUnsent(t *testing.T) {
	// Stop is asked once the previous body is out: a message taken while
	// the Sender waited for 354 is not sent, and not settled, when the
	// caller is stopping by then; the one before it is.
	dataModes(t, func(t *testing.T, mode Config) {
		stop := false
		mode.Stop = func() bool { return stop }
		srv := &pipetest.Server{}
		snd := start(t, srv, mode)
		m1, o1 := msg("s1@x.test", "one\r\n", "a@y.test")
		m2, o2 := msg("s2@x.test", "two\r\n", "b@y.test")
		require.NoError(t, snd.Send(m1))
		stop = true
		require.ErrorIs(t, snd.Send(m2), ErrStopped)
		require.NoError(t, snd.Quit())
		assert.Equal(t, []int{0}, o1.codes())
		assert.Equal(t, 0, o2.calls, "Done is not called for a message not sent")
		require.Len(t, srv.Delivered(), 1)
		assert.NotContains(t, srv.Input(), "s2@x.test")
	})
}
