package odmr_test

import (
	"context"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/memqueue"
)

// bdatCut plays a provider that turns the line around, sends one message
// with BDAT and closes the connection after part of it: cut is what it
// writes after RCPT.
func bdatCut(t *testing.T, cut string) string {
	return swapped(t, func(c *textproto.Conn, raw net.Conn) {
		c.PrintfLine("EHLO fake.example.net")
		if _, _, err := c.ReadResponse(250); err != nil {
			return
		}
		c.PrintfLine("MAIL FROM:<a@sender.test>")
		c.ReadResponse(250)
		c.PrintfLine("RCPT TO:<u1@example.org>")
		c.ReadResponse(250)
		io.WriteString(raw, cut)
		raw.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, raw)
	})
}

func TestCustomerBDATCutInsideTheLastChunkDeliversNothing(t *testing.T) {
	custNoLeaks(t)
	// The provider announces 100 bytes as the last chunk, sends 40 and
	// closes: the sink must not take 40 bytes for the whole message.
	addr := bdatCut(t, "BDAT 100 LAST\r\nSubject: cut\r\n\r\nonly part of the bo")
	sink := &memSink{}
	res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lost during a message")
	assert.Empty(t, sink.received())
	assert.Zero(t, res.Messages)
	assert.False(t, res.NoMail)
}

func TestCustomerBDATCutBetweenChunksIsAnError(t *testing.T) {
	custNoLeaks(t)
	// A whole first chunk, then the line drops before the next BDAT.
	first := "Subject: cut\r\n\r\nfirst chunk\r\n"
	addr := bdatCut(t, "BDAT "+strconv.Itoa(len(first))+"\r\n"+first)
	sink := &memSink{}
	res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lost during a message")
	assert.Empty(t, sink.received())
	assert.Zero(t, res.Messages)
}

func TestCustomerBDATCutInsideAMiddleChunkIsAnError(t *testing.T) {
	custNoLeaks(t)
	addr := bdatCut(t, "BDAT 1000\r\n"+strings.Repeat("x", 10))
	sink := &memSink{}
	_, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lost during a message")
	assert.Empty(t, sink.received())
}

func TestCustomerBDATAbandonedWithRSETIsNotACut(t *testing.T) {
	custNoLeaks(t)
	// RFC 3030 section 3: RSET abandons a BDAT transfer; the session goes
	// on, and the next message arrives.
	next := "Subject: second\r\n\r\nwhole\r\n"
	addr := bdatCut(t, "BDAT 5\r\nhalf-RSET\r\n"+
		"MAIL FROM:<a@sender.test>\r\nRCPT TO:<u1@example.org>\r\n"+
		"BDAT "+strconv.Itoa(len(next))+" LAST\r\n"+next+"QUIT\r\n")
	sink := &memSink{}
	res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages)
	require.Len(t, sink.received(), 1)
	assert.Equal(t, next, sink.received()[0].body)
}

// cuttingProxy forwards connections to target and, on the first one,
// closes both sides once limit bytes have gone from target to the client:
// the client reads a clean end of stream in the middle of whatever was
// being sent, as when the provider's process dies.
func cuttingProxy(t *testing.T, target string, limit int64) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		down, err := l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			down.Close()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(up, down)
			up.Close()
		}()
		io.CopyN(down, up, limit)
		down.Close()
		up.Close()
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return l.Addr().String()
}

func TestCustomerProviderCutMidMessageLeavesItQueued(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run(map[bool]string{false: "DATA", true: "BDAT"}[chunking], func(t *testing.T) {
			custNoLeaks(t)
			q := newCloseWatch()
			body := "Subject: cut\r\n\r\n" + strings.Repeat("a line of the message that will be cut\r\n", 5000)
			custEnqueue(t, q.Queue, "a@sender.test", body, "u1@example.org")
			addr := custProvider(t, q, func(p *odmr.Provider) { p.DisableChunking = !chunking })

			sink := &memSink{}
			_, err := custCustomer(cuttingProxy(t, addr, 100<<10), sink, "example.org").Fetch(context.Background())
			require.Error(t, err)
			assert.Contains(t, err.Error(), "lost during a message")
			assert.Empty(t, sink.received(), "a cut message must not reach the sink")

			q.batchClosed(t)
			attempts, _ := q.LastError("1", "u1@example.org")
			assert.Equal(t, 1, attempts)
			res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
			require.NoError(t, err)
			assert.Equal(t, 1, res.Messages)
			require.Len(t, sink.received(), 1)
			assert.Equal(t, body, sink.received()[0].body)
			assert.Zero(t, q.Len())
		})
	}
}

