package smtpsink

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/dsnparam"
	"github.com/go-odmr/odmr/internal/wire"
)

// chunkSize is the most of a message a session's client sends in one
// BDAT chunk, and the size of its buffer for it.
const chunkSize = 64 << 10

// replyLimits bound the local server's replies: go-smtp's client takes
// lines of 2000 bytes.
var replyLimits = wire.ReplyLimits{Line: 2000, Lines: 100}

// client is the SMTP or LMTP client of a session: unlike go-smtp's, it
// sends MAIL together with the first RCPT to a server that offers
// PIPELINING, and a message in BDAT chunks (RFC 3030), with no dot to
// stuff, to one that offers CHUNKING, so that a message of up to 64 KiB
// costs two round trips instead of four. Its methods return a
// [*wire.Error] for a refusal, any other error when the connection
// failed; the connection is then the caller's to close.
type client struct {
	conn    net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	timeout time.Duration
	lmtp    bool
	ext     map[string]string // keyed in upper case

	mail string // a MAIL command not sent yet, sent with the first RCPT
	// mailErr is the refusal of the transaction's MAIL, sent with the
	// first RCPT: every RCPT of the transaction is refused with it.
	mailErr error
	rcpts   int    // recipients accepted in the transaction
	chunk   []byte // BDAT's buffer
	header  []byte // scratch for command lines
}

// dialClient connects to the local server, reads its greeting and sends
// EHLO (or LHLO), falling back to HELO for an SMTP server that refuses
// EHLO.
func (s *Sink) dialClient(ctx context.Context) (*client, error) {
	conn, err := s.dial(ctx)
	if err != nil {
		return nil, err
	}
	c := &client{
		conn:    conn,
		br:      bufio.NewReaderSize(conn, 4096),
		bw:      bufio.NewWriterSize(conn, 4096),
		timeout: cmp.Or(s.Timeout, defaultTimeout),
		lmtp:    s.LMTP,
	}
	// The provider waits for the customer's greeting while the session
	// begins: a local server that does not answer must not make it wait
	// for a whole command timeout.
	c.timeout = min(c.timeout, greetTimeout)
	err = c.hello(cmp.Or(s.LocalName, "localhost"))
	if err != nil {
		err = s.fail("greeting", err)
	} else {
		err = s.secure(ctx, c, cmp.Or(s.LocalName, "localhost"))
	}
	c.timeout = cmp.Or(s.Timeout, defaultTimeout)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// greetTimeout bounds the wait for the local server's greeting and its
// reply to EHLO or LHLO, as the DSN probe was bounded before.
const greetTimeout = 30 * time.Second

func (c *client) hello(name string) error {
	c.deadline(c.timeout)
	r, err := wire.ReadReply(c.br, replyLimits, nil)
	if err != nil {
		return err
	}
	if err := r.Check(220); err != nil {
		return err
	}
	return c.ehlo(name)
}

// ehlo sends EHLO (or LHLO) and notes the extensions of the reply.
func (c *client) ehlo(name string) error {
	verb := "EHLO"
	if c.lmtp {
		verb = "LHLO"
	}
	r, err := c.cmd(verb + " " + name)
	if err != nil {
		return err
	}
	if r.Code/100 != 2 && !c.lmtp && (r.Code == 500 || r.Code == 502) {
		if r, err = c.cmd("HELO " + name); err != nil {
			return err
		}
		return r.Check(2)
	}
	if err := r.Check(2); err != nil {
		return err
	}
	c.ext = r.Extensions()
	return nil
}

// has reports whether the server offers ext.
func (c *client) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// deadline bounds the next reads and writes.
func (c *client) deadline(d time.Duration) { c.conn.SetDeadline(time.Now().Add(d)) }

// cmd sends line and reads the reply.
func (c *client) cmd(line string) (wire.Reply, error) {
	c.deadline(c.timeout)
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	if err := c.bw.Flush(); err != nil {
		return wire.Reply{}, err
	}
	return wire.ReadReply(c.br, replyLimits, nil)
}

// startMail starts a transaction: the MAIL command goes out with the
// first RCPT, or at once to a server without PIPELINING.
func (c *client) startMail(env odmr.Envelope, passDSN bool) error {
	if strings.ContainsAny(env.From, "\r\n") {
		return errors.New("odmr: local delivery: line break in the sender")
	}
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + env.From + ">")
	if c.has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME")
	}
	if c.has("SIZE") && env.Size > 0 {
		b.WriteString(" SIZE=" + strconv.FormatInt(env.Size, 10))
	}
	if env.UTF8 {
		if !c.has("SMTPUTF8") {
			return errors.New("odmr: local delivery: the local server does not offer SMTPUTF8")
		}
		b.WriteString(" SMTPUTF8")
	}
	if passDSN && c.has("DSN") && env.DSN != nil {
		b.WriteString(dsnparam.MailParams(env.DSN.Return, env.DSN.EnvID))
	}
	c.mail, c.rcpts, c.mailErr = b.String(), 0, nil
	if c.has("PIPELINING") {
		return nil
	}
	line := c.mail
	c.mail = ""
	r, err := c.cmd(line)
	if err != nil {
		return err
	}
	return r.Check(2)
}

