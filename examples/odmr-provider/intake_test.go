package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/smtptest"
)

func TestIntakeKeepsDSNRequests(t *testing.T) {
	got := make(chan odmr.Envelope, 1)
	srv := envelopeIntake(got)
	srv.EnableDSN = true
	addr := smtptest.Serve(t, srv)

	c, err := smtp.Dial(addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.test"))
	require.NoError(t, c.Mail("s@x.test", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "id 1+2"}))
	require.NoError(t, c.Rcpt("a@example.org", &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "old@example.org",
	}))
	require.NoError(t, c.Rcpt("b@example.org", nil))
	w, err := c.Data()
	require.NoError(t, err)
	io.WriteString(w, "Subject: x\r\n\r\nx\r\n")
	require.NoError(t, w.Close())
	c.Quit()

	env := <-got
	assert.Equal(t, &odmr.DSN{
		Return: odmr.ReturnHeaders, EnvID: "id 1+2",
		Recipients: map[string]odmr.RecipientDSN{"a@example.org": {
			Notify: []odmr.DSNNotify{odmr.NotifyFailure, odmr.NotifyDelay}, ORcptType: "RFC822", ORcpt: "old@example.org",
		}},
	}, env.DSN)
	assert.Equal(t, []string{"a@example.org", "b@example.org"}, env.To)
}

// TestIntakeFullDiskIs452 checks the reply to a message the queue cannot
// store for want of space: 452 4.3.1 (RFC 5321, RFC 3463), not the 451
// 4.3.0 of other local errors, for both the disk full and the quota
// exceeded errors of the file system.
func TestIntakeFullDiskIs452(t *testing.T) {
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EIO} {
		t.Run(errno.Error(), func(t *testing.T) {
			srv := smtp.NewServer(&intake{accounts: accts, log: slog.New(slog.DiscardHandler),
				enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
					io.Copy(io.Discard, body)
					// As the spool returns it: wrapped, from a write.
					return "", fmt.Errorf("spool: %w", &os.PathError{Op: "write", Path: filepath.Join("tmp", "x.eml"), Err: errno})
				}})
			srv.Domain = "prov.test"
			addr := smtptest.Serve(t, srv)

			c, err := smtp.Dial(addr)
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.Mail("s@x.test", nil))
			require.NoError(t, c.Rcpt("a@example.org", nil))
			w, err := c.Data()
			require.NoError(t, err)
			io.WriteString(w, "Subject: x\r\n\r\nx\r\n")
			err = w.Close()
			var se *smtp.SMTPError
			require.ErrorAs(t, err, &se)
			if errno == syscall.EIO {
				assert.Equal(t, 451, se.Code)
				assert.Equal(t, smtp.EnhancedCode{4, 3, 0}, se.EnhancedCode)
				return
			}
			assert.Equal(t, 452, se.Code)
			assert.Equal(t, smtp.EnhancedCode{4, 3, 1}, se.EnhancedCode)
			assert.False(t, strings.Contains(se.Message, "tmp"), "no file names on the wire: %q", se.Message)
		})
	}
}

// envelopeIntake is the intake for alice's example.org, with a queue
// that takes each message and sends its envelope to got.
func envelopeIntake(got chan<- odmr.Envelope) *smtp.Server {
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	srv := smtp.NewServer(&intake{accounts: accts, log: slog.New(slog.DiscardHandler),
		enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
			_, err := io.Copy(io.Discard, body)
			got <- env
			return "1", err
		}})
	srv.Domain = "prov.test"
	return srv
}

