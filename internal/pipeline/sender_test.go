package pipeline

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/pipeline/pipetest"
	"github.com/go-odmr/odmr/internal/wire"
)

// outcome collects what Done reports for one message.
type outcome struct {
	errs  []error
	calls int
}

// msg makes a Mail whose body is body and whose results land in the
// returned outcome.
func msg(from, body string, to ...string) (*Mail, *outcome) {
	o := &outcome{}
	return &Mail{
		From: from,
		To:   to,
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil },
		Done: func(errs []error) {
			o.calls++
			o.errs = append([]error(nil), errs...)
		},
	}, o
}

// code returns the reply code of a result: 0 for nil, -1 for a lost
// connection, -2 for a body error.
func code(err error) int {
	var se *wire.Error
	var ce *ConnError
	var be *BodyError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &se):
		return se.Code
	case errors.As(err, &ce):
		return -1
	case errors.As(err, &be):
		return -2
	}
	return -3
}

func (o *outcome) codes() []int {
	out := make([]int, len(o.errs))
	for i, e := range o.errs {
		out[i] = code(e)
	}
	return out
}

// start runs srv on one end of a net.Pipe, or of a loopback TCP
// connection for the tests that overTCP runs, and returns a Sender,
// already past EHLO, on the other.
func start(t *testing.T, srv *pipetest.Server, cfg Config) *Sender {
	t.Helper()
	c, s := net.Pipe()
	if _, ok := tcpTests.Load(t); ok {
		c, s = tcpPair(t)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(s) }()
	snd := NewSender(context.Background(), c, cfg)
	t.Cleanup(func() {
		snd.Close()
		c.Close()
		<-done
	})
	_, err := snd.Hello("client.test")
	require.NoError(t, err)
	return snd
}

// tcpTests holds the tests (*testing.T) for which start connects over
// loopback TCP.
var tcpTests sync.Map

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	server = <-accepted
	require.NotNil(t, server)
	t.Cleanup(func() { server.Close() })
	return client, server
}

// transports runs f as the subtest name, over net.Pipe, whose writes wait
// for the other end to read them, so that a goroutine of the Sender reads
// the replies; and as name + " over TCP", on which the Sender reads them
// itself when it can.
func transports(t *testing.T, name string, f func(t *testing.T)) {
	t.Run(name, f)
	t.Run(name+" over TCP", func(t *testing.T) {
		tcpTests.Store(t, true)
		t.Cleanup(func() { tcpTests.Delete(t) })
		f(t)
	})
}

// modes runs a test with DATA, with DATA and Overlap, and with BDAT,
// each given the Config to start from, over net.Pipe and over TCP.
func modes(t *testing.T, f func(t *testing.T, mode Config)) {
	dataModes(t, f)
	transports(t, "BDAT", func(t *testing.T) { f(t, Config{Chunking: true}) })
}

// dataModes runs a test with DATA, without and with Overlap, over
// net.Pipe and over TCP.
func dataModes(t *testing.T, f func(t *testing.T, mode Config)) {
	transports(t, "DATA", func(t *testing.T) { f(t, Config{}) })
	transports(t, "DATA overlapped", func(t *testing.T) { f(t, Config{Overlap: true}) })
}

func extFor(chunking bool) []string {
	if chunking {
		return []string{"PIPELINING", "CHUNKING", "8BITMIME"}
	}
	return []string{"PIPELINING", "8BITMIME"}
}

func TestHelloParsesExtensions(t *testing.T) {
	srv := &pipetest.Server{Ext: []string{"PIPELINING", "SIZE 1000", "chunking"}}
	c, s := net.Pipe()
	go srv.Serve(s)
	defer c.Close()
	snd := NewSender(context.Background(), c, Config{})
	defer snd.Close()
	ext, err := snd.Hello("client.test")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"PIPELINING": "", "SIZE": "1000", "CHUNKING": ""}, ext)
	require.NoError(t, snd.Quit())
}