// rcpt sends RCPT, behind the transaction's MAIL if it is still to be
// sent. A refused MAIL is the error of its first RCPT.
func (c *client) rcpt(env odmr.Envelope, rcpt string, passDSN bool) error {
	if strings.ContainsAny(rcpt, "\r\n") {
		return errors.New("odmr: local delivery: line break in a recipient")
	}
	line := "RCPT TO:<" + rcpt + ">"
	if passDSN && c.has("DSN") {
		line += rcptDSNParams(env, rcpt, c.has("SMTPUTF8"))
	}
	if c.mailErr != nil {
		return c.mailErr
	}
	mail := c.mail
	c.mail = ""
	if mail != "" {
		c.bw.WriteString(mail)
		c.bw.WriteString("\r\n")
		c.deadline(c.timeout)
		r, err := c.cmd(line)
		if err != nil {
			return err
		}
		// r is the reply to MAIL; the reply to RCPT follows.
		rr, err := wire.ReadReply(c.br, replyLimits, nil)
		if err != nil {
			return err
		}
		if err := r.Check(2); err != nil {
			c.mailErr = err
			return err
		}
		r = rr
		if err := r.Check(25); err != nil {
			return err
		}
		c.rcpts++
		return nil
	}
	r, err := c.cmd(line)
	if err != nil {
		return err
	}
	if err := r.Check(25); err != nil {
		return err
	}
	c.rcpts++
	return nil
}

// rcptDSNParams are the RCPT parameters of rcpt's DSN requests, each with
// a leading space.
func rcptDSNParams(env odmr.Envelope, rcpt string, utf8 bool) string {
	if env.DSN == nil {
		return ""
	}
	r, ok := env.DSN.Recipients[rcpt]
	if !ok {
		return ""
	}
	return dsnparam.RcptParams(r.Notify, r.ORcptType, r.ORcpt, utf8)
}

// errBodyRead marks an error of the message's reader, not of the
// connection.
type errBodyRead struct{ err error }

func (e *errBodyRead) Error() string { return e.err.Error() }
func (e *errBodyRead) Unwrap() error { return e.err }

