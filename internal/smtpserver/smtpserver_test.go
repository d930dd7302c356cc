package smtpserver

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// callLog records the calls a test session gets; its mu guards the
// session's other fields too.
type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) record(call string) {
	l.mu.Lock()
	l.calls = append(l.calls, call)
	l.mu.Unlock()
}

func (l *callLog) recorded() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.calls...)
}

// testSession is a Session that records its calls; data, when set, is its
// Data.
type testSession struct {
	callLog
	conn *Conn
	mail MailOptions
	rcpt RcptOptions
	data func(r io.Reader) error
}

func (s *testSession) Mail(_ string, o MailOptions) error {
	s.record("Mail")
	s.mu.Lock()
	s.mail = o
	s.mu.Unlock()
	return nil
}

func (s *testSession) Rcpt(_ string, o RcptOptions) error {
	s.record("Rcpt")
	s.mu.Lock()
	s.rcpt = o
	s.mu.Unlock()
	return nil
}

func (s *testSession) Reset()        { s.record("Reset") }
func (s *testSession) Logout() error { s.record("Logout"); return nil }

func (s *testSession) Data(r io.Reader) error {
	s.record("Data")
	if s.data != nil {
		return s.data(r)
	}
	_, err := io.Copy(io.Discard, r)
	return err
}

// serve runs Serve on one end of a net.Pipe and returns a client on the
// other, greeted. The returned function closes the client and waits for
// Serve to return.
func serve(t *testing.T, cfg Config, s *testSession) (*client, func()) {
	a, b := net.Pipe()
	if cfg.Domain == "" {
		cfg.Domain = "server.test"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Serve(t.Context(), a, cfg, BackendFunc(func(c *Conn) (Session, error) {
			s.mu.Lock()
			s.conn = c
			s.mu.Unlock()
			return s, nil
		}))
	}()
	c := newClient(t, b)
	require.True(t, strings.HasPrefix(c.reply(), "220 server.test "))
	return c, func() {
		b.Close()
		<-done
	}
}

func TestServeTakesMessageOfExactlyMaxMessageBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, done := serve(t, Config{MaxMessageBytes: 10}, &testSession{})
		defer done()
		ehlo := c.do("EHLO client.test")
		assert.True(t, strings.HasSuffix(ehlo, "\n250 SIZE 10"), "the limit advertised is the real one: %q", ehlo)
		c.start()
		require.True(t, strings.HasPrefix(c.do("DATA"), "354 "))
		c.send("12345678\r\n.\r\n")
		assert.Equal(t, "250 2.0.0 OK: queued", c.reply())
	})
}

func TestServeGreetsWithItsName(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &testSession{}
		c, done := serve(t, Config{}, s)
		defer done()
		ehlo := strings.SplitN(c.do("EHLO client.test"), "\n", 2)[0]
		assert.Equal(t, "250-server.test Hello client.test", ehlo)
		assert.False(t, s.conn.HELO())
		assert.Equal(t, "250 server.test Hello other.test", c.do("HELO other.test"))
		assert.True(t, s.conn.HELO())
		assert.Equal(t, "other.test", s.conn.Hostname())
	})
}

func TestServeTellsChunkTooLarge(t *testing.T) {
	for _, tc := range []struct {
		name    string
		refusal error // the session's Data returns it
		want    int   // calls of ChunkTooLarge
	}{
		// go-smtp refuses the chunk by itself: the one case to tell.
		{"server's", nil, 1},
		// The session refuses in go-smtp's own words: not the server's
		// refusal, though the reply is the same.
		{"session's", &Error{Code: 552, EnhancedCode: [3]int{5, 3, 4}, Message: chunkRefusal}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var mu sync.Mutex
				n := 0
				s := &testSession{}
				if tc.refusal != nil {
					s.data = func(r io.Reader) error {
						io.Copy(io.Discard, r)
						return tc.refusal
					}
				}
				c, done := serve(t, Config{MaxMessageBytes: 5, ChunkTooLarge: func() {
					mu.Lock()
					n++
					mu.Unlock()
				}}, s)
				defer done()
				c.do("EHLO client.test")
				c.start()
				if tc.refusal != nil {
					c.send("BDAT 3 LAST\r\nabc")
				} else {
					c.send("BDAT 10 LAST\r\n0123456789")
				}
				assert.Equal(t, "552 5.3.4 "+chunkRefusal, c.reply())
				mu.Lock()
				defer mu.Unlock()
				assert.Equal(t, tc.want, n)
			})
		})
	}
}

func TestServeAbandonsChunkCutByEOF(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		got := make(chan error, 1)
		s := &testSession{data: func(r io.Reader) error {
			_, err := io.ReadAll(r)
			got <- err
			return err
		}}
		c, done := serve(t, Config{}, s)
		defer done()
		c.do("EHLO client.test")
		c.start()
		c.send("BDAT 10 LAST\r\nabc")
		c.conn.Close()
		assert.ErrorIs(t, <-got, ErrDataReset, "a message cut short is not whole")
	})
}