func TestDATAGroupIsOneWriteAndNextGroupFollowsTheDot(t *testing.T) {
	// The server holds back its reply to each final dot but the last
	// until the client has sent the next message's MAIL: a client that
	// waits for the reply would stall here.
	var ahead []bool
	var srv *pipetest.Server
	n := 0
	srv = &pipetest.Server{Hold: func(br *bufio.Reader, conn net.Conn) {
		if n++; n < 3 {
			ahead = append(ahead, pipetest.SentAhead(br, conn, "MAIL FROM:<s"))
		}
	}}
	snd := start(t, srv, Config{})
	var outs []*outcome
	for i := range 3 {
		m, o := msg(fmt.Sprintf("s%d@x.test", i), fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i), "a@y.test", "b@y.test")
		require.NoError(t, snd.Send(m))
		outs = append(outs, o)
	}
	require.NoError(t, snd.Quit())
	assert.Equal(t, []bool{true, true}, ahead)
	for _, o := range outs {
		assert.Equal(t, 1, o.calls)
		assert.Equal(t, []int{0, 0}, o.codes())
	}
	assert.Contains(t, srv.Reads(), "MAIL FROM:<s0@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
	got := srv.Delivered()
	require.Len(t, got, 3)
	assert.Equal(t, "Subject: 2\r\n\r\nbody 2\r\n", got[2].Body)
}

func TestBDATDoesNotWait(t *testing.T) {
	// Nothing is answered until the last message is in: a BDAT sender
	// never waits for a reply while its window has room.
	srv := &pipetest.Server{Ext: extFor(true), Gate: "body 4\r\n"}
	snd := start(t, srv, Config{Chunking: true})
	var outs []*outcome
	for i := range 5 {
		m, o := msg("s@x.test", fmt.Sprintf("body %d\r\n", i), "a@y.test")
		require.NoError(t, snd.Send(m))
		outs = append(outs, o)
	}
	require.NoError(t, snd.Quit())
	assert.True(t, srv.Gated())
	for _, o := range outs {
		assert.Equal(t, []int{0}, o.codes())
	}
	require.Len(t, srv.Delivered(), 5)
	assert.Equal(t, "body 4\r\n", srv.Delivered()[4].Body)
	cmds := strings.Join(srv.Commands(), "\n")
	assert.Equal(t, 4, strings.Count(cmds, "RSET"), "RSET before each MAIL but the first:\n%s", cmds)
}

func TestMixedRecipientReplies(t *testing.T) {
	modes(t, func(t *testing.T, mode Config) {
		srv := &pipetest.Server{Ext: extFor(mode.Chunking), Rcpt: func(to string) string {
			switch {
			case strings.HasPrefix(to, "temp"):
				return "450 4.2.1 mailbox busy"
			case strings.HasPrefix(to, "perm"):
				return "550 5.1.1 no such user"
			case strings.HasPrefix(to, "fwd"):
				return "251 2.1.5 will forward"
			}
			return "250 2.1.5 OK"
		}}
		snd := start(t, srv, mode)
		m1, o1 := msg("s@x.test", "one\r\n", "ok@y.test", "temp@y.test", "perm@y.test", "fwd@y.test")
		m2, o2 := msg("s@x.test", "two\r\n", "temp2@y.test", "perm2@y.test")
		m3, o3 := msg("s@x.test", "three\r\n", "ok3@y.test")
		for _, m := range []*Mail{m1, m2, m3} {
			require.NoError(t, snd.Send(m))
		}
		require.NoError(t, snd.Quit())
		assert.Equal(t, []int{0, 450, 550, 0}, o1.codes())
		// No recipient accepted: the message is not sent, and the next
		// transaction still starts clean.
		assert.Equal(t, []int{450, 550}, o2.codes())
		assert.Equal(t, []int{0}, o3.codes())
		var se *wire.Error
		require.ErrorAs(t, o1.errs[2], &se)
		assert.Equal(t, [3]int{5, 1, 1}, se.EnhancedCode)
		assert.Equal(t, "no such user", se.Message)
		got := srv.Delivered()
		require.Len(t, got, 2)
		assert.Equal(t, []string{"ok@y.test", "fwd@y.test"}, got[0].To)
		assert.Equal(t, "three\r\n", got[1].Body)
	})
}