// swapped plays a provider up to the customer's greeting after the role
// swap, then runs rest.
func swapped(t *testing.T, rest func(c *textproto.Conn, raw net.Conn)) string {
	return fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		if !fakeLogin(c) {
			return
		}
		c.ReadLine() // ATRN
		c.PrintfLine("250 OK now reversing the connection")
		if _, _, err := c.ReadResponse(220); err != nil {
			return
		}
		rest(c, raw)
	})
}

func TestCustomerEHLOReplyStartsWithItsName(t *testing.T) {
	custNoLeaks(t)
	got := make(chan []string, 2)
	addr := swapped(t, func(c *textproto.Conn, raw net.Conn) {
		c.PrintfLine("EHLO fake.example.net")
		_, ehlo, _ := c.ReadResponse(250)
		c.PrintfLine("HELO fake.example.net")
		_, helo, _ := c.ReadResponse(250)
		c.PrintfLine("QUIT")
		c.ReadResponse(221)
		got <- strings.Split(ehlo, "\n")
		got <- []string{helo}
	})
	c := custCustomer(addr, &memSink{}, "example.org")
	c.MaxMessageSize = 4096
	_, err := c.Fetch(context.Background())
	require.NoError(t, err)
	ehlo, helo := <-got, <-got
	// RFC 5321 section 4.1.1.1: the first line of the reply names the
	// server; RFC 1870: SIZE gives the largest message it takes.
	assert.Equal(t, "customer.example.org Hello fake.example.net", ehlo[0])
	assert.Contains(t, ehlo, "SIZE 4096")
	assert.Equal(t, "customer.example.org Hello fake.example.net", helo[0])
}

func TestCustomerCountsABDATChunkOverTheSizeLimitAsRefused(t *testing.T) {
	custNoLeaks(t)
	reply := make(chan int, 1)
	addr := swapped(t, func(c *textproto.Conn, raw net.Conn) {
		c.PrintfLine("EHLO fake.example.net")
		c.ReadResponse(250)
		io.WriteString(raw, "MAIL FROM:<a@sender.test>\r\nRCPT TO:<u1@example.org>\r\n"+
			"BDAT 5000 LAST\r\n"+strings.Repeat("x", 5000))
		c.ReadResponse(250)
		c.ReadResponse(250)
		code, _, _ := c.ReadResponse(250)
		c.PrintfLine("QUIT")
		c.ReadResponse(221)
		reply <- code
	})
	sink := &memSink{}
	c := custCustomer(addr, sink, "example.org")
	c.MaxMessageSize = 4096
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 552, <-reply)
	assert.Equal(t, 1, res.Refused)
	assert.Zero(t, res.Messages)
	assert.Empty(t, sink.received())
}

