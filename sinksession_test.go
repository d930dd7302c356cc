package odmr_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/memqueue"
	"github.com/go-odmr/odmr/smtpsink"
)

// countingMTA is a localMTA that counts its sessions and RSET commands,
// and can run a hook at each message's data.
type countingMTA struct {
	*localMTA
	sessions atomic.Int32
	resets   atomic.Int32
	// onData, when set, runs before the n-th message (from 1) is kept;
	// false drops the message.
	onData func(n int) bool
	// mailErr, when set, refuses every MAIL.
	mailErr *smtp.SMTPError
	mu      sync.Mutex
	n       int
}

func (m *countingMTA) NewSession(c *smtp.Conn) (smtp.Session, error) {
	m.sessions.Add(1)
	return &countingSession{localSession{b: m.localMTA}, m}, nil
}

type countingSession struct {
	localSession
	m *countingMTA
}

func (s *countingSession) Reset() {
	s.m.resets.Add(1)
	s.localSession.Reset()
}

func (s *countingSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.m.mailErr != nil {
		return s.m.mailErr
	}
	return s.localSession.Mail(from, opts)
}

func (s *countingSession) Data(r io.Reader) error { return s.LMTPData(r, nil) }

func (s *countingSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	s.m.mu.Lock()
	s.m.n++
	n := s.m.n
	s.m.mu.Unlock()
	if s.m.onData != nil && !s.m.onData(n) {
		io.Copy(io.Discard, r)
		return &smtp.SMTPError{Code: 451, Message: "dropped"}
	}
	return s.localSession.LMTPData(r, status)
}

// startCountingMTA serves m over SMTP or LMTP on loopback TCP and returns
// its address and a function that stops it at once: its listener and
// its connections closed, under go-smtp's feet (go-smtp's own Close
// races with a BDAT transfer under way).
func startCountingMTA(t *testing.T, m *countingMTA, lmtp bool) (string, func()) {
	t.Helper()
	srv := smtp.NewServer(m)
	srv.Domain = "local.example.org"
	srv.LMTP = lmtp
	srv.EnableDSN = true
	srv.ErrorLog = log.New(io.Discard, "", 0)
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := &trackingListener{Listener: tl}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		smtptest.Shutdown(t, srv)
		<-done
	})
	return l.Addr().String(), l.stop
}

// trackingListener keeps the connections it accepted, to close them.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) stop() {
	l.Listener.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

// A fetch of several messages costs one local session, whatever the
// refusals: each RCPT is passed on as it arrives, and a recipient the
// local server refuses is refused to the provider, alone.
func TestSMTPSinkOneLocalSessionPerFetch(t *testing.T) {
	for _, lmtp := range []bool{false, true} {
		t.Run(fmt.Sprintf("lmtp=%v", lmtp), func(t *testing.T) {
			custNoLeaks(t)
			q := &memqueue.Queue{}
			const n = 5
			var bodies []string
			for i := range n {
				body := fmt.Sprintf("Subject: %d\r\n\r\nHello.\r\n", i)
				if i == 1 {
					// Over BDAT's 64 KiB chunks.
					body += strings.Repeat(".line\r\n", 30000)
				}
				bodies = append(bodies, body)
				custEnqueue(t, q, "a@sender.test", body, fmt.Sprintf("u%d@example.org", i), "nobody@example.org")
			}
			mta := &countingMTA{localMTA: &localMTA{refuse: map[string]*smtp.SMTPError{
				"nobody@example.org": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"},
			}}}
			addr, _ := startCountingMTA(t, mta, lmtp)
			sink := smtpsink.New(addr)
			sink.LMTP = lmtp
			res, err := custCustomer(custProvider(t, q), sink, "example.org").Fetch(context.Background())
			require.NoError(t, err)
			assert.Equal(t, n, res.Messages)
			assert.Equal(t, n, res.RefusedRecipients)
			assert.Equal(t, int32(1), mta.sessions.Load(), "one local session for the whole fetch, DSN probe included")

			got := mta.received()
			require.Len(t, got, n)
			for i, m := range got {
				assert.Equal(t, []string{fmt.Sprintf("u%d@example.org", i)}, m.env.To)
				assert.Equal(t, bodies[i], m.body)
			}
			failed := q.Failed()
			require.Len(t, failed, n, "each refusal reaches the provider for its recipient")
			for _, f := range failed {
				assert.Equal(t, "nobody@example.org", f.Recipient)
				var e *odmr.Error
				require.ErrorAs(t, f.Err, &e)
				assert.Equal(t, 550, e.Code)
			}
			assert.Zero(t, q.Len())
		})
	}
}

