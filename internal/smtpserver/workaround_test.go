package smtpserver

// Tests that pin the go-smtp behaviours the work-arounds of
// workaround.go exist for. They run go-smtp's server alone, without this
// package; each fails once go-smtp changes, saying which work-around can
// then go (and UPSTREAM.md which report is settled).

import (
	"bufio"
	"errors"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/oneconn"
)

// client speaks SMTP over one end of a net.Pipe: a goroutine reads the
// replies as they come, each whole, its lines joined with "\n".
type client struct {
	t       *testing.T
	conn    net.Conn
	replies chan string
}

func newClient(t *testing.T, conn net.Conn) *client {
	c := &client{t: t, conn: conn, replies: make(chan string, 16)}
	go func() {
		defer close(c.replies)
		br := bufio.NewReader(conn)
		var lines []string
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\r\n")
			lines = append(lines, line)
			if len(line) < 4 || line[3] != '-' {
				c.replies <- strings.Join(lines, "\n")
				lines = nil
			}
		}
	}()
	return c
}

// send writes s, all of it, and returns without waiting for a reply.
func (c *client) send(s string) {
	_, err := io.WriteString(c.conn, s)
	require.NoError(c.t, err)
}

// reply waits for the next reply.
func (c *client) reply() string {
	r, ok := <-c.replies
	require.True(c.t, ok, "connection closed before the reply")
	return r
}

// do sends a command and returns its reply.
func (c *client) do(cmd string) string {
	c.send(cmd + "\r\n")
	return c.reply()
}

// start is MAIL and RCPT, both accepted.
func (c *client) start() {
	require.True(c.t, strings.HasPrefix(c.do("MAIL FROM:<a@example.net>"), "250 "))
	require.True(c.t, strings.HasPrefix(c.do("RCPT TO:<b@example.org>"), "250 "))
}

// recorder is a go-smtp backend whose session records the calls it gets.
// data, when set, is the session's Data.
type recorder struct {
	callLog
	data func(r io.Reader) error
}

func (b *recorder) NewSession(*smtp.Conn) (smtp.Session, error) { return b, nil }

func (b *recorder) Mail(string, *smtp.MailOptions) error { b.record("Mail"); return nil }
func (b *recorder) Rcpt(string, *smtp.RcptOptions) error { b.record("Rcpt"); return nil }
func (b *recorder) Reset()                               { b.record("Reset") }
func (b *recorder) Logout() error                        { return nil }

func (b *recorder) Data(r io.Reader) error {
	b.record("Data")
	if b.data != nil {
		return b.data(r)
	}
	_, err := io.Copy(io.Discard, r)
	return err
}

// goSMTP serves one end of a net.Pipe with go-smtp's server alone and
// returns a client on the other, greeted. Call the returned function at
// the end, inside the bubble.
func goSMTP(t *testing.T, b smtp.Backend, maxSize int64) (*client, func()) {
	s, c := net.Pipe()
	srv := smtp.NewServer(b)
	srv.Domain = "server.test"
	srv.MaxMessageBytes = maxSize
	srv.ErrorLog = log.New(io.Discard, "", 0)
	go srv.Serve(oneconn.New(s))
	cl := newClient(t, c)
	require.True(t, strings.HasPrefix(cl.reply(), "220 "))
	return cl, func() {
		c.Close()
		srv.Close()
	}
}

// go-smtp's data reader fails once MaxMessageBytes is used up, before it
// reads the end of the data: a message of exactly the limit is refused.
// Work-around: sizeLimit gives go-smtp one byte more, and wireConn
// advertises the real limit with SIZE.
func TestGoSMTPRefusesMessageOfExactlyMaxMessageBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, done := goSMTP(t, &recorder{}, 10)
		defer done()
		ehlo := c.do("EHLO client.test")
		assert.Contains(t, ehlo, "SIZE 10", "go-smtp advertises its MaxMessageBytes")
		c.start()
		require.True(t, strings.HasPrefix(c.do("DATA"), "354 "))
		c.send("12345678\r\n.\r\n") // 10 bytes of message
		if r := c.reply(); !strings.HasPrefix(r, "552 ") {
			t.Fatalf("go-smtp now takes a message of exactly MaxMessageBytes (%q): sizeLimit and the SIZE mending in wireConn can go", r)
		}
	})
}