func TestDATAAcceptedAlthoughNoRecipientWasGetsALoneDot(t *testing.T) {
	// RFC 2920 section 3.1: the client must check the reply to DATA even
	// when every RCPT failed, and send a single dot if it is 354.
	dataModes(t, func(t *testing.T, mode Config) {
		srv := &pipetest.Server{
			Rcpt: func(to string) string {
				if to == "c@y.test" {
					return "250 OK"
				}
				return "550 5.1.1 no"
			},
			Data: func(int) string { return "354 go ahead anyway" },
		}
		snd := start(t, srv, mode)
		m1, o1 := msg("s@x.test", "never sent\r\n", "a@y.test", "b@y.test")
		require.NoError(t, snd.Send(m1))
		m2, o2 := msg("s@x.test", "second\r\n", "c@y.test")
		require.NoError(t, snd.Send(m2))
		require.NoError(t, snd.Quit())
		assert.Equal(t, []int{550, 550}, o1.codes())
		assert.Equal(t, []int{0}, o2.codes())
		all := strings.Join(srv.Reads(), "")
		assert.Contains(t, all, "DATA\r\n.\r\nMAIL FROM:<s@x.test>")
		assert.NotContains(t, all, "never sent")
		require.Len(t, srv.Delivered(), 1)
	})
}

