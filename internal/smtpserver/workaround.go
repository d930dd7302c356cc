package smtpserver

// The work-arounds for go-smtp v0.25.1's server. Each has a test in
// workaround_test.go that pins the behaviour it exists for and fails,
// saying the work-around can go, once go-smtp changes it; UPSTREAM.md
// holds the reports.

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"
)

// sizeLimit is what go-smtp is given for a limit of max bytes: one byte
// more. go-smtp refuses a DATA message of exactly MaxMessageBytes (its
// data reader fails once the limit is used up, before it sees the end of
// the data), so the session enforces the limit itself, and wireConn
// advertises the real one with SIZE.
// Pinned by TestGoSMTPRefusesMessageOfExactlyMaxMessageBytes.
func sizeLimit(max int64) int64 {
	if max > 0 {
		return max + 1
	}
	return 0
}

// errPeerEOF is what go-smtp reads when the client closes the connection.
// go-smtp copies a BDAT chunk with io.Copy, which takes io.EOF for the end
// of the data, so a connection closed inside the last chunk would hand
// the session a truncated message as if it were whole; with any other
// error the copy fails and the transfer is abandoned. errPeerEOF matches
// net.ErrClosed, so that go-smtp ends the session quietly, as it does at
// io.EOF, instead of answering 421.
// Pinned by TestGoSMTPTakesEOFInsideChunkForItsEnd.
var errPeerEOF error = peerEOF{}

type peerEOF struct{}

func (peerEOF) Error() string { return "connection closed by the client" }

func (peerEOF) Is(target error) bool { return target == net.ErrClosed }

// wireConn is the connection as go-smtp's server sees it. It reads
// errPeerEOF where the connection gives io.EOF, and it reads go-smtp's
// replies, which go-smtp writes one line per Write, to mend three and
// learn two things:
//   - the first line of the EHLO reply, "250-Hello <client>", gets the
//     server's name in front, as RFC 5321 section 4.1.1.1 wants the
//     server's domain there; the HELO reply likewise (pinned by
//     TestGoSMTPGreetsWithoutItsName). Which of the two it was tells HELO
//     from EHLO, which go-smtp does not;
//   - "SIZE n" advertises MaxMessageBytes, not the one byte more that
//     go-smtp is given (see sizeLimit);
//   - go-smtp refuses a BDAT chunk over the size limit itself, without
//     the session seeing it (pinned by TestGoSMTPRefusesChunkBehindSession):
//     the refusal is passed to Config.ChunkTooLarge, unless the session
//     made it in the same words;
//   - "250 2.0.0 Continue" accepts a BDAT chunk that is not the last, so a
//     transfer is under way (see transfer).
//
// It also holds the replies back until go-smtp reads from the connection
// (or closes it), and writes them together then: go-smtp writes and
// flushes every line of every reply on its own, a system call each, but
// it reads from the connection only once the commands it has buffered
// are answered, so a pipelining client gets the replies to a group of
// commands in one write (RFC 2920 section 3.2 allows it), and a client
// that waits for each reply gets it at once.
type wireConn struct {
	net.Conn
	domain        string
	maxSize       int64
	chunkTooLarge func()

	mu       sync.Mutex
	s        *session
	helo     bool // the latest greeting was HELO
	refusing bool // the session made the refusal go-smtp writes next

	wmu  sync.Mutex
	out  []byte // replies not yet written
	werr error  // the first error writing them
}

func (c *wireConn) Read(p []byte) (int, error) {
	// A failed write shows at the next Write; the read tells how the
	// connection failed, in the terms the caller of Serve reads.
	c.flush()
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		err = errPeerEOF
	}
	return n, err
}

func (c *wireConn) Write(p []byte) (int, error) {
	line, ok := bytes.CutSuffix(p, []byte("\r\n"))
	if !ok || len(line) < 4 || bytes.IndexByte(line, '\n') >= 0 {
		return c.queue(p)
	}
	code, text := string(line[:4]), string(line[4:])
	c.mu.Lock()
	sessions := false
	if code[0] == '4' || code[0] == '5' {
		sessions, c.refusing = c.refusing, false
	}
	s := c.s
	c.mu.Unlock()
	mended := c.mend(code, text, sessions, s)
	if mended == "" {
		return c.queue(p)
	}
	if _, err := c.queue([]byte(mended + "\r\n")); err != nil {
		return 0, err
	}
	return len(p), nil
}

// queue adds p to the replies to write.
func (c *wireConn) queue(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if len(c.out)+len(p) > maxHeldReplies {
		if _, err := c.Conn.Write(c.out); err != nil {
			c.werr = err
			return 0, err
		}
		c.out = c.out[:0]
	}
	c.out = append(c.out, p...)
	return len(p), nil
}

// maxHeldReplies bounds the replies held back, in bytes.
const maxHeldReplies = 4096

// flush writes the replies held back.
func (c *wireConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil || len(c.out) == 0 {
		return c.werr
	}
	_, c.werr = c.Conn.Write(c.out)
	c.out = c.out[:0]
	return c.werr
}

// Close writes the replies held back, the last ones (QUIT's, or a 421),
// and closes the connection.
func (c *wireConn) Close() error {
	c.flush()
	return c.Conn.Close()
}