// go-smtp's EHLO and HELO replies start "Hello <client>", where RFC 5321
// section 4.1.1.1 wants the server's domain first. Work-around: wireConn
// puts Config.Domain in front, and learns from which reply it was whether
// the client said HELO.
func TestGoSMTPGreetsWithoutItsName(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, done := goSMTP(t, &recorder{}, 0)
		defer done()
		ehlo := strings.SplitN(c.do("EHLO client.test"), "\n", 2)[0]
		helo := c.do("HELO client.test")
		if ehlo != "250-Hello client.test" || helo != "250 2.0.0 Hello client.test" {
			t.Fatalf("go-smtp now greets with %q and %q: the greeting mending in wireConn must change, and may go", ehlo, helo)
		}
	})
}

// go-smtp refuses a BDAT chunk that takes the message over
// MaxMessageBytes by itself: the session sees only Reset, as after RSET.
// Work-around: wireConn recognises the reply and calls
// Config.ChunkTooLarge.
func TestGoSMTPRefusesChunkBehindSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &recorder{}
		c, done := goSMTP(t, b, 5)
		defer done()
		c.do("EHLO client.test")
		c.start()
		c.send("BDAT 10 LAST\r\n0123456789")
		r := c.reply()
		require.Equal(t, "552 5.3.4 "+chunkRefusal, r, "the reply wireConn looks for")
		synctest.Wait() // for the Reset that follows the reply
		if calls := b.recorded(); !assert.ObjectsAreEqual([]string{"Mail", "Rcpt", "Reset"}, calls) {
			t.Fatalf("go-smtp now tells the session about a chunk over the limit (%v): the chunk refusal in wireConn can go", calls)
		}
	})
}

// go-smtp copies a BDAT chunk with io.Copy, which takes io.EOF for the end
// of the data: when the connection ends inside the last chunk, the
// session is given the truncated message as whole. Work-around: wireConn
// reads errPeerEOF in place of io.EOF.
func TestGoSMTPTakesEOFInsideChunkForItsEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		type result struct {
			body string
			err  error
		}
		got := make(chan result, 1)
		b := &recorder{data: func(r io.Reader) error {
			body, err := io.ReadAll(r)
			got <- result{string(body), err}
			return err
		}}
		c, done := goSMTP(t, b, 0)
		defer done()
		c.do("EHLO client.test")
		c.start()
		c.send("BDAT 10 LAST\r\nabc")
		c.conn.Close()
		res := <-got
		if res.body != "abc" || res.err != nil {
			t.Fatalf("go-smtp now fails a chunk cut by EOF (Data read %q, %v): errPeerEOF in wireConn can go", res.body, res.err)
		}
	})
}

// go-smtp's goroutine for a BDAT transfer sends Data's result on a
// channel field of the connection that the next transfer replaces: the
// result of an abandoned transfer whose Data returns late is taken for
// the next message's. Work-around: Mail waits in waitTransfer until the
// last transfer's goroutine is done.
func TestGoSMTPGivesStaleBDATResultToNextTransfer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n int
		var mu sync.Mutex
		release := []chan struct{}{make(chan struct{}), make(chan struct{})}
		b := &recorder{data: func(r io.Reader) error {
			mu.Lock()
			i := n
			n++
			mu.Unlock()
			if i == 0 {
				// The first transfer's chunk, then nothing more: its
				// Data returns only when released, after the second
				// transfer has started.
				io.ReadFull(r, make([]byte, 3))
				<-release[0]
				return errors.New("stale result")
			}
			io.Copy(io.Discard, r)
			<-release[1]
			return nil
		}}
		c, done := goSMTP(t, b, 0)
		defer done()
		defer func() {
			// Whatever failed, no Data stays blocked.
			for _, ch := range release {
				select {
				case <-ch:
				default:
					close(ch)
				}
			}
		}()
		c.do("EHLO client.test")
		c.start()
		c.send("BDAT 3\r\nabc")
		require.Equal(t, "250 2.0.0 Continue", c.reply())
		require.True(t, strings.HasPrefix(c.do("RSET"), "250 "))
		c.start()
		c.send("BDAT 3 LAST\r\nxyz")
		synctest.Wait() // both Data calls are waiting to be released
		close(release[0])
		synctest.Wait()
		var r string
		select {
		case r = <-c.replies:
		default:
		}
		close(release[1])
		if r == "" {
			c.reply()
			t.Fatal("go-smtp now waits for the second transfer's own result: waitTransfer can go")
		}
		assert.Equal(t, "554 5.0.0 Error: transaction failed: stale result", r,
			"the first transfer's result answers the second")
	})
}