func TestDATARefused(t *testing.T) {
	dataModes(t, func(t *testing.T, mode Config) {
		n := 0
		srv := &pipetest.Server{Data: func(accepted int) string {
			n++
			if n == 1 {
				return "451 4.3.0 try later"
			}
			return "354 go ahead"
		}}
		snd := start(t, srv, mode)
		m1, o1 := msg("s@x.test", "one\r\n", "a@y.test", "b@y.test")
		m2, o2 := msg("s@x.test", "two\r\n", "c@y.test")
		require.NoError(t, snd.Send(m1))
		require.NoError(t, snd.Send(m2))
		require.NoError(t, snd.Quit())
		assert.Equal(t, []int{451, 451}, o1.codes())
		assert.Equal(t, []int{0}, o2.codes())
		// The refused transaction is reset before the next one.
		cmds := srv.Commands()
		i := indexOf(cmds, "DATA")
		require.GreaterOrEqual(t, i, 0)
		assert.Equal(t, "RSET", cmds[i+1])
	})
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

func TestRefusalAfterTheData(t *testing.T) {
	modes(t, func(t *testing.T, mode Config) {
		srv := &pipetest.Server{Ext: extFor(mode.Chunking),
			Rcpt: func(to string) string {
				if to == "gone@y.test" {
					return "550 5.1.1 gone"
				}
				return "250 OK"
			},
			End: func(m pipetest.Message) string {
				switch {
				case strings.Contains(m.Body, "virus"):
					return "554 5.7.1 rejected content"
				case strings.Contains(m.Body, "later"):
					return "452 4.3.1 out of space"
				}
				return "250 2.0.0 queued"
			}}
		snd := start(t, srv, mode)
		m1, o1 := msg("s@x.test", "a virus\r\n", "a@y.test", "gone@y.test")
		m2, o2 := msg("s@x.test", "later please\r\n", "b@y.test")
		m3, o3 := msg("", "bounce\r\n", "c@y.test")
		for _, m := range []*Mail{m1, m2, m3} {
			require.NoError(t, snd.Send(m))
		}
		require.NoError(t, snd.Quit())
		assert.Equal(t, []int{554, 550}, o1.codes())
		assert.Equal(t, []int{452}, o2.codes())
		assert.Equal(t, []int{0}, o3.codes())
		require.Len(t, srv.Delivered(), 1)
		assert.Equal(t, "", srv.Delivered()[0].From)
	})
}

func TestMAILRefused(t *testing.T) {
	modes(t, func(t *testing.T, mode Config) {
		srv := &pipetest.Server{Ext: extFor(mode.Chunking), Mail: func(from string) string {
			if from == "spammer@x.test" {
				return "550 5.7.1 sender refused"
			}
			return "250 OK"
		}}
		snd := start(t, srv, mode)
		m1, o1 := msg("spammer@x.test", "spam\r\n", "a@y.test", "b@y.test")
		m2, o2 := msg("ok@x.test", "ham\r\n", "c@y.test")
		require.NoError(t, snd.Send(m1))
		require.NoError(t, snd.Send(m2))
		require.NoError(t, snd.Quit())
		// The reply to MAIL decides for every recipient, whatever RCPT
		// got.
		assert.Equal(t, []int{550, 550}, o1.codes())
		assert.Equal(t, []int{0}, o2.codes())
		require.Len(t, srv.Delivered(), 1)
		assert.Equal(t, "ham\r\n", srv.Delivered()[0].Body)
	})
}

func TestConnectionCutLeavesEverythingUnacknowledgedTemporary(t *testing.T) {
	cases := []struct {
		name string
		cut  string // the line at which the server hangs up
		want [][]int
	}{
		// The server took message 1's dot and answered it, then hung up
		// on message 2's group.
		{"after a delivered message", "MAIL FROM:<s2@x.test>", [][]int{{0, 0}, {-1}, {-1}}},
		// An accepted recipient is not delivered until the final reply.
		{"between recipients", "RCPT TO:<b1@y.test>", [][]int{{-1, -1}, {-1}, {-1}}},
		{"before the dot's reply", "DATA", [][]int{{-1, -1}, {-1}, {-1}}},
		{"in the middle of a body", "line 2\r\n", [][]int{{-1, -1}, {-1}, {-1}}},
	}
	for _, c := range cases {
		dataModes(t, func(t *testing.T, mode Config) {
			t.Run(c.name, func(t *testing.T) {
				srv := &pipetest.Server{Cut: func(l string) bool { return strings.HasPrefix(l, c.cut) }}
				snd := start(t, srv, mode)
				var outs []*outcome
				var errs []error
				for i := range 3 {
					m, o := msg(fmt.Sprintf("s%d@x.test", i+1), "line 1\r\nline 2\r\n", fmt.Sprintf("a%d@y.test", i+1))
					if i == 0 {
						m.To = append(m.To, "b1@y.test")
					}
					errs = append(errs, snd.Send(m))
					outs = append(outs, o)
				}
				errs = append(errs, snd.Quit())
				for i, o := range outs {
					assert.Equal(t, 1, o.calls, "message %d", i+1)
					assert.Equal(t, c.want[i], o.codes(), "message %d", i+1)
				}
				// Once the connection is gone, Send and Quit say so.
				assert.Error(t, errs[2])
				assert.Error(t, errs[3])
			})
		})
	}
}

func TestConnectionCutWithBDATInFlight(t *testing.T) {
	// With BDAT several messages are in flight: those answered before
	// the cut keep their outcome, the rest is temporary.
	srv := &pipetest.Server{Ext: extFor(true), Cut: func(l string) bool { return l == "MAIL FROM:<s3@x.test>" }}
	snd := start(t, srv, Config{Chunking: true})
	var outs []*outcome
	for i := range 4 {
		m, o := msg(fmt.Sprintf("s%d@x.test", i+1), "hello\r\n", "a@y.test")
		snd.Send(m)
		outs = append(outs, o)
	}
	assert.Error(t, snd.Quit())
	for i, want := range [][]int{{0}, {0}, {-1}, {-1}} {
		assert.Equal(t, 1, outs[i].calls)
		assert.Equal(t, want, outs[i].codes(), "message %d", i+1)
	}
}

// failingBody returns some bytes, then an error.
type failingBody struct {
	data string
	read bool
}

var errDisk = errors.New("disk on fire")

func (b *failingBody) Read(p []byte) (int, error) {
	if !b.read {
		b.read = true
		return copy(p, b.data), nil
	}
	return 0, errDisk
}
func (b *failingBody) Close() error { return nil }

func TestBodyReadErrorNeverEndsTheMessage(t *testing.T) {
	modes(t, func(t *testing.T, mode Config) {
		srv := &pipetest.Server{Ext: extFor(mode.Chunking), Rcpt: func(to string) string {
			if to == "gone@y.test" {
				return "550 5.1.1 gone"
			}
			return "250 OK"
		}}
		// Small chunks, so that part of the body goes out before the error.
		snd := start(t, srv, Config{Chunking: mode.Chunking, Overlap: mode.Overlap, ChunkSize: 8})
		m1, o1 := msg("s@x.test", "first\r\n", "a@y.test")
		m2, o2 := msg("s@x.test", "", "b@y.test", "gone@y.test")
		m2.Open = func() (io.ReadCloser, error) { return &failingBody{data: "Subject: half\r\nthe first half of"}, nil }
		m3, o3 := msg("s@x.test", "third\r\n", "c@y.test")
		require.NoError(t, snd.Send(m1))
		err := snd.Send(m2)
		if mode.Overlap {
			// The body goes out with the next message, whose Send fails.
			require.NoError(t, err)
			require.ErrorIs(t, snd.Send(m3), errDisk)
			assert.ErrorIs(t, snd.Quit(), errDisk)
		} else {
			require.ErrorIs(t, err, errDisk)
			assert.ErrorIs(t, snd.Send(m3), errDisk)
		}
		assert.Equal(t, []int{0}, o1.codes(), "the message before is settled by its reply")
		assert.Equal(t, []int{-2, 550}, o2.codes())
		assert.ErrorIs(t, o2.errs[0], errDisk)
		assert.Equal(t, []int{-1}, o3.codes())
		snd.Close()
		// The server never saw the end of the broken message.
		got := srv.Delivered()
		require.Len(t, got, 1)
		assert.Equal(t, "first\r\n", got[0].Body)
		assert.NotContains(t, strings.Join(srv.Reads(), ""), "the first half of\r\n.\r\n")
		assert.NotContains(t, strings.Join(srv.Reads(), ""), "LAST\r\nthe first half")
	})
}

func TestBodyOpenError(t *testing.T) {
	modes(t, func(t *testing.T, mode Config) {
		srv := &pipetest.Server{Ext: extFor(mode.Chunking), Rcpt: func(to string) string {
			if to == "gone@y.test" {
				return "550 5.1.1 gone"
			}
			return "250 OK"
		}}
		snd := start(t, srv, mode)
		m1, o1 := msg("s@x.test", "", "a@y.test", "gone@y.test")
		m1.Open = func() (io.ReadCloser, error) { return nil, errDisk }
		m2, o2 := msg("s@x.test", "second\r\n", "b@y.test")
		require.NoError(t, snd.Send(m1))
		require.NoError(t, snd.Send(m2))
		require.NoError(t, snd.Quit())
		// Refused recipients keep the server's answer (they will bounce);
		// accepted ones get the open error (they stay queued).
		assert.Equal(t, []int{-2, 550}, o1.codes())
		var be *BodyError
		require.ErrorAs(t, o1.errs[0], &be)
		assert.True(t, be.Open)
		assert.Equal(t, []int{0}, o2.codes())
		require.Len(t, srv.Delivered(), 1)
		cmds := srv.Commands()
		assert.Equal(t, []string{"RCPT TO:<gone@y.test>", "RSET"}, cmds[3:5], "no data for the first message")
	})
}

func TestBDATChunkRefused(t *testing.T) {
	chunks := 0
	srv := &pipetest.Server{Ext: extFor(true), Chunk: func(n int) string {
		chunks++
		if chunks == 2 {
			return "552 5.3.4 message too big"
		}
		return "250 2.0.0 chunk OK"
	}}
	snd := start(t, srv, Config{Chunking: true, ChunkSize: 16})
	m1, o1 := msg("s@x.test", strings.Repeat("0123456789\r\n", 20), "a@y.test", "b@y.test")
	m2, o2 := msg("s@x.test", "small\r\n", "c@y.test")
	require.NoError(t, snd.Send(m1))
	require.NoError(t, snd.Send(m2))
	require.NoError(t, snd.Quit())
	assert.Equal(t, []int{552, 552}, o1.codes())
	assert.Equal(t, []int{0}, o2.codes())
	require.Len(t, srv.Delivered(), 1)
	assert.Equal(t, "small\r\n", srv.Delivered()[0].Body)
}

func TestLargeBodiesStreamExactly(t *testing.T) {
	modes(t, func(t *testing.T, mode Config) {
		srv := &pipetest.Server{Ext: extFor(mode.Chunking)}
		snd := start(t, srv, Config{Chunking: mode.Chunking, Overlap: mode.Overlap, ChunkSize: 4096, LastWindow: 8192})
		var b strings.Builder
		for i := range 20000 {
			fmt.Fprintf(&b, ".%d caf\xc3\xa9 \xff line\r\n", i)
		}
		body := b.String()
		var outs []*outcome
		for range 3 {
			m, o := msg("s@x.test", body, "a@y.test")
			require.NoError(t, snd.Send(m))
			outs = append(outs, o)
		}
		require.NoError(t, snd.Quit())
		for _, o := range outs {
			assert.Equal(t, []int{0}, o.codes())
		}
		require.Len(t, srv.Delivered(), 3)
		for _, m := range srv.Delivered() {
			assert.True(t, m.Body == body, "body differs")
		}
	})
}

func TestFlowControlWithManyRecipients(t *testing.T) {
	// More recipients than MaxPending: the sender reads replies while it
	// sends, and net.Pipe's synchronous writes do not deadlock.
	modes(t, func(t *testing.T, mode Config) {
		srv := &pipetest.Server{Ext: extFor(mode.Chunking), Rcpt: func(to string) string {
			if strings.HasPrefix(to, "odd") {
				return "550 5.1.1 odd"
			}
			return "250 OK"
		}}
		snd := start(t, srv, Config{Chunking: mode.Chunking, Overlap: mode.Overlap, MaxPending: 3})
		var to []string
		var want []int
		for i := range 50 {
			if i%2 == 1 {
				to = append(to, fmt.Sprintf("odd%d@y.test", i))
				want = append(want, 550)
			} else {
				to = append(to, fmt.Sprintf("even%d@y.test", i))
				want = append(want, 0)
			}
		}
		var outs []*outcome
		for range 5 {
			m, o := msg("s@x.test", "hi\r\n", to...)
			require.NoError(t, snd.Send(m))
			outs = append(outs, o)
		}
		require.NoError(t, snd.Quit())
		for _, o := range outs {
			assert.Equal(t, want, o.codes())
		}
		assert.Len(t, srv.Delivered(), 5)
	})
}

func TestAddressesWithCRLFAreRefusedNotSent(t *testing.T) {
	srv := &pipetest.Server{}
	snd := start(t, srv, Config{})
	m1, o1 := msg("s@x.test", "hi\r\n", "a@y.test", "b@y.test>\r\nRCPT TO:<evil@z.test")
	m2, o2 := msg("s@x.test>\r\nRSET", "hi\r\n", "c@y.test")
	require.NoError(t, snd.Send(m1))
	require.NoError(t, snd.Send(m2))
	require.NoError(t, snd.Quit())
	assert.Equal(t, []int{0, 553}, o1.codes())
	assert.Equal(t, []int{553}, o2.codes())
	assert.NotContains(t, strings.Join(srv.Commands(), "\n"), "evil")
}

// silentServer greets, answers EHLO, then reads without answering.
func silentServer(conn net.Conn) {
	defer conn.Close()
	io.WriteString(conn, "220 hi\r\n")
	br := bufio.NewReader(conn)
	br.ReadString('\n')
	io.WriteString(conn, "250-hi\r\n250 PIPELINING\r\n")
	io.Copy(io.Discard, br)
}

func TestReplyTimeout(t *testing.T) {
	readers(t, func(t *testing.T) {
		// On the bubble's clock the timeout fires exactly when it is due,
		// however loaded the machine: the reply is late, never the test.
		synctest.Test(t, func(t *testing.T) {
			c, s := net.Pipe()
			go silentServer(s)
			defer c.Close()
			snd := NewSender(context.Background(), c, Config{ReplyTimeout: 50 * time.Millisecond})
			defer snd.Close()
			_, err := snd.Hello("client.test")
			require.NoError(t, err)
			m, o := msg("s@x.test", "hi\r\n", "a@y.test")
			start := time.Now()
			err = snd.Send(m)
			require.ErrorIs(t, err, errTimeout)
			assert.Equal(t, 50*time.Millisecond, time.Since(start), "the reply timeout, on the bubble's clock")
			assert.Equal(t, []int{-1}, o.codes())
		})
	})
}

func TestContextCancel(t *testing.T) {
	readers(t, func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, s := net.Pipe()
			go silentServer(s)
			defer c.Close()
			ctx, cancel := context.WithCancel(context.Background())
			snd := NewSender(ctx, c, Config{})
			defer snd.Close()
			_, err := snd.Hello("client.test")
			require.NoError(t, err)
			m, o := msg("s@x.test", "hi\r\n", "a@y.test")
			go func() {
				// Cancel once the sender waits for the reply that never
				// comes, not at a guessed moment.
				synctest.Wait()
				cancel()
			}()
			err = snd.Send(m)
			require.ErrorIs(t, err, context.Canceled)
			assert.Equal(t, []int{-1}, o.codes())
		})
	})
}

