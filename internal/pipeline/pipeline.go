// Package pipeline is the provider's SMTP client, its one delivery
// engine: it sends mail with command pipelining (RFC 2920) and, when the
// server offers it and it is asked to, with BDAT chunks (RFC 3030), or in
// lock-step, one command at a time, to a server that does not offer
// PIPELINING or only knows HELO; it keeps the outcome of every recipient
// of every message. Replies are read with package wire's codec.
//
// An SMTP client that waits for each reply pays a round trip per command:
// MAIL, RCPT, DATA and the final dot make four per message. A [Sender]
// sends MAIL, every RCPT and DATA as one group and waits once, for the
// reply to DATA; it streams the body as soon as 354 arrives and sends the
// next message's group right behind the final dot, before that dot's reply
// has come back, so the link never idles. With [Config.Overlap] it does
// not wait for 354 either: the caller goes on to its next message, and the
// body, the dot and that message's group go out together, in one write.
// With BDAT it does not wait at all: the body follows the group at once,
// and only a bounded amount of data is sent past a final chunk whose reply
// is still out.
//
// Replies are read in order and matched with the commands that caused
// them. A client that stops reading while it writes can deadlock with a
// server that stops reading while it writes its replies (RFC 2920 section
// 3.1). On a connection without buffers of its own, such as net.Pipe,
// whose writes wait until the other end has read them, and once BDAT
// chunks go out, a goroutine of the Sender reads the replies, so that the
// writer can keep writing while the server answers. On a socket (TCP or
// Unix, TLS over one), with DATA or in lock-step and at most
// [DefaultMaxPending] commands in flight, the Sender reads its replies
// itself, when it waits for one: the replies it can owe meanwhile, to at
// most that many commands, fit in the socket's buffers when they are of
// ordinary size, so the server does not wait for the Sender to read them;
// and a reply then reaches the Sender without a hand-off between
// goroutines, a wake-up less per message. (A server that answers each
// command with a reply of kilobytes, over sockets whose buffers are small
// at both ends, can still stall the Sender: a write timeout then bounds
// the stall, Config.WriteTimeout or the connection's own, as the
// provider's; without one nothing does.) Each message's Done callback
// runs, in the caller's goroutine, once the reply that settles the
// message has been read, or once the connection is lost, and once what
// the Sender had to write then is written.
package pipeline

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-odmr/odmr/internal/wire"
)

// Defaults of a [Config]; a zero field means these.
const (
	DefaultReplyTimeout    = 5 * time.Minute
	DefaultDataTimeout     = 10 * time.Minute
	DefaultChunkSize       = 64 << 10
	DefaultMaxPending      = 128
	DefaultLastWindow      = 128 << 10
	DefaultWriteBufferSize = 16 << 10
)

// Config tunes a [Sender]. The zero value is ready to use.
type Config struct {
	// ReplyTimeout bounds the wait for each reply but those that end a
	// message. 0 means DefaultReplyTimeout.
	ReplyTimeout time.Duration
	// DataTimeout bounds the wait for the reply to the final dot or the
	// last BDAT chunk. 0 means DefaultDataTimeout.
	DataTimeout time.Duration
	// WriteTimeout, if positive, bounds each write to the connection. 0
	// means none: the connection may bound its writes itself.
	WriteTimeout time.Duration

	// Lockstep sends one command at a time and waits for its reply, as a
	// client must with a server whose EHLO reply does not list PIPELINING
	// (RFC 2920), or that only knows HELO: no RCPT after a refused MAIL,
	// no DATA when no RCPT was accepted, and never BDAT. [Sender.Hello]
	// sets it from the server's reply. False means pipelining.
	Lockstep bool
	// Chunking sends bodies with BDAT (RFC 3030) instead of DATA. Set it
	// only if the server's EHLO reply lists CHUNKING: [Sender.Hello]
	// clears it when the reply lists no CHUNKING or no PIPELINING.
	Chunking bool
	// ChunkSize is the size of the BDAT chunks. 0 means DefaultChunkSize.
	ChunkSize int
	// LastWindow bounds, with Chunking, how many bytes of chunks are sent
	// past a last chunk whose reply has not arrived: while the server
	// delivers a message it may stop reading, and what is sent meanwhile
	// must fit in the socket buffers. 0 means DefaultLastWindow.
	LastWindow int

	// Overlap, with pipelined DATA, has Send return once the message's
	// commands are written, without waiting for the reply to DATA: the
	// body goes out with the next Send, ahead of that message's commands
	// and in the same write, or with Quit. The caller's work for the next
	// message then overlaps the server's for this one, and a message
	// takes one write each way instead of two or more; but the server,
	// having sent 354, waits for the body while the caller takes its next
	// message, so a caller that may take long to call Send or Quit again
	// must leave it false. False means that Send writes the body itself.
	Overlap bool

	// Stop, if not nil, is asked by Send right before it writes a
	// message's commands (with Overlap, once the previous body is
	// written): true makes Send return ErrStopped with nothing sent for
	// the message, whose Done is not called. nil means never.
	Stop func() bool

	// MaxPending bounds the commands sent whose replies have not been
	// read. 0 means DefaultMaxPending. Above DefaultMaxPending, a
	// goroutine of the Sender reads the replies on every connection
	// (see the package documentation).
	MaxPending int
	// WriteBufferSize is the size of the write buffer. 0 means
	// DefaultWriteBufferSize.
	WriteBufferSize int

	// QuickAck, if not nil, makes the connection acknowledge at once the
	// data read so far (package quickack gives one for a TCP socket). The
	// Sender calls it when it is about to wait for replies still owed,
	// with nothing written since it read the last ones: a server that
	// writes its replies one at a time without TCP_NODELAY (fetchmail
	// passing on a local MTA's) sends each only once the one before it
	// is acknowledged, and the kernel would delay that ACK by 40 ms. nil
	// means never.
	QuickAck func()
}