// mend applies the work-arounds to a one-line reply go-smtp writes, code
// being its first four bytes ("250-") and text the rest. It returns the
// reply to write instead, without its CRLF; "" to write it as it is.
// sessions tells whether the session made a refusal, s is the session,
// nil before EHLO.
func (c *wireConn) mend(code, text string, sessions bool, s *session) string {
	switch {
	case code == "250-" && strings.HasPrefix(text, "Hello "):
		c.setHELO(false)
		return code + c.domain + " " + text
	case code == "250 " && strings.HasPrefix(text, "2.0.0 Hello "):
		c.setHELO(true)
		return code + c.domain + " " + strings.TrimPrefix(text, "2.0.0 ")
	case (code == "250-" || code == "250 ") && strings.HasPrefix(text, "SIZE ") && c.maxSize > 0:
		return code + "SIZE " + strconv.FormatInt(c.maxSize, 10)
	case code == "552 " && text == "5.3.4 "+chunkRefusal && !sessions:
		if c.chunkTooLarge != nil {
			c.chunkTooLarge()
		}
	case code == "250 " && text == "2.0.0 Continue" && s != nil:
		s.continued()
	}
	return ""
}

// NetConn returns the connection underneath.
func (c *wireConn) NetConn() net.Conn { return c.Conn }

// chunkRefusal is the text of go-smtp's refusal of a BDAT chunk over the
// size limit.
const chunkRefusal = "Max message size exceeded"

func isChunkRefusal(code int, ec smtp.EnhancedCode, msg string) bool {
	return code == 552 && ec == smtp.EnhancedCode{5, 3, 4} && msg == chunkRefusal
}

func (c *wireConn) setSession(s *session) {
	c.mu.Lock()
	c.s = s
	c.mu.Unlock()
}

func (c *wireConn) setHELO(helo bool) {
	c.mu.Lock()
	c.helo = helo
	c.mu.Unlock()
}

func (c *wireConn) heloGreeting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.helo
}

// sessionRefused notes that the next refusal go-smtp writes is the
// session's.
func (c *wireConn) sessionRefused() {
	c.mu.Lock()
	c.refusing = true
	c.mu.Unlock()
}

// transfer follows go-smtp's goroutines for BDAT transfers. go-smtp
// v0.25.1 starts one per transfer, which calls Data and, after Data
// returns, sends its result on a channel field of the connection and then
// closes the transfer's pipe reader. The next transfer replaces that
// field: when a transfer is abandoned (RSET, a chunk over the size limit)
// and the next one starts at once, the old result can be taken for the
// new message's. So Mail waits, in waitTransfer, until the last
// transfer's goroutine is done.
// Pinned by TestGoSMTPGivesStaleBDATResultToNextTransfer.
type transfer struct {
	mu      sync.Mutex
	changed *sync.Cond // signalled when Data starts or returns
	// pipe is the last transfer's reader, from the start of its Data
	// until the next Mail.
	pipe *io.PipeReader
	// inData is true while that Data runs.
	inData bool
	// awaitData is set when go-smtp has accepted a chunk of a transfer
	// whose Data has not started yet (a zero-length first chunk).
	awaitData bool
}

// entered notes the start of a transfer's Data.
func (s *session) entered(pr *io.PipeReader) {
	s.mu.Lock()
	s.pipe, s.inData, s.awaitData = pr, true, false
	s.changed.Broadcast()
	s.mu.Unlock()
}

// returned notes the end of a transfer's Data.
func (s *session) returned() {
	s.mu.Lock()
	s.inData = false
	s.changed.Broadcast()
	s.mu.Unlock()
}

// continued notes that go-smtp accepted a chunk that is not the last.
// When the transfer's Data has not started (the chunks so far were
// empty), the next Mail must wait for it to know its pipe.
func (s *session) continued() {
	s.mu.Lock()
	if s.pipe == nil {
		s.awaitData = true
	}
	s.mu.Unlock()
}

// waitTransfer waits until go-smtp's goroutine for the last BDAT transfer
// has finished. A transfer always ends (its writer closed) before the
// next MAIL, so Data is bound to return. It waits, woken by entered and
// returned, until the transfer's Data has started and returned; then the
// goroutine has a send on a buffered channel and a close left to run,
// with nothing to block on: a read from the pipe returning
// io.ErrClosedPipe shows the close, and until then the wait yields. The
// wait ends at Config.TransferWait or with Serve's ctx whatever happens:
// a goroutine of go-smtp that never came would otherwise stall the
// session with no read pending to time out.
func (s *session) waitTransfer() {
	s.mu.Lock()
	done := !s.awaitData && !s.inData && (s.pipe == nil || closed(s.pipe))
	if done {
		// No transfer since the last Mail, or one long finished: the
		// common cases, with nothing to wait for.
		s.pipe = nil
	}
	s.mu.Unlock()
	if done {
		return
	}
	ctx, cancel := context.WithTimeout(s.a.ctx, s.a.wait)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.changed.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	for (s.awaitData || s.inData) && ctx.Err() == nil {
		s.changed.Wait()
	}
	s.awaitData = false
	pr := s.pipe
	s.pipe = nil
	s.mu.Unlock()
	for pr != nil && !closed(pr) && ctx.Err() == nil {
		runtime.Gosched()
	}
	if ctx.Err() != nil && s.a.ctx.Err() == nil {
		s.a.log.Warn("odmr: go-smtp's goroutine for an abandoned BDAT transfer did not finish", "waited", s.a.wait)
	}
}

// closed reports whether go-smtp has closed pr, the reader of a transfer
// whose writer is closed (so that the read does not wait for data).
func closed(pr *io.PipeReader) bool {
	_, err := pr.Read(nil)
	return err == io.ErrClosedPipe
}