// data sends the message and returns the final replies, with ended
// true: one, or with LMTP one per accepted recipient, in their order. A
// refusal of DATA or of a chunk before the last comes back as the only
// reply, with ended false: the transaction is still open. An error of
// body comes back as an *errBodyRead; the connection is then in the
// middle of the message.
func (c *client) data(body io.Reader, dataTimeout time.Duration) (replies []wire.Reply, ended bool, err error) {
	if c.has("CHUNKING") {
		return c.bdat(body, dataTimeout)
	}
	r, err := c.cmd("DATA")
	if err != nil {
		return nil, false, err
	}
	if r.Code != 354 {
		return []wire.Reply{r}, false, nil
	}
	st := stuffer{w: c.bw, lineStart: true}
	buf := c.buffer()
	for {
		c.deadline(c.timeout)
		n, err := body.Read(buf)
		st.write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, false, &errBodyRead{err}
		}
		if st.err != nil {
			return nil, false, st.err
		}
	}
	if !st.lineStart {
		c.bw.WriteString("\r\n")
	}
	c.bw.WriteString(".\r\n")
	c.deadline(dataTimeout)
	if err := c.bw.Flush(); err != nil {
		return nil, false, err
	}
	replies, err = c.finalReplies()
	return replies, true, err
}

// bdat sends the message in chunks of up to chunkSize, each but the last
// waiting for its reply.
func (c *client) bdat(body io.Reader, dataTimeout time.Duration) ([]wire.Reply, bool, error) {
	buf := c.buffer()
	for {
		c.deadline(c.timeout)
		n, err := io.ReadFull(body, buf)
		last := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !last {
			return nil, false, &errBodyRead{err}
		}
		c.header = append(c.header[:0], "BDAT "...)
		c.header = strconv.AppendInt(c.header, int64(n), 10)
		if last {
			c.header = append(c.header, " LAST"...)
		}
		c.header = append(c.header, "\r\n"...)
		c.bw.Write(c.header)
		c.bw.Write(buf[:n])
		if last {
			c.deadline(dataTimeout)
		}
		if err := c.bw.Flush(); err != nil {
			return nil, false, err
		}
		if last {
			replies, err := c.finalReplies()
			return replies, true, err
		}
		r, err := wire.ReadReply(c.br, replyLimits, nil)
		if err != nil {
			return nil, false, err
		}
		if r.Code/100 != 2 {
			return []wire.Reply{r}, false, nil
		}
	}
}

// finalReplies reads the replies to the end of a message.
func (c *client) finalReplies() ([]wire.Reply, error) {
	n := 1
	if c.lmtp {
		n = c.rcpts
	}
	replies := make([]wire.Reply, 0, n)
	for range n {
		r, err := wire.ReadReply(c.br, replyLimits, nil)
		if err != nil {
			return replies, err
		}
		replies = append(replies, r)
	}
	return replies, nil
}

func (c *client) buffer() []byte {
	if c.chunk == nil {
		c.chunk = make([]byte, chunkSize)
	}
	return c.chunk
}

// reset abandons the transaction: a MAIL not sent yet is forgotten, else
// RSET.
func (c *client) reset() error {
	if c.mail != "" || c.mailErr != nil {
		// Nothing was sent, or the server refused MAIL: no transaction.
		c.mail, c.mailErr = "", nil
		return nil
	}
	r, err := c.cmd("RSET")
	if err != nil {
		return err
	}
	return r.Check(2)
}

// quit says QUIT and reads the reply.
func (c *client) quit() error {
	_, err := c.cmd("QUIT")
	return err
}

// stuffer writes a message for DATA: a dot at the start of a line is
// doubled (RFC 5321 section 4.5.2). The customer hands on only messages
// whose lines end with CRLF.
type stuffer struct {
	w         *bufio.Writer
	lineStart bool
	err       error
}

func (s *stuffer) write(p []byte) {
	for len(p) > 0 {
		if s.lineStart && p[0] == '.' {
			s.w.WriteByte('.')
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			_, s.err = s.w.Write(p)
			s.lineStart = false
			return
		}
		_, s.err = s.w.Write(p[:i+1])
		p = p[i+1:]
		s.lineStart = true
	}
}

// replyError is r as an error for the provider.
func replyError(r wire.Reply) error {
	if r.Code/100 == 2 {
		return nil
	}
	return r.Err()
}