// Mail is one message for [Sender.Send].
type Mail struct {
	// From is the reverse path, without angle brackets.
	From string
	// Params are the MAIL parameters, each with a leading space, such as
	// " BODY=8BITMIME SIZE=1234".
	Params string
	// To are the recipients, without angle brackets.
	To []string
	// RcptParams, if not nil, holds the RCPT parameters of each recipient
	// in To, each with a leading space, such as " NOTIFY=FAILURE".
	RcptParams []string
	// Open returns the body, RFC 5322 text with CRLF line endings. The
	// Sender closes it. A bare LF is sent as CRLF, and a line break is
	// added at the end if missing, as net/textproto's DotWriter does.
	Open func() (io.ReadCloser, error)
	// Done receives one error per recipient, in the order of To, once the
	// message is settled: nil when the server's final reply accepted it;
	// a [*wire.Error] when the server refused it for that recipient
	// (at MAIL, RCPT, DATA or after the data); a [*BodyError] when the
	// body could not be opened or read; a [*ConnError] when the
	// connection was lost before the final reply was read. Done is called
	// exactly once, in the goroutine of the Sender's caller, by the Send,
	// Quit or Close that read that reply, before it returns.
	Done func(errs []error)
	// Reply is set by the Sender before it calls Done, to the server's
	// final reply when that reply accepted the message; nil otherwise.
	Reply *Reply
}

// ConnError is the result of a recipient whose outcome is unknown because
// the connection failed (an I/O error, a timeout, a malformed reply)
// before the reply that settles it was read.
type ConnError struct{ Err error }

// Error says that the connection was lost, and why.
func (e *ConnError) Error() string { return "pipeline: connection lost: " + e.Err.Error() }

// Unwrap returns the cause.
func (e *ConnError) Unwrap() error { return e.Err }

// BodyError is the result of a recipient whose message body could not be
// opened (Open is true) or read. A read error ends the connection without
// the final dot or last chunk, so that the server discards the part it got.
type BodyError struct {
	Err  error
	Open bool
}

// Error says whether the body could not be opened or read, and why.
func (e *BodyError) Error() string {
	if e.Open {
		return "pipeline: cannot open message body: " + e.Err.Error()
	}
	return "pipeline: cannot read message body: " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *BodyError) Unwrap() error { return e.Err }

// ErrClosed is the cause of the ConnErrors of messages still in flight
// when [Sender.Close] is called.
var ErrClosed = errors.New("pipeline: sender closed")

// ErrStopped is what Send returns when Config.Stop stopped it.
var ErrStopped = errors.New("pipeline: stopped before the message")

// errTimeout is the cause when a reply does not come in time.
var errTimeout = errors.New("pipeline: timeout waiting for reply")

type cmdKind uint8

const (
	kGreeting cmdKind = iota // the 220 greeting: nothing is sent
	kEHLO
	kRSET
	kMAIL
	kRCPT
	kDATA
	kDot      // the final dot
	kBDAT     // a BDAT chunk that is not the last
	kBDATLast // BDAT ... LAST
	kQUIT
)

type cmd struct {
	kind cmdKind
	tx   *txn // nil for commands outside a transaction
	rcpt int  // index in tx.m.To, for kRCPT
}

// rcptState is where a recipient stands.
type rcptState uint8

const (
	rcptWaiting  rcptState = iota // no reply yet
	rcptAccepted                  // RCPT accepted; the final reply decides
	rcptSettled                   // errs[i] is final
)

// txn is one message in flight.
type txn struct {
	m        *Mail
	errs     []error
	state    []rcptState
	pending  int  // commands sent whose replies are not read yet
	final    bool // no more commands will be sent for it
	done     bool // Done has been called
	mailErr  error
	accepted int // recipients accepted at RCPT
	waiting  int // recipients without any reply yet
	openErr  error
	bodyErr  error  // the body could not be read to the end
	bodySent bool   // DATA: the body (not a lone dot) followed 354
	data     *Reply // DATA: the reply to DATA
	dataErr  bool   // BDAT: a chunk was refused; its error settled the accepted
}