func TestQuitWaitsForEveryOutcome(t *testing.T) {
	// QUIT goes out only once every message's outcome is known, so that
	// a server that has seen QUIT knows the client has recorded them.
	modes(t, func(t *testing.T, mode Config) {
		var outs []*outcome
		srv := &pipetest.Server{Ext: extFor(mode.Chunking)}
		snd := start(t, srv, mode)
		for range 3 {
			m, o := msg("s@x.test", "hi\r\n", "a@y.test")
			require.NoError(t, snd.Send(m))
			outs = append(outs, o)
		}
		require.NoError(t, snd.Quit())
		for _, o := range outs {
			assert.Equal(t, []int{0}, o.codes())
		}
		reads := srv.Reads()
		assert.Equal(t, "QUIT\r\n", reads[len(reads)-1], "QUIT alone, after the replies")
	})
}

func TestCloseSettlesMessagesInFlight(t *testing.T) {
	srv := &pipetest.Server{Ext: extFor(true), Gate: "never sent"}
	snd := start(t, srv, Config{Chunking: true})
	m, o := msg("s@x.test", "hi\r\n", "a@y.test")
	require.NoError(t, snd.Send(m))
	assert.Equal(t, 0, o.calls)
	snd.Close()
	assert.Equal(t, []int{-1}, o.codes())
	assert.ErrorIs(t, o.errs[0], ErrClosed)
}