// A local server that goes away in the middle of a fetch: the message it
// was taking and every one after it get a temporary reply, and stay
// with the provider; the one it took before is delivered once.
func TestSMTPSinkLocalServerDropsMidFetch(t *testing.T) {
	custNoLeaks(t)
	q := &memqueue.Queue{}
	for i := range 4 {
		custEnqueue(t, q, "a@sender.test", fmt.Sprintf("Subject: %d\r\n\r\nHello.\r\n", i), fmt.Sprintf("u%d@example.org", i))
	}
	mta := &countingMTA{localMTA: &localMTA{}}
	addr, stop := startCountingMTA(t, mta, false)
	mta.onData = func(n int) bool {
		if n < 2 {
			return true
		}
		// The server stops: its listener and its connections close
		// before it has answered the second message's data.
		stop()
		return false
	}
	res, err := custCustomer(custProvider(t, q), smtpsink.New(addr), "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages)
	assert.Equal(t, 1, res.Refused, "the message under way")
	assert.Equal(t, 2, res.RefusedRecipients, "the messages after it, refused at RCPT")
	assert.Equal(t, 3, res.LocalRefused)
	require.Len(t, mta.received(), 1)
	assert.Equal(t, int32(1), mta.sessions.Load(), "dialled again once, in vain")

	assert.Equal(t, 3, q.Len(), "nothing lost")
	assert.Empty(t, q.Failed(), "nothing bounced")
	for _, env := range q.Messages() {
		_, err := q.LastError(env.ID, env.To[0])
		var e *odmr.Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, 451, e.Code, "%s: temporary", env.To[0])
	}
}

// A local server that refuses the sender: each recipient is refused with
// its reply, and the mail stays queued.
func TestSMTPSinkLocalServerRefusesSender(t *testing.T) {
	custNoLeaks(t)
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org", "u2@example.org")
	mta := &countingMTA{localMTA: &localMTA{}}
	addr, _ := startCountingMTA(t, mta, false)
	mta.mailErr = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage"}
	res, err := custCustomer(custProvider(t, q), smtpsink.New(addr), "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 0, res.Messages)
	assert.Equal(t, 2, res.RefusedRecipients)
	assert.Equal(t, 2, res.LocalRefused)
	assert.Equal(t, 1, q.Len())
	assert.Empty(t, q.Failed())
	_, lastErr := q.LastError("1", "u2@example.org")
	var e *odmr.Error
	require.ErrorAs(t, lastErr, &e)
	assert.Equal(t, 452, e.Code, "the local server's reply, for each recipient")
	assert.Equal(t, int32(1), mta.sessions.Load())
}

// The session's client with a local server that offers neither
// PIPELINING nor CHUNKING: lock-step commands and DATA, with its dots
// stuffed, and still one session per fetch.
func TestSMTPSinkSessionLockstepData(t *testing.T) {
	for _, lmtp := range []bool{false, true} {
		t.Run(fmt.Sprintf("lmtp=%v", lmtp), func(t *testing.T) {
			custNoLeaks(t)
			q := &memqueue.Queue{}
			bodies := []string{
				"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n",
				"Subject: plain\r\n\r\nHello.\r\n",
				".Subject: a dot first\r\n\r\n" + strings.Repeat("line\r\n.line\r\n", 20000), // over one buffer
			}
			for i, b := range bodies {
				custEnqueue(t, q, "a@sender.test", b, fmt.Sprintf("u%d@example.org", i), "nobody@example.org")
			}
			mta := &countingMTA{localMTA: &localMTA{refuse: map[string]*smtp.SMTPError{
				"nobody@example.org": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"},
			}}}
			addr, _ := startCountingMTA(t, mta, lmtp)
			sink := smtpsink.New(addr)
			sink.LMTP = lmtp
			sink.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &hideExtensions{Conn: c, br: bufio.NewReader(c), hide: []string{"PIPELINING", "CHUNKING"}}, nil
			}
			res, err := custCustomer(custProvider(t, q), sink, "example.org").Fetch(context.Background())
			require.NoError(t, err)
			assert.Equal(t, len(bodies), res.Messages)
			assert.Equal(t, len(bodies), res.RefusedRecipients)
			assert.Equal(t, int32(1), mta.sessions.Load())
			got := mta.received()
			require.Len(t, got, len(bodies))
			for i, m := range got {
				assert.Equal(t, bodies[i], m.body, "message %d arrives as sent", i)
				assert.Equal(t, []string{fmt.Sprintf("u%d@example.org", i)}, m.env.To)
			}
			assert.Zero(t, q.Len())
			assert.Len(t, q.Failed(), len(bodies))
		})
	}
}