// settle sets the outcome of recipient i unless it is already final.
func (t *txn) settle(i int, err error) {
	switch t.state[i] {
	case rcptSettled:
		return
	case rcptWaiting:
		t.waiting--
	case rcptAccepted:
	}
	t.state[i] = rcptSettled
	t.errs[i] = err
}

// settleAccepted settles every recipient that RCPT accepted.
func (t *txn) settleAccepted(err error) {
	for i, st := range t.state {
		if st == rcptAccepted {
			t.settle(i, err)
		}
	}
}

// settleAll settles every recipient not yet settled.
func (t *txn) settleAll(err error) {
	for i := range t.state {
		t.settle(i, err)
	}
}

// refused reports whether no recipient can take the message any more:
// MAIL failed, or every RCPT has been answered and none accepted.
func (t *txn) refused() bool {
	return t.mailErr != nil || (t.waiting == 0 && t.accepted == 0)
}

type readResult struct {
	r   Reply
	err error
}

// Sender sends mail over one SMTP connection with command pipelining. Its
// methods must be called from one goroutine. Call Close when done with it;
// the connection itself stays the caller's to close.
type Sender struct {
	ctx  context.Context
	conn net.Conn
	cfg  Config

	ew *errWriter
	bw *bufio.Writer

	// due counts the replies due since the start, the greeting's and
	// those of the commands queued, for the reader's ackReader.
	due int64

	br *bufio.Reader // the replies
	ar *ackReader    // under br, when Config.QuickAck is set

	// inline is set while the Sender reads its replies itself, when it
	// waits for one; otherwise the reader goroutine reads them and
	// passes them on through replies.
	inline bool
	// readBy, once set, bounds every wait for a reply (writeFailed).
	readBy time.Time
	// stopCtx unregisters, in inline mode, the function that ends a read
	// when ctx is done.
	stopCtx func() bool

	replies    chan readResult
	stop       chan struct{}
	stopOnce   sync.Once
	reading    bool // the reader goroutine was started
	readerDone chan struct{}
	timer      *time.Timer

	queue    []cmd // commands awaiting replies, oldest first, from head
	head     int
	inflight []*txn
	err      error // set once the connection is unusable

	// With Overlap, the message whose DATA is sent and whose body is not
	// yet, and that body.
	pend     *txn
	pendBody io.ReadCloser
	// settled holds the messages settled whose Done has not run yet:
	// while holdDone is set, between the reply to DATA and the body it
	// lets out, Done waits until the Send has written, so that a Done
	// that takes time (a queue recording the outcome) does not hold up
	// the body.
	settled  []*txn
	holdDone bool

	lastReply Reply // the reply to the last EHLO, QUIT or greeting
	needRSET  bool  // DATA: the last transaction may still be open
	started   int   // transactions started
	written   int64 // BDAT: chunk bytes written
	lastEnds  []int64
}

// NewSender returns a Sender on conn, on which [Sender.Hello] is called
// first, or on which the SMTP greeting and EHLO have been read already
// (then cfg must say whether to go in lock-step). ctx ends every wait; cancelling it is
// like losing the connection.
func NewSender(ctx context.Context, conn net.Conn, cfg Config) *Sender {
	cfg.ReplyTimeout = or(cfg.ReplyTimeout, DefaultReplyTimeout)
	cfg.DataTimeout = or(cfg.DataTimeout, DefaultDataTimeout)
	cfg.ChunkSize = or(cfg.ChunkSize, DefaultChunkSize)
	cfg.LastWindow = or(cfg.LastWindow, DefaultLastWindow)
	cfg.MaxPending = or(cfg.MaxPending, DefaultMaxPending)
	cfg.WriteBufferSize = or(cfg.WriteBufferSize, DefaultWriteBufferSize)
	cfg.Chunking = cfg.Chunking && !cfg.Lockstep
	s := &Sender{
		ctx:  ctx,
		conn: conn,
		cfg:  cfg,
		// Room for every reply to the commands in flight, and an error:
		// the reader goroutine never blocks while the writer writes.
		replies:    make(chan readResult, cfg.MaxPending+2),
		stop:       make(chan struct{}),
		readerDone: make(chan struct{}),
		timer:      time.NewTimer(time.Hour),
	}
	s.timer.Stop()
	var w io.Writer = conn
	if cfg.WriteTimeout > 0 {
		w = &deadlineWriter{conn: conn, d: cfg.WriteTimeout}
	}
	s.ew = &errWriter{w: w, due: &s.due}
	s.bw = bufio.NewWriterSize(s.ew, cfg.WriteBufferSize)
	var rd io.Reader = conn
	if cfg.QuickAck != nil {
		s.ar = &ackReader{s: s}
		rd = s.ar
	}
	s.br = bufio.NewReaderSize(rd, 4096)
	if cfg.MaxPending <= DefaultMaxPending && isSocket(conn) {
		// Chunking may still be dropped by Hello: the reader goroutine
		// starts with the first chunk (sendChunks).
		s.inline = true
		s.stopCtx = context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	} else {
		s.startReader()
	}
	return s
}