func TestCustomerPrependsReceived(t *testing.T) {
	custNoLeaks(t)
	body := "Subject: trace\r\n\r\nHi.\r\n"
	// send plays a provider that greets with each of hellos, then sends
	// one message with MAIL's params to rcpts.
	send := func(hellos []string, params string, rcpts ...string) func(c *textproto.Conn, raw net.Conn) {
		return func(c *textproto.Conn, raw net.Conn) {
			for _, h := range hellos {
				c.PrintfLine("%s", h)
				c.ReadResponse(250)
			}
			c.PrintfLine("MAIL FROM:<a@sender.test>%s", params)
			c.ReadResponse(250)
			for _, r := range rcpts {
				c.PrintfLine("RCPT TO:<%s>", r)
				c.ReadResponse(250)
			}
			c.PrintfLine("DATA")
			c.ReadResponse(354)
			io.WriteString(raw, body+".\r\n")
			c.ReadResponse(250)
			c.PrintfLine("QUIT")
			c.ReadResponse(221)
		}
	}
	fetch := func(t *testing.T, script func(c *textproto.Conn, raw net.Conn), off bool) gotMessage {
		sink := &memSink{}
		c := custCustomer(swapped(t, script), sink, "example.org")
		c.NoReceivedHeader = off
		_, err := c.Fetch(context.Background())
		require.NoError(t, err)
		require.Len(t, sink.received(), 1)
		got := sink.received()[0]
		assert.Equal(t, body, got.body, "the message follows the field unchanged")
		return got
	}
	t.Run("EHLO, one recipient", func(t *testing.T) {
		before := time.Now().Truncate(time.Second)
		got := fetch(t, send([]string{"EHLO relay.example.net"}, "", "u1@example.org"), false)
		lines := strings.Split(strings.TrimSuffix(got.received, "\r\n"), "\r\n")
		require.Len(t, lines, 3, got.received)
		assert.Equal(t, "Received: from relay.example.net ([127.0.0.1])", lines[0])
		assert.Equal(t, "\tby customer.example.org with ESMTP id "+got.env.ID, lines[1])
		rest, date, ok := strings.Cut(lines[2], "; ")
		require.True(t, ok, lines[2])
		assert.Equal(t, "\tfor <u1@example.org>", rest)
		when, err := time.Parse(time.RFC1123Z, date)
		require.NoError(t, err)
		assert.False(t, when.Before(before), "the time of receipt")
		assert.Regexp(t, `^[A-Za-z0-9-]+$`, got.env.ID, "the ID is an atom (RFC 5321 section 4.4)")
		assert.Equal(t, "relay.example.net", got.session.Provider)
		assert.Equal(t, "127.0.0.1", got.session.RemoteAddr.(*net.TCPAddr).IP.String())
		assert.Nil(t, got.session.TLS)
	})
	t.Run("HELO, two recipients", func(t *testing.T) {
		got := fetch(t, send([]string{"HELO relay.example.net"}, "", "u1@example.org", "u2@example.org"), false)
		assert.Contains(t, got.received, " with SMTP id ")
		assert.NotContains(t, got.received, "for <", "no recipient is named when there are several")
	})
	t.Run("SMTPUTF8, a second EHLO", func(t *testing.T) {
		got := fetch(t, send([]string{"EHLO first.example.net", "EHLO relay.example.net"}, " SMTPUTF8", "jos\u00e9@example.org"), false)
		assert.Contains(t, got.received, "from relay.example.net ", "the name of the latest EHLO")
		assert.Contains(t, got.received, " with UTF8SMTP id ", "RFC 6531 section 3.7.3")
		assert.NotContains(t, got.received, "for <", "an address the field cannot carry as it is is left out")
	})
	t.Run("NoReceivedHeader", func(t *testing.T) {
		got := fetch(t, send([]string{"EHLO relay.example.net"}, "", "u1@example.org"), true)
		assert.Empty(t, got.received)
	})
}

func TestCustomerBDATZeroThenRSETThenMore(t *testing.T) {
	custNoLeaks(t)
	// A zero-length chunk starts go-smtp's transfer goroutine without the
	// sink reading anything; the provider abandons the transfer at once,
	// abandons a second one after five octets, and sends a third whole.
	next := "Subject: third\r\n\r\nwhole\r\n"
	addr := bdatCut(t, "BDAT 0\r\nRSET\r\n"+
		"MAIL FROM:<a@sender.test>\r\nRCPT TO:<u1@example.org>\r\nBDAT 5\r\nhalf-RSET\r\n"+
		"MAIL FROM:<a@sender.test>\r\nRCPT TO:<u1@example.org>\r\n"+
		"BDAT "+strconv.Itoa(len(next))+" LAST\r\n"+next+"QUIT\r\n")
	sink := &memSink{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := custCustomer(addr, sink, "example.org").Fetch(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, res.Messages)
	require.Len(t, sink.received(), 1)
	assert.Equal(t, next, sink.received()[0].body)
}

func TestCustomerCountsASinksSizeRefusalOnce(t *testing.T) {
	custNoLeaks(t)
	// A sink over quota may use go-smtp's own words for a message too
	// large; the refusal is counted once, with DATA and with BDAT.
	for _, chunking := range []bool{false, true} {
		q := &memqueue.Queue{}
		custEnqueue(t, q, "a@sender.test", "Subject: x\r\n\r\nx\r\n", "u1@example.org")
		addr := custProvider(t, q, func(p *odmr.Provider) { p.DisableChunking = !chunking })
		sink := odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
			io.Copy(io.Discard, body)
			return &odmr.Error{Code: 552, EnhancedCode: odmr.EnhancedCode{5, 3, 4}, Message: "Max message size exceeded"}
		})
		res, err := custCustomer(addr, sink, "example.org").Fetch(context.Background())
		require.NoError(t, err)
		assert.Equal(t, 1, res.Refused, "chunking %v", chunking)
	}
}

func TestCustomerRefusesAnOverlongEHLOName(t *testing.T) {
	custNoLeaks(t)
	codes := make(chan int, 1)
	addr := swapped(t, func(c *textproto.Conn, raw net.Conn) {
		c.PrintfLine("EHLO %s", strings.Repeat("a", 300)+".example.net")
		code, _, _ := c.ReadResponse(250)
		c.PrintfLine("QUIT")
		c.ReadResponse(221)
		codes <- code
	})
	_, err := custCustomer(addr, &memSink{}, "example.org").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 501, <-codes, "RFC 5321 section 4.5.3.1.2: a domain has at most 255 octets")
}