// startIntake serves the intake for alice's example.org and
// xn--bcher-kva.example on loopback, with the memory queue or, with
// spoolDir, the spool, as the program opens them; it returns the
// address and the queue.
func startIntake(t *testing.T, spoolDir string) (string, odmr.QueueSource) {
	t.Helper()
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org", "xn--bcher-kva.example"}}}
	q, enqueue, _, closeQueue, err := openQueue(&config{spoolDir: spoolDir}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(closeQueue)
	srv := smtp.NewServer(&intake{accounts: accts, enqueue: enqueue, log: slog.New(slog.DiscardHandler)})
	srv.Domain = "prov.test"
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	addr := smtptest.Serve(t, srv)
	return addr, q
}

// rawSMTP is a client that writes bytes exactly as given.
type rawSMTP struct {
	t    *testing.T
	conn net.Conn
	tp   *textproto.Conn
}

func dialRaw(t *testing.T, addr string) *rawSMTP {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	c := &rawSMTP{t: t, conn: conn, tp: textproto.NewConn(conn)}
	c.expect(220)
	c.cmd(250, "EHLO client.test")
	return c
}

// expect reads a reply and checks its code; it returns the text.
func (c *rawSMTP) expect(code int) string {
	c.t.Helper()
	got, msg, err := c.tp.ReadResponse(0)
	require.Equal(c.t, code, got, "reply %d %s (%v)", got, msg, err)
	return msg
}

func (c *rawSMTP) cmd(code int, line string) string {
	c.t.Helper()
	_, err := io.WriteString(c.conn, line+"\r\n")
	require.NoError(c.t, err)
	return c.expect(code)
}

func TestIntakeRefusesBareLineEndings(t *testing.T) {
	// Every end-of-data variant of SMTP smuggling, and bare CR and LF in
	// the body, by DATA and by BDAT, into both queues: 554 5.6.0, nothing
	// queued, and the session goes on.
	variants := []struct{ name, text string }{
		{"CR dot CRLF", "a\r.\r\nMAIL FROM:<x@evil.test>\r\n"},
		{"LF dot LF", "a\n.\nMAIL FROM:<x@evil.test>\r\n"},
		{"CRLF dot LF", "a\r\n.\nMAIL FROM:<x@evil.test>\r\n"},
		{"LF dot CRLF", "a\n.\r\nMAIL FROM:<x@evil.test>\r\n"},
		{"CR dot LF", "a\r.\nMAIL FROM:<x@evil.test>\r\n"},
		{"bare CR in body", "a\rb\r\n"},
		{"bare LF in body", "a\nb\r\n"},
		// Not "a\r" before the final CRLF.CRLF: go-smtp's data reader
		// then misses the end of data ("\r\r\n.\r\n") and waits
		// for the read timeout.
	}
	for _, queue := range []string{"memory", "spool"} {
		t.Run(queue, func(t *testing.T) {
			dir := ""
			if queue == "spool" {
				dir = t.TempDir()
			}
			addr, q := startIntake(t, dir)
			c := dialRaw(t, addr)
			for _, v := range variants {
				body := "Subject: x\r\n\r\n" + v.text
				c.cmd(250, "MAIL FROM:<s@sender.test>")
				c.cmd(250, "RCPT TO:<u@example.org>")
				c.cmd(354, "DATA")
				io.WriteString(c.conn, body+"\r\n.\r\n")
				assert.Contains(t, c.expect(554), "5.6.0", "DATA: %s", v.name)

				c.cmd(250, "MAIL FROM:<s@sender.test>")
				c.cmd(250, "RCPT TO:<u@example.org>")
				io.WriteString(c.conn, "BDAT "+strconv.Itoa(len(body))+" LAST\r\n"+body)
				assert.Contains(t, c.expect(554), "5.6.0", "BDAT: %s", v.name)
			}
			has, err := q.HasMail(context.Background(), []string{"example.org"})
			require.NoError(t, err)
			assert.False(t, has, "nothing queued")

			// The session is still in step: a clean message is taken.
			c.cmd(250, "MAIL FROM:<s@sender.test>")
			c.cmd(250, "RCPT TO:<u@example.org>")
			c.cmd(354, "DATA")
			io.WriteString(c.conn, "Subject: x\r\n\r\nclean\r\n.\r\n")
			c.expect(250)
			has, err = q.HasMail(context.Background(), []string{"example.org"})
			require.NoError(t, err)
			assert.True(t, has)
		})
	}
}

// queuedRecipients returns the recipients of every message queued for
// domain.
func queuedRecipients(t *testing.T, q odmr.QueueSource, domain string) (from, to []string) {
	t.Helper()
	b, err := q.Claim(context.Background(), []string{domain})
	require.NoError(t, err)
	defer b.Close()
	for {
		m, err := b.Next(context.Background())
		if err != nil {
			break
		}
		from = append(from, m.Envelope().From)
		to = append(to, m.Envelope().To...)
	}
	return from, to
}

func TestIntakeKeepsQuotedLocalParts(t *testing.T) {
	// go-smtp hands the session a quoted local part unquoted: the intake
	// puts the quotes back, so "q@example.net"@example.org does not
	// become q@example.net@example.org, and "a b"@example.org can be
	// written in a RCPT again.
	for _, queue := range []string{"memory", "spool"} {
		t.Run(queue, func(t *testing.T) {
			dir := ""
			if queue == "spool" {
				dir = t.TempDir()
			}
			addr, q := startIntake(t, dir)
			c := dialRaw(t, addr)
			c.cmd(250, `MAIL FROM:<"s p"@sender.test>`)
			c.cmd(250, `RCPT TO:<"a b"@example.org>`)
			c.cmd(250, `RCPT TO:<"q@example.net"@example.org>`)
			c.cmd(250, `RCPT TO:<"plain"@example.org>`) // needless quotes: the same mailbox
			c.cmd(250, `RCPT TO:<"x\"y"@example.org>`)
			c.cmd(354, "DATA")
			io.WriteString(c.conn, "Subject: x\r\n\r\nx\r\n.\r\n")
			c.expect(250)
			from, to := queuedRecipients(t, q, "example.org")
			assert.Equal(t, []string{`"s p"@sender.test`}, from)
			assert.Equal(t, []string{`"a b"@example.org`, `"q@example.net"@example.org`, "plain@example.org", `"x\"y"@example.org`}, to)
		})
	}
}

func TestIntakeTakesBothFormsOfAnIDNDomain(t *testing.T) {
	addr, q := startIntake(t, t.TempDir())
	c := dialRaw(t, addr)
	c.cmd(250, "MAIL FROM:<s@sender.test> SMTPUTF8")
	c.cmd(250, "RCPT TO:<x@bücher.example>")
	c.cmd(250, "RCPT TO:<y@XN--BCHER-KVA.example>")
	c.cmd(550, "RCPT TO:<z@bucher.example>") // another domain
	c.cmd(354, "DATA")
	io.WriteString(c.conn, "Subject: x\r\n\r\nx\r\n.\r\n")
	c.expect(250)
	_, to := queuedRecipients(t, q, "xn--bcher-kva.example")
	assert.Equal(t, []string{"x@bücher.example", "y@XN--BCHER-KVA.example"}, to)
}

// TestIntakeCapsConnections: the intake serves at most -smtp-max-conns
// connections at once and answers further ones 421 at once, so that a
// flood of idle clients on port 25 cannot take every file descriptor of
// the process (the ODMR listener, the spool and PostgreSQL need them);
// a connection that ends makes room again.
func TestIntakeCapsConnections(t *testing.T) {
	c, err := parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	assert.Equal(t, defaultIntakeMaxConns, c.smtpMaxConns)
	_, err = parseFlags([]string{"-accounts", "x", "-smtp-max-conns", "0"})
	assert.ErrorContains(t, err, "-smtp-max-conns")

	addr := serveCappedIntake(t, &intake{maxConns: 2})
	greet := func() (int, string, *textproto.Conn) { return greetIntake(t, addr, "127.0.0.1") }
	code, _, first := greet()
	require.Equal(t, 220, code)
	code, _, _ = greet()
	require.Equal(t, 220, code)
	code, _, tp := greet()
	assert.Equal(t, 421, code)
	_, err = tp.ReadLine()
	assert.ErrorIs(t, err, io.EOF, "refused connection closed")
	tp.Close()

	// The server closes the first connection after 221, and leaves the
	// count before it does: end of file says the room is there.
	require.NoError(t, first.PrintfLine("QUIT"))
	_, _, err = first.ReadResponse(221)
	require.NoError(t, err)
	_, err = first.ReadLine()
	require.ErrorIs(t, err, io.EOF)
	code, _, _ = greet()
	assert.Equal(t, 220, code)
}

// TestIntakeLogsThroughSlog: what go-smtp logs about a client, here one
// that resets its connection, goes to the program's log at debug level,
// not as a line of its own on standard error for each client of a flood.
func TestIntakeLogsThroughSlog(t *testing.T) {
	var logs strings.Builder
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	in := &intake{accounts: accts, hostname: "prov.test", log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	srv := newIntakeServer(in, 1<<20, nil)
	addr := smtptest.Serve(t, srv)

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	tp := textproto.NewConn(conn)
	_, _, err = tp.ReadResponse(220)
	require.NoError(t, err)
	require.NoError(t, conn.(*net.TCPConn).SetLinger(0))
	conn.Close() // a reset, which go-smtp logs
	smtptest.Shutdown(t, srv)

	assert.Contains(t, logs.String(), `level=DEBUG msg="odmr: smtp server: error handling 127.0.0.1:`)
}

// TestIntakeClientThatBreaksOffIsNoError: a client that goes away in the
// middle of DATA is logged at INFO, not as an error of the queue (anyone
// can do it, as often as they like), and nothing is queued.
func TestIntakeClientThatBreaksOffIsNoError(t *testing.T) {
	for _, spoolDir := range []string{"", t.TempDir()} {
		var logs strings.Builder
		log := slog.New(slog.NewTextHandler(&logs, nil))
		accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
		q, enqueue, _, closeQueue, err := openQueue(&config{spoolDir: spoolDir}, slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		srv := newIntakeServer(&intake{accounts: accts, enqueue: enqueue, log: log, hostname: "prov.test"}, 1<<20, nil)
		addr := smtptest.Serve(t, srv)

		c := dialRaw(t, addr)
		c.cmd(250, "MAIL FROM:<s@x.test>")
		c.cmd(250, "RCPT TO:<u@example.org>")
		c.cmd(354, "DATA")
		_, err = io.WriteString(c.conn, "Subject: half\r\n\r\nhalf a")
		require.NoError(t, err)
		c.conn.Close()
		smtptest.Shutdown(t, srv)

		assert.NotContains(t, logs.String(), "level=ERROR", "spool %q", spoolDir)
		assert.Contains(t, logs.String(), `level=INFO msg="odmr-provider: message not queued: the client's data broke off"`, "spool %q", spoolDir)
		b, err := q.Claim(context.Background(), []string{"example.org"})
		require.NoError(t, err)
		_, err = b.Next(context.Background())
		assert.ErrorIs(t, err, io.EOF, "nothing queued")
		b.Close()
		closeQueue()
	}
}

// TestIntakeCapsConnectionsPerNetwork: one network gets at most
// -smtp-max-conns-per-network connections at once, so that a single
// client cannot take every place of -smtp-max-conns; another network is
// still served, and a place freed is a place again.
func TestIntakeCapsConnectionsPerNetwork(t *testing.T) {
	c, err := parseFlags([]string{"-accounts", "x"})
	require.NoError(t, err)
	assert.Equal(t, defaultIntakeMaxConnsPerNet, c.smtpMaxConnsPerNet)
	_, err = parseFlags([]string{"-accounts", "x", "-smtp-max-conns-per-network", "0"})
	assert.ErrorContains(t, err, "-smtp-max-conns-per-network")

	addr := serveCappedIntake(t, &intake{maxConns: 10, maxConnsPerNet: 2, v4Prefix: 32, v6Prefix: 64})
	greet := func(from string) (int, string, *textproto.Conn) { return greetIntake(t, addr, from) }
	code, _, first := greet("127.0.0.1")
	require.Equal(t, 220, code)
	code, _, _ = greet("127.0.0.1")
	require.Equal(t, 220, code)
	code, msg, tp := greet("127.0.0.1")
	assert.Equal(t, 421, code)
	assert.Contains(t, msg, "from your network")
	_, err = tp.ReadLine()
	assert.ErrorIs(t, err, io.EOF, "refused connection closed")
	code, _, _ = greet("127.0.0.2")
	assert.Equal(t, 220, code, "another network is served")

	require.NoError(t, first.PrintfLine("QUIT"))
	_, _, err = first.ReadResponse(221)
	require.NoError(t, err)
	_, err = first.ReadLine()
	require.ErrorIs(t, err, io.EOF)
	code, _, _ = greet("127.0.0.1")
	assert.Equal(t, 220, code, "the place freed is given again")
}

// serveCappedIntake serves in, given its limits, for alice's example.org
// on loopback, and returns its address.
func serveCappedIntake(t *testing.T, in *intake) string {
	t.Helper()
	in.accounts = accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	in.log = slog.New(slog.DiscardHandler)
	srv := smtp.NewServer(in)
	srv.Domain = "prov.test"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(in.listen(l))
	t.Cleanup(func() { smtptest.Shutdown(t, srv) })
	return l.Addr().String()
}

// greetIntake connects to the intake at addr from the loopback address
// from and reads its first reply: 220, or 421 when it is full.
func greetIntake(t *testing.T, addr, from string) (int, string, *textproto.Conn) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	tp := textproto.NewConn(conn)
	code, msg, err := tp.ReadResponse(0)
	if code == 0 {
		require.NoError(t, err)
	}
	return code, msg, tp
}