// isSocket is socket, but for the tests that make the Sender read its
// replies itself on a net.Pipe.
var isSocket = socket

// socket reports whether conn is, under its wrappers (their NetConn
// methods, as [crypto/tls.Conn] has), a socket of the kernel, whose
// buffers take a write without waiting for the other end to read it.
func socket(conn net.Conn) bool {
	for range 8 {
		switch c := conn.(type) {
		case *net.TCPConn, *net.UnixConn:
			return true
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return false
		}
	}
	return false
}

// startReader hands the reading of the replies over to the reader
// goroutine, for good.
func (s *Sender) startReader() {
	if s.inline {
		s.inline = false
		s.stopCtx()
		// The reader waits for replies without a deadline; consume
		// bounds the waits. A deadline that writeFailed set is kept:
		// the connection is given up by then.
		if s.readBy.IsZero() {
			s.conn.SetReadDeadline(time.Time{})
		}
	}
	s.reading = true
	go s.readLoop()
}

func or[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

type deadlineWriter struct {
	conn net.Conn
	d    time.Duration
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.conn.SetWriteDeadline(time.Now().Add(w.d))
	return w.conn.Write(p)
}

func (s *Sender) readLoop() {
	defer close(s.readerDone)
	for {
		r, err := wire.ReadReply(s.br, replyLimits, nil)
		if s.ar != nil && err == nil {
			s.ar.replies++
		}
		select {
		case s.replies <- readResult{r, err}:
		case <-s.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// ackReader is the replies' connection when Config.QuickAck is set: it
// asks for an ACK before a read that waits for replies still owed, when
// what was read last has not been acknowledged by a write since. Asking
// after every read instead costs a system call and an ACK of its own per
// read, on the path of every message.
type ackReader struct {
	s       *Sender
	replies int64 // replies read whole
	unacked bool  // data read that no ACK or write has acknowledged yet
	writes  int64 // the Sender's writes when that data was read
}

func (r *ackReader) Read(p []byte) (int, error) {
	if r.unacked {
		// Replies owed first: errWriter counts a write before it
		// updates sent, so a write that changed sent shows as a write.
		owed := r.s.ew.sent.Load() > r.replies
		if owed && r.s.ew.writes.Load() == r.writes {
			r.s.cfg.QuickAck()
		}
	}
	n, err := r.s.conn.Read(p)
	r.unacked = n > 0
	r.writes = r.s.ew.writes.Load()
	return n, err
}

// Hello reads the server's greeting, sends EHLO and returns the
// extensions of its reply, keyed in upper case, with their parameters. A
// server that refuses EHLO with 500 or 502 gets HELO instead (RFC 5321
// section 3.2), and the map is empty. Hello adapts the Sender to the
// reply: lock-step without PIPELINING, DATA without CHUNKING. A refusal
// comes back as the reply's error; the caller may then [Sender.Quit].
func (s *Sender) Hello(localName string) (map[string]string, error) {
	if strings.ContainsAny(localName, "\r\n") {
		return nil, errors.New("pipeline: EHLO name contains CR or LF")
	}
	s.push(cmd{kind: kGreeting})
	if err := s.drain(); err != nil {
		return nil, err
	}
	if err := s.lastReply.Check(220); err != nil {
		return nil, err
	}
	ext := make(map[string]string)
	s.send(cmd{kind: kEHLO}, "EHLO ", localName)
	if err := s.drain(); err != nil {
		return nil, err
	}
	if s.lastReply.Code == 500 || s.lastReply.Code == 502 {
		s.send(cmd{kind: kEHLO}, "HELO ", localName)
		if err := s.drain(); err != nil {
			return nil, err
		}
		if err := s.lastReply.Check(250); err != nil {
			return nil, err
		}
	} else {
		if err := s.lastReply.Check(250); err != nil {
			return nil, err
		}
		ext = s.lastReply.Extensions()
	}
	_, pipelining := ext["PIPELINING"]
	_, chunking := ext["CHUNKING"]
	s.cfg.Lockstep = !pipelining
	s.cfg.Chunking = s.cfg.Chunking && chunking && pipelining
	return ext, nil
}

// Lockstep reports whether the Sender sends one command at a time.
func (s *Sender) Lockstep() bool { return s.cfg.Lockstep }

// Chunking reports whether the Sender sends bodies with BDAT.
func (s *Sender) Chunking() bool { return s.cfg.Chunking }

// Send sends one message. It returns once the message's commands and
// body are written, usually before the reply to its end has been read;
// m.Done is called later, by Send, Quit or Close. Send returns an error
// only when the connection can no longer be used: every message in
// flight then got its results (a ConnError for those not settled).
//
// With DATA, Send waits for the reply to DATA (the replies to the
// previous message's end, to MAIL and to RCPT come first); with BDAT it
// does not wait, unless a window is full. With Overlap and pipelined
// DATA, Send waits for the reply to the previous message's DATA, writes
// that message's body, then this message's commands, and returns: its
// body goes with the next Send, or with Quit.
func (s *Sender) Send(m *Mail) error {
	defer s.runDone()
	t := &txn{
		m:       m,
		errs:    make([]error, len(m.To)),
		state:   make([]rcptState, len(m.To)),
		waiting: len(m.To),
	}
	s.poll()
	if s.err != nil {
		t.settleAll(s.err)
		s.finish(t)
		return s.err
	}
	if refuseCRLF(t); t.waiting == 0 {
		s.finish(t)
		return nil
	}
	s.inflight = append(s.inflight, t)

	body, err := m.Open()
	if err != nil {
		t.openErr = err
	} else {
		defer func() {
			if s.pend != t {
				body.Close()
			}
		}()
	}
	s.sendPending()
	if s.err == nil && s.cfg.Stop != nil && s.cfg.Stop() {
		s.inflight = s.inflight[:len(s.inflight)-1] // t, appended last
		s.flush()
		return ErrStopped
	}
	s.sendEnvelope(t)
	if s.cfg.Lockstep && s.err == nil && t.refused() {
		// A lock-step client knows the transaction failed before DATA:
		// it ends it, as most clients do.
		s.send(cmd{kind: kRSET}, "RSET")
		t.final = true
		s.maybeFinish(t)
		return s.err
	}
	if t.openErr != nil {
		// End the transaction without data: the recipients RCPT accepts
		// get the open error, the others their refusal.
		s.send(cmd{kind: kRSET, tx: t}, "RSET")
		t.final = true
		s.maybeFinish(t)
		s.flush()
		return s.err
	}
	if s.err != nil {
		return s.err
	}
	if s.cfg.Chunking {
		return s.sendChunks(t, body)
	}
	return s.sendData(t, body)
}

// refuseCRLF settles the recipients that cannot go on the wire: all of
// them when the sender address or the MAIL parameters hold a CR or LF,
// each one whose address or RCPT parameters do.
func refuseCRLF(t *txn) {
	m := t.m
	if strings.ContainsAny(m.From, "\r\n") || strings.ContainsAny(m.Params, "\r\n") {
		t.settleAll(&wire.Error{Code: 553, EnhancedCode: [3]int{5, 1, 7}, Message: "Sender address contains CR or LF"})
	}
	for i, r := range m.To {
		if strings.ContainsAny(r, "\r\n") || (i < len(m.RcptParams) && strings.ContainsAny(m.RcptParams[i], "\r\n")) {
			t.settle(i, &wire.Error{Code: 553, EnhancedCode: [3]int{5, 1, 3}, Message: "Recipient address contains CR or LF"})
		}
	}
}

// sendEnvelope sends MAIL and an RCPT for each recipient not settled
// yet, after an RSET when the previous transaction may still be open.
func (s *Sender) sendEnvelope(t *txn) {
	m := t.m
	if (s.cfg.Chunking && s.started > 0) || s.needRSET {
		// With BDAT, the previous transaction may still be open if none
		// of its recipients was accepted, and its replies are not known
		// yet: reset it, as RFC 2920 section 3.1 allows right after the
		// previous message's data.
		s.send(cmd{kind: kRSET}, "RSET")
		s.needRSET = false
	}
	s.started++
	s.send(cmd{kind: kMAIL, tx: t}, "MAIL FROM:<", m.From, ">", m.Params)
	for i, r := range m.To {
		if t.state[i] == rcptWaiting {
			params := ""
			if i < len(m.RcptParams) {
				params = m.RcptParams[i]
			}
			s.send(cmd{kind: kRCPT, tx: t, rcpt: i}, "RCPT TO:<", r, ">", params)
		}
	}
}

// sendData sends DATA, waits for its reply, and sends the body and the
// final dot when it is 354.
func (s *Sender) sendData(t *txn, body io.ReadCloser) error {
	s.send(cmd{kind: kDATA, tx: t}, "DATA")
	s.flush()
	if s.cfg.Overlap && !s.cfg.Lockstep && s.err == nil {
		s.pend, s.pendBody = t, body
		return nil
	}
	return s.sendBody(t, body)
}

// sendPending sends, with Overlap, the body of the message whose DATA
// was sent last, once the reply to DATA has come; it leaves it in the
// buffer, for the next message's commands to follow.
func (s *Sender) sendPending() {
	t, body := s.pend, s.pendBody
	if t == nil {
		return
	}
	s.pend, s.pendBody = nil, nil
	defer body.Close()
	s.holdDone = true
	s.sendBody(t, body)
	s.holdDone = false
}

// sendBody waits for the reply to DATA and sends the body and the final
// dot when it is 354; it flushes them in lock-step or when the body was
// not left pending (without Overlap).
func (s *Sender) sendBody(t *txn, body io.Reader) error {
	for t.data == nil && s.err == nil {
		s.consume()
	}
	if s.err != nil {
		return s.err
	}
	if t.data.Code != 354 {
		t.settleAccepted(t.data.Check(354))
		t.final = true
		s.maybeFinish(t)
		if s.cfg.Lockstep {
			s.send(cmd{kind: kRSET}, "RSET")
			return s.err
		}
		s.needRSET = true
		return nil
	}
	if t.refused() {
		// 354 although nothing was accepted: RFC 2920 section 3.1 says
		// to send a single dot.
		s.bw.WriteString(".\r\n")
	} else {
		t.bodySent = true
		if err := s.writeData(t, body); err != nil {
			return err
		}
	}
	s.push(cmd{kind: kDot, tx: t})
	t.final = true
	if s.cfg.Lockstep {
		return s.drain()
	}
	if !s.cfg.Overlap {
		s.flush()
	}
	return s.err
}

var readBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writeData writes the body dot-stuffed and the final dot.
func (s *Sender) writeData(t *txn, body io.Reader) error {
	bp := readBufPool.Get().(*[]byte)
	defer readBufPool.Put(bp)
	buf := *bp
	enc := encoder{stuff: true}
	for {
		n, err := body.Read(buf)
		if n > 0 {
			enc.encode(s.bw, buf[:n])
			if s.ew.err != nil {
				return s.writeFailed(s.ew.err)
			}
		}
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return s.bodyFailed(t, err)
		}
	}
	s.bw.Write(enc.tail())
	return nil
}

var chunkPool = sync.Pool{New: func() any { return new(chunk) }}

// sendChunks sends the body as BDAT chunks.
func (s *Sender) sendChunks(t *txn, body io.Reader) error {
	if s.inline {
		// The Sender writes chunks without waiting for their replies:
		// the reader goroutine takes them as they come, so that each
		// message's Done runs at the next Send rather than once a
		// window is full.
		s.startReader()
	}
	bp := readBufPool.Get().(*[]byte)
	defer readBufPool.Put(bp)
	buf := *bp
	c := chunkPool.Get().(*chunk)
	defer chunkPool.Put(c)
	if cap(c.b) < s.cfg.ChunkSize+2*len(buf) {
		c.b = make([]byte, 0, s.cfg.ChunkSize+2*len(buf))
	}
	c.b = c.b[:0]
	enc := encoder{}
	for {
		n, err := body.Read(buf)
		if n > 0 {
			enc.encode(c, buf[:n])
			for len(c.b) >= s.cfg.ChunkSize {
				n := chunkEnd(c.b[:s.cfg.ChunkSize])
				if stop := s.chunk(t, c.b[:n], false); stop || s.err != nil {
					t.final = true
					s.maybeFinish(t)
					s.flush()
					return s.err
				}
				c.b = c.b[:copy(c.b, c.b[n:])]
			}
		}
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return s.bodyFailed(t, err)
		}
	}
	c.Write(enc.tail())
	s.chunk(t, c.b, true)
	t.final = true
	s.maybeFinish(t)
	s.flush()
	return s.err
}

// chunkEnd returns the length of the chunk to cut from b: up to its last
// line feed, so that a chunk ends with a whole line, or all of b when it
// holds none. A relay that passes the session on line by line, as
// fetchmail does, holds a partial line until its end comes and meanwhile
// reads nothing from the other side: a sender that stopped after part of
// a line to wait for replies would wait forever.
func chunkEnd(b []byte) int {
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return i + 1
	}
	return len(b)
}

// chunk sends one BDAT chunk, first waiting, if needed, until no more
// than LastWindow bytes would be in flight past an unanswered last chunk.
// It reports whether the transaction should stop because it failed.
func (s *Sender) chunk(t *txn, data []byte, last bool) (stop bool) {
	for len(s.lastEnds) > 0 && s.written+int64(len(data))-s.lastEnds[0] > int64(s.cfg.LastWindow) && s.err == nil {
		s.flush()
		s.consume()
	}
	if s.err != nil {
		return true
	}
	if t.dataErr || t.refused() {
		// RFC 3030 section 2: no more chunks after a refused one; and
		// none are needed when no recipient is left.
		return true
	}
	k := cmd{kind: kBDAT, tx: t}
	n := strconv.Itoa(len(data))
	if last {
		k.kind = kBDATLast
		s.send(k, "BDAT ", n, " LAST")
	} else {
		s.send(k, "BDAT ", n)
	}
	s.bw.Write(data)
	s.written += int64(len(data))
	if last {
		s.lastEnds = append(s.lastEnds, s.written)
	}
	return false
}

// bodyFailed handles a body that cannot be read to the end: the replies
// to everything already sent complete are read, so that earlier messages
// and the refused recipients of this one get their real outcome; then the
// connection is cut without the final dot or last chunk, and the
// recipients that were accepted get the read error.
func (s *Sender) bodyFailed(t *txn, err error) error {
	be := &BodyError{Err: err}
	t.bodyErr = be
	if s.cfg.Chunking {
		// The buffer holds complete commands and chunks only.
		t.final = true
		s.flush()
		for s.err == nil && t.pending > 0 {
			s.consume()
		}
	}
	t.settleAll(be)
	s.maybeFinish(t)
	return s.fail(be)
}

// send queues a command whose line is the concatenation of parts.
func (s *Sender) send(k cmd, parts ...string) {
	for len(s.queue)-s.head >= s.cfg.MaxPending && s.err == nil {
		s.flush()
		s.consume()
	}
	if s.err != nil {
		return
	}
	for _, p := range parts {
		s.bw.WriteString(p)
	}
	s.bw.WriteString("\r\n")
	s.push(k)
	if s.cfg.Lockstep {
		s.drain()
	}
}

// push records a command written by hand.
func (s *Sender) push(k cmd) {
	if s.head > 0 && (s.head == len(s.queue) || s.head >= 64 && s.head*2 >= len(s.queue)) {
		n := copy(s.queue, s.queue[s.head:])
		clear(s.queue[n:])
		s.queue, s.head = s.queue[:n], 0
	}
	s.queue = append(s.queue, k)
	s.due++
	if k.tx != nil {
		k.tx.pending++
	}
}

func (s *Sender) flush() {
	if s.err != nil {
		return
	}
	if err := s.bw.Flush(); err != nil {
		s.writeFailed(err)
	}
}

// writeFailed handles an error writing to the connection. The server may
// have answered commands before it went away, and those replies may still
// be on their way to the reader: they are read, for a short while at
// most, so that a message the server acknowledged is not taken for lost.
// Then the connection is given up.
func (s *Sender) writeFailed(err error) error {
	if s.err != nil {
		return s.err
	}
	s.readBy = time.Now().Add(min(s.cfg.ReplyTimeout, 10*time.Second))
	s.conn.SetReadDeadline(s.readBy)
	for s.err == nil && s.head < len(s.queue) {
		s.consume()
	}
	return s.fail(err)
}

// drain flushes and reads every outstanding reply.
func (s *Sender) drain() error {
	s.flush()
	for s.head < len(s.queue) && s.err == nil {
		s.consume()
	}
	return s.err
}

// consume reads the reply to the oldest outstanding command, waiting for
// it if needed, and acts on it.
func (s *Sender) consume() {
	if s.err != nil || s.head == len(s.queue) {
		return
	}
	timeout := s.cfg.ReplyTimeout
	if k := s.queue[s.head].kind; k == kDot || k == kBDATLast {
		timeout = s.cfg.DataTimeout
	}
	if s.inline {
		s.handle(s.readReply(timeout))
		return
	}
	var res readResult
	select {
	case res = <-s.replies:
	default:
		s.timer.Reset(timeout)
		select {
		case res = <-s.replies:
		case <-s.timer.C:
			res.err = errTimeout
		case <-s.ctx.Done():
			res.err = s.ctx.Err()
		}
		s.timer.Stop()
	}
	s.handle(res)
}

// poll acts on the replies that have arrived, without waiting: in inline
// mode, those already read into the buffer.
func (s *Sender) poll() {
	for s.inline && s.err == nil && s.head < len(s.queue) && replyBuffered(s.br) {
		s.handle(s.readReply(0))
	}
	for !s.inline && s.err == nil && s.head < len(s.queue) {
		select {
		case res := <-s.replies:
			s.handle(res)
		default:
			return
		}
	}
}

// readReply reads a reply in inline mode, waiting for it at most timeout
// when it is not in the buffer yet (readBy may bound the wait further).
func (s *Sender) readReply(timeout time.Duration) readResult {
	if !replyBuffered(s.br) {
		d := time.Now().Add(timeout)
		if !s.readBy.IsZero() && s.readBy.Before(d) {
			d = s.readBy
		}
		// Deadline first, then the check: a cancellation in between
		// sets a past deadline that this one would otherwise overwrite.
		s.conn.SetReadDeadline(d)
		if err := s.ctx.Err(); err != nil {
			return readResult{err: err}
		}
	}
	r, err := wire.ReadReply(s.br, replyLimits, nil)
	switch {
	case err == nil:
		if s.ar != nil {
			s.ar.replies++
		}
	case s.ctx.Err() != nil:
		err = s.ctx.Err()
	case s.readBy.IsZero() && errors.Is(err, os.ErrDeadlineExceeded):
		err = errTimeout
	}
	return readResult{r, err}
}

// replyBuffered reports whether br holds a whole reply, or the start of
// one that ReadReply refuses without reading further.
func replyBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return false
		}
		if i < 4 || b[3] != '-' {
			return true
		}
		b = b[i+1:]
	}
}

