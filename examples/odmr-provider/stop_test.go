package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/memqueue"
)

// untilFailed bounds a wait that only a bug makes long, so that the test
// fails rather than hangs.
const untilFailed = time.Minute

// TestIntakeStopLetsIdleClientsGo: on stop, a client that connected and
// said nothing, and one between messages, are let go at once, and the
// client sending a message gets its reply before its connection ends:
// the stop waits for no one but the message in flight.
func TestIntakeStopLetsIdleClientsGo(t *testing.T) {
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	q := &memqueue.Queue{}
	inData := make(chan struct{})
	in := &intake{accounts: accts, hostname: "prov.test", log: slog.New(slog.DiscardHandler),
		enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error) {
			close(inData)
			return q.Enqueue(env, body)
		}}
	srv := smtp.NewServer(in)
	srv.Domain = "prov.test"
	srv.ReadTimeout = 5 * time.Minute
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(in.listen(l)) }()

	dial := func() *textproto.Conn {
		c, err := textproto.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, _, err = c.ReadResponse(220)
		require.NoError(t, err)
		return c
	}
	cmd := func(c *textproto.Conn, code int, line string) {
		t.Helper()
		require.NoError(t, c.PrintfLine("%s", line))
		_, _, err := c.ReadResponse(code)
		require.NoError(t, err, line)
	}
	silent := dial() // never says EHLO: go-smtp has no session for it
	between := dial()
	cmd(between, 250, "EHLO idle.test")
	sender := dial()
	cmd(sender, 250, "EHLO sender.test")
	cmd(sender, 250, "MAIL FROM:<s@x.test>")
	cmd(sender, 250, "RCPT TO:<u@example.org>")
	cmd(sender, 354, "DATA")
	require.NoError(t, sender.PrintfLine("Subject: in flight"))
	<-inData

	in.stop()
	ctx, cancel := context.WithTimeout(context.Background(), untilFailed)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	for _, c := range []*textproto.Conn{silent, between} {
		_, err := c.ReadLine()
		assert.ErrorIs(t, err, io.EOF, "an idle client was not let go")
	}
	require.NoError(t, sender.PrintfLine("\r\nhi\r\n."))
	_, _, err = sender.ReadResponse(250)
	require.NoError(t, err, "the message in flight was not finished")
	_, err = sender.ReadLine()
	assert.ErrorIs(t, err, io.EOF, "the connection outlived its message")
	require.NoError(t, <-shut)
	assert.Len(t, q.Messages(), 1)
	assert.NoError(t, <-served)

	// A client connecting now is not served.
	_, err = net.Dial("tcp", l.Addr().String())
	assert.Error(t, err)
}

// TestIntakeCloseAllAfterShutdown: at -stop-timeout the sessions still
// open are closed, although go-smtp's Close does nothing after a
// Shutdown.
func TestIntakeCloseAllAfterShutdown(t *testing.T) {
	in := &intake{accounts: accounts.Map{}, log: slog.New(slog.DiscardHandler)}
	srv := smtp.NewServer(in)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(in.listen(l))
	c, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	_, err = r.ReadString('\n')
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, srv.Shutdown(ctx), context.Canceled, "no stop: the session stays")
	in.closeAll()
	_, err = r.ReadString('\n')
	assert.ErrorIs(t, err, io.EOF)
}

// trackedQueue tells when the provider is done with its batches.
type trackedQueue struct {
	odmr.QueueSource
	claimed, closed atomic.Int32
}

func (q *trackedQueue) Claim(ctx context.Context, domains []string) (odmr.Batch, error) {
	b, err := q.QueueSource.Claim(ctx, domains)
	if err != nil {
		return nil, err
	}
	q.claimed.Add(1)
	return &trackedBatch{b, q}, nil
}

type trackedBatch struct {
	odmr.Batch
	q *trackedQueue
}

func (b *trackedBatch) Close() error {
	err := b.Batch.Close()
	b.q.closed.Add(1)
	return err
}

// TestStopWaitsForClosedSessions: when -stop-timeout passes with a
// session stuck on its message, stop closes it and returns only once the
// session is done with the queue, which the program closes next; closing
// the queue under a session loses what it was about to record, and the
// mail is delivered twice.
func TestStopWaitsForClosedSessions(t *testing.T) {
	q := &memqueue.Queue{}
	_, err := q.Enqueue(odmr.Envelope{From: "s@x.test", To: []string{"u@example.org"}}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
	require.NoError(t, err)
	tq := &trackedQueue{QueueSource: q}
	accts := accounts.Map{"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org"}}}
	p := &odmr.Provider{Authenticator: accts, Authorizer: accts, Queue: tq, AllowInsecureAuth: true, Logger: slog.New(slog.DiscardHandler)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go p.ServeListener(l)

	inSink := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	c := &odmr.Customer{Addr: l.Addr().String(), Username: "alice", Secret: "s3cret", Domains: []string{"example.org"}, Logger: discardLog(),
		Sink: odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
			io.Copy(io.Discard, body)
			close(inSink)
			<-release
			return nil
		})}
	go c.Fetch(context.Background())
	<-inSink

	sig := make(chan os.Signal)
	stop(p, nil, nil, time.Millisecond, sig, slog.New(slog.DiscardHandler))
	assert.EqualValues(t, 1, tq.claimed.Load())
	assert.EqualValues(t, 1, tq.closed.Load(), "stop returned before the session was done with the queue")
}

// TestSIGTERMDoesNotWaitForIdleIntakeClient: a client connected to the
// intake that says nothing does not keep the program from stopping, with
// an -stop-timeout of an hour.
func TestSIGTERMDoesNotWaitForIdleIntakeClient(t *testing.T) {
	bin, accts := buildProvider(t)
	cmd, _, smtpAddr, log := startProviderCmd(t, bin, accts, "", "-stop-timeout", "1h")
	c, err := net.Dial("tcp", smtpAddr)
	require.NoError(t, err)
	defer c.Close()
	_, err = bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	log.wait(t, "odmr-provider: stopped")
	require.NoError(t, cmd.Wait())
}