func TestBDATChunksEndWithWholeLines(t *testing.T) {
	// A relay that passes the session on line by line (fetchmail) holds a
	// partial line; a chunk that ended mid-line, with the sender then
	// waiting for replies, deadlocked it.
	srv := &pipetest.Server{Ext: []string{"PIPELINING", "CHUNKING"}}
	snd := start(t, srv, Config{Chunking: true, ChunkSize: 100})
	long := strings.Repeat("L", 250) + "\r\n" // longer than a chunk: cut where it must
	body := strings.Repeat("a line of 30 bytes, with CRLF\r\n", 10) + long + "end\r\n"
	m, o := msg("s@x.test", body, "a@y.test")
	require.NoError(t, snd.Send(m))
	require.NoError(t, snd.Quit())
	assert.Equal(t, []int{0}, o.codes())
	require.Len(t, srv.Delivered(), 1)
	assert.Equal(t, body, srv.Delivered()[0].Body)

	in := srv.Input()
	var sizes []int
	for {
		i := strings.Index(in, "BDAT ")
		if i < 0 {
			break
		}
		line, rest, _ := strings.Cut(in[i:], "\r\n")
		var n int
		fmt.Sscanf(line, "BDAT %d", &n)
		chunk := rest[:n]
		sizes = append(sizes, n)
		if !strings.HasSuffix(line, "LAST") && !strings.HasSuffix(chunk, "\n") && !strings.Contains(chunk, "LLLLLLLLLL") {
			t.Errorf("chunk of %d bytes ends mid-line: %q", n, chunk[max(0, n-20):])
		}
		in = rest[n:]
	}
	assert.Greater(t, len(sizes), 4, "the body went in several chunks: %v", sizes)
	for _, n := range sizes {
		assert.LessOrEqual(t, n, 100)
	}
}

func TestChunkEnd(t *testing.T) {
	assert.Equal(t, 7, chunkEnd([]byte("ab\r\ncd\nef")))
	assert.Equal(t, 4, chunkEnd([]byte("abcd")), "no line feed: all of it")
	assert.Equal(t, 3, chunkEnd([]byte("a\r\n")))
}