func (s *Sender) handle(res readResult) {
	if res.err != nil {
		s.fail(res.err)
		return
	}
	k := s.queue[s.head]
	s.queue[s.head] = cmd{}
	s.head++
	s.dispatch(k, res.r)
}

func (s *Sender) dispatch(k cmd, r Reply) {
	t := k.tx
	if t != nil {
		t.pending--
	}
	switch k.kind {
	case kGreeting, kEHLO, kQUIT:
		s.lastReply = r
	case kRSET:
		// A refused RSET changes nothing: the next command's reply says
		// what the server thinks.
		if t != nil {
			t.settleAccepted(&BodyError{Err: t.openErr, Open: true})
		}
	case kMAIL:
		if err := r.Check(250); err != nil {
			t.mailErr = err
			t.settleAll(err)
		}
	case kRCPT:
		if t.state[k.rcpt] != rcptWaiting {
			break
		}
		if err := r.Check(25); err != nil {
			t.settle(k.rcpt, err)
		} else {
			t.state[k.rcpt] = rcptAccepted
			t.waiting--
			t.accepted++
		}
	case kDATA:
		t.data = &r
	case kDot:
		if t.bodySent {
			err := r.Check(250)
			if err == nil {
				t.m.Reply = &r
			}
			t.settleAccepted(err)
		}
	case kBDAT, kBDATLast:
		if k.kind == kBDATLast {
			s.lastEnds = s.lastEnds[1:]
		}
		if err := r.Check(250); err != nil {
			if !t.dataErr {
				t.dataErr = true
				t.settleAccepted(err)
			}
		} else if k.kind == kBDATLast && !t.dataErr {
			t.m.Reply = &r
			t.settleAccepted(nil)
		}
	}
	if t != nil {
		s.maybeFinish(t)
	}
}