func TestServeMailWaitsForAbandonedTransfer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n int
		var mu sync.Mutex
		release := make(chan struct{})
		s := &testSession{data: func(r io.Reader) error {
			mu.Lock()
			i := n
			n++
			mu.Unlock()
			if i == 0 {
				io.ReadFull(r, make([]byte, 3))
				<-release
				return errors.New("stale result")
			}
			_, err := io.Copy(io.Discard, r)
			return err
		}}
		c, done := serve(t, Config{}, s)
		defer done()
		c.do("EHLO client.test")
		c.start()
		c.send("BDAT 3\r\nabc")
		require.Equal(t, "250 2.0.0 Continue", c.reply())
		require.True(t, strings.HasPrefix(c.do("RSET"), "250 "))
		c.send("MAIL FROM:<a@example.net>\r\n")
		synctest.Wait()
		select {
		case r := <-c.replies:
			close(release)
			t.Fatalf("MAIL answered %q while the abandoned transfer's Data runs", r)
		default:
		}
		close(release)
		require.True(t, strings.HasPrefix(c.reply(), "250 "))
		require.True(t, strings.HasPrefix(c.do("RCPT TO:<b@example.org>"), "250 "))
		c.send("BDAT 3 LAST\r\nxyz")
		assert.Equal(t, "250 2.0.0 OK: queued", c.reply(), "the message's own result")
	})
}

func TestServeMailWaitsForTransferAtMostTransferWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		s := &testSession{data: func(r io.Reader) error {
			io.ReadFull(r, make([]byte, 3))
			<-release // a sink that does not return
			return nil
		}}
		var logged bytes.Buffer
		var logMu sync.Mutex
		log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logged}, nil))
		c, done := serve(t, Config{TransferWait: time.Minute, Logger: log}, s)
		defer done()
		defer close(release) // before done, which waits for Data
		c.do("EHLO client.test")
		c.start()
		c.send("BDAT 3\r\nabc")
		require.Equal(t, "250 2.0.0 Continue", c.reply())
		require.True(t, strings.HasPrefix(c.do("RSET"), "250 "))
		start := time.Now()
		require.True(t, strings.HasPrefix(c.do("MAIL FROM:<a@example.net>"), "250 "))
		assert.Equal(t, time.Minute, time.Since(start))
		logMu.Lock()
		defer logMu.Unlock()
		assert.Contains(t, logged.String(), "did not finish")
	})
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func TestServePassesOptions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &testSession{}
		c, done := serve(t, Config{DSN: true, SMTPUTF8: true}, s)
		defer done()
		ehlo := c.do("EHLO client.test")
		assert.Contains(t, ehlo, "DSN")
		assert.Contains(t, ehlo, "SMTPUTF8")
		require.True(t, strings.HasPrefix(c.do("MAIL FROM:<a@example.net> SIZE=42 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=a+2Bb"), "250 "))
		require.True(t, strings.HasPrefix(c.do("RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bc@example.org"), "250 "))
		s.mu.Lock()
		defer s.mu.Unlock()
		assert.Equal(t, MailOptions{Size: 42, Body: "8BITMIME", UTF8: true, Return: "HDRS", EnvelopeID: "a+b"}, s.mail)
		assert.Equal(t, RcptOptions{Notify: []string{"SUCCESS", "FAILURE"}, OriginalRecipientType: "RFC822", OriginalRecipient: "b+c@example.org"}, s.rcpt)
	})
}

func TestServeRepliesWithSessionErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &testSession{data: func(r io.Reader) error {
			_, err := io.Copy(io.Discard, r)
			if errors.Is(err, ErrLineTooLong) {
				return &Error{Code: 554, EnhancedCode: [3]int{5, 6, 0}, Message: "Line too long"}
			}
			return &Error{Code: 451, Message: "Try later"}
		}}
		c, done := serve(t, Config{MaxLineLength: 100}, s)
		defer done()
		c.do("EHLO client.test")
		c.start()
		require.True(t, strings.HasPrefix(c.do("DATA"), "354 "))
		c.send("short\r\n.\r\n")
		assert.Equal(t, "451 4.0.0 Try later", c.reply(), "a zero enhanced code is sent as X.0.0")
		c.start()
		require.True(t, strings.HasPrefix(c.do("DATA"), "354 "))
		c.send(strings.Repeat("x", 200) + "\r\n.\r\n")
		assert.Equal(t, "554 5.6.0 Line too long", c.reply())
		synctest.Wait() // for the Reset that follows the reply
		// go-smtp closes the connection after a line too long.
		assert.Equal(t, []string{"Mail", "Rcpt", "Data", "Reset", "Mail", "Rcpt", "Data", "Reset", "Logout"}, s.recorded())
	})
}

func TestServeReturnsOnlyWhenDataHasReturned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		returned := false
		var mu sync.Mutex
		s := &testSession{data: func(r io.Reader) error {
			io.Copy(io.Discard, r)
			<-release
			mu.Lock()
			returned = true
			mu.Unlock()
			return nil
		}}
		c, done := serve(t, Config{}, s)
		c.do("EHLO client.test")
		c.start()
		c.send("BDAT 3\r\nabc")
		require.Equal(t, "250 2.0.0 Continue", c.reply())
		go func() {
			synctest.Wait()
			close(release)
		}()
		done()
		mu.Lock()
		defer mu.Unlock()
		assert.True(t, returned)
	})
}

func TestServeMaxLineLengthDefault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, done := serve(t, Config{}, &testSession{})
		defer done()
		c.do("EHLO client.test")
		assert.True(t, strings.HasPrefix(c.do("NOOP "+strings.Repeat("x", 1990)), "250 "), "under 2000 bytes")
		assert.Equal(t, "500 5.4.0 Too long line, closing connection", c.do("NOOP "+strings.Repeat("x", 2000)))
	})
}