// hideExtensions takes extensions out of the EHLO or LHLO reply it reads,
// line by line.
type hideExtensions struct {
	net.Conn
	br      *bufio.Reader
	hide    []string
	pending []byte
}

func (c *hideExtensions) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		line, err := c.br.ReadBytes('\n')
		if len(line) > 4 && line[3] == '-' {
			for _, h := range c.hide {
				if strings.EqualFold(strings.TrimSpace(string(line[4:])), h) {
					line = []byte("250-X-HIDDEN\r\n")
				}
			}
		}
		c.pending = line
		if err != nil && len(line) == 0 {
			return 0, err
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// A BDAT transfer that the provider abandons with RSET leaves the local
// connection in the middle of a message, which only closing it can end
// without delivering a part: the next transaction dials again, and goes
// through.
func TestSMTPSinkSessionAfterAbandonedTransfer(t *testing.T) {
	custNoLeaks(t)
	mta := &countingMTA{localMTA: &localMTA{}}
	addr, _ := startCountingMTA(t, mta, false)
	codes := make(chan []int, 1)
	paddr := fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		var got []int
		defer func() { codes <- got }()
		if !fakeLogin(c) {
			return
		}
		c.ReadLine() // ATRN
		c.PrintfLine("250 OK now reversing the connection")
		step := func(cmd string, data string) {
			if cmd != "" {
				c.PrintfLine("%s", cmd)
			}
			if data != "" {
				c.W.WriteString(data)
				c.W.Flush()
			}
			code, _, _ := c.ReadResponse(0)
			got = append(got, code)
		}
		step("", "")                          // greeting
		step("EHLO fake.example.net", "")     // 250
		step("MAIL FROM:<a@sender.test>", "") // 250
		step("RCPT TO:<u1@example.org>", "")  // 250
		step("BDAT 5", "Hello")               // 250
		step("RSET", "")                      // 250
		step("MAIL FROM:<a@sender.test>", "") // 250
		step("RCPT TO:<u2@example.org>", "")  // 250
		body := "Subject: 2\r\n\r\nSecond.\r\n"
		step(fmt.Sprintf("BDAT %d LAST", len(body)), body) // 250
		step("QUIT", "")                                   // 221
	})
	_, err := custCustomer(paddr, smtpsink.New(addr), "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []int{220, 250, 250, 250, 250, 250, 250, 250, 250, 221}, <-codes)
	got := mta.received()
	require.Len(t, got, 1, "nothing of the abandoned message")
	assert.Equal(t, []string{"u2@example.org"}, got[0].env.To)
	assert.Equal(t, int32(2), mta.sessions.Load(), "the local connection closed mid-message, and dialled again")
}