// maybeFinish calls Done once the transaction has no more replies to come.
func (s *Sender) maybeFinish(t *txn) {
	if t.done || !t.final || t.pending > 0 {
		return
	}
	// Every recipient is settled by now, unless the body failed; anything
	// else is a bug in the bookkeeping, and must not pass for a delivery.
	for i, st := range t.state {
		switch {
		case st == rcptSettled:
		case t.bodyErr != nil:
			t.settle(i, t.bodyErr)
		default:
			t.settle(i, &ConnError{Err: fmt.Errorf("pipeline: no final reply for recipient %d", i)})
		}
	}
	s.finish(t)
}

func (s *Sender) finish(t *txn) {
	t.done = true
	for i, x := range s.inflight {
		if x == t {
			s.inflight = append(s.inflight[:i], s.inflight[i+1:]...)
			break
		}
	}
	s.settled = append(s.settled, t)
	if !s.holdDone {
		s.runDone()
	}
}

// runDone calls the Done of the messages settled, in the order they were.
func (s *Sender) runDone() {
	for i := 0; i < len(s.settled); i++ {
		t := s.settled[i]
		s.settled[i] = nil
		if t.m.Done != nil {
			t.m.Done(t.errs)
		}
	}
	s.settled = s.settled[:0]
}

// fail makes the connection unusable: every message in flight is settled
// with a ConnError for the recipients whose outcome is unknown, reads and
// writes are stopped, and the buffered output is dropped.
func (s *Sender) fail(cause error) error {
	if s.err != nil {
		return s.err
	}
	var ce *ConnError
	if !errors.As(cause, &ce) {
		var be *BodyError
		if errors.As(cause, &be) {
			cause = be.Err
		}
		ce = &ConnError{Err: cause}
	}
	s.err = ce
	s.abort()
	if s.pend != nil {
		s.pendBody.Close()
		s.pend, s.pendBody = nil, nil
	}
	for len(s.inflight) > 0 {
		t := s.inflight[0]
		t.settleAll(ce)
		s.finish(t)
	}
	s.queue, s.head = nil, 0
	return s.err
}

// abort stops the reader and any further I/O on the connection.
func (s *Sender) abort() {
	s.stopOnce.Do(func() { close(s.stop) })
	past := time.Unix(1, 0)
	s.conn.SetDeadline(past)
}

// Quit reads the replies still due, so that every message's Done has run
// before the server sees QUIT, then sends QUIT and reads its reply. (QUIT
// could go out right behind the last message's data, as RFC 2920 allows,
// saving a round trip per session; but then the server could end the
// session before the client has recorded the last outcomes, and a caller
// that waits for the server would see them late.)
func (s *Sender) Quit() error {
	defer s.runDone()
	s.sendPending()
	if err := s.drain(); err != nil {
		return err
	}
	// Outcomes settled while a refused DATA's body was pending were held
	// back: record them before the server hears QUIT.
	s.runDone()
	s.send(cmd{kind: kQUIT}, "QUIT")
	if err := s.drain(); err != nil {
		return err
	}
	return s.lastReply.Check(221)
}

// Close stops the Sender: messages still in flight get a ConnError
// wrapping ErrClosed, and the reader goroutine ends. It sets a past
// deadline on the connection but does not close it.
func (s *Sender) Close() error {
	defer s.runDone()
	s.fail(ErrClosed)
	if s.reading {
		<-s.readerDone
	}
	if s.stopCtx != nil {
		s.stopCtx()
	}
	s.timer.Stop()
	return nil
}
