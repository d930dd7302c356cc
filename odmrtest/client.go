package odmrtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// maxLine bounds a line read from the provider; RFC 5321 allows 512 bytes
// for a reply line and 1000 for a text line.
const maxLine = 8192

// reply is one SMTP reply.
//
// This file reads replies with a parser of its own, on purpose: the suite
// is an independent oracle for the implementation it checks, this
// module's included, so it shares none of the module's wire code
// (internal/wire). A bug in that codec must not hide itself by making
// the checks read the wire the same wrong way.
type reply struct {
	Code  int
	Lines []string // the text of each line, after "NNN-" or "NNN "
}

// String formats the reply as its lines joined by " | ".
func (r *reply) String() string {
	if r == nil {
		return ""
	}
	parts := make([]string, len(r.Lines))
	for i, l := range r.Lines {
		sep := "-"
		if i == len(r.Lines)-1 {
			sep = " "
		}
		parts[i] = strings.TrimRight(fmt.Sprintf("%03d%s%s", r.Code, sep, l), " ")
	}
	return strings.Join(parts, " | ")
}

// conn is one connection to the provider, seen from the customer.
type conn struct {
	p  *probe
	nc net.Conn
	br *bufio.Reader
	// deadline is the check's deadline, which short waits restore.
	deadline time.Time
	// eof is set once the provider has closed the connection.
	eof bool
	// account holds the domains the account logged in on this
	// connection may pull: a 450 for them is a rate limit.
	account []string
}

// dial opens a connection with the check's deadline and reads the
// greeting, which must be 220.
func (p *probe) dial() (*conn, error) {
	c, err := p.dialNoGreeting()
	if err != nil {
		return nil, err
	}
	r, err := c.readReply()
	if err != nil {
		return nil, err
	}
	if r.Code != 220 {
		p.decide(r)
		return nil, p.failf("greeting is %d, want 220 (RFC 5321 section 4.2)", r.Code)
	}
	return c, nil
}

func (p *probe) dialNoGreeting() (*conn, error) {
	if err := p.ctx.Err(); err != nil {
		return nil, p.skipf("not run: %v", err)
	}
	nc, err := p.cfg.Dial()
	if err != nil {
		return nil, p.failf("dial: %v", err)
	}
	p.conns = append(p.conns, nc)
	deadline := time.Now().Add(p.cfg.Timeout)
	nc.SetDeadline(deadline)
	p.stops = append(p.stops, context.AfterFunc(p.ctx, func() { nc.SetDeadline(time.Unix(1, 0)) }))
	return &conn{p: p, nc: nc, br: bufio.NewReaderSize(nc, 4096), deadline: deadline}, nil
}

// readLine reads one CRLF-terminated line. A line that ends otherwise, or
// holds a bare CR or LF, fails the check: RFC 5321 section 2.3.8.
func (c *conn) readLine() (string, error) {
	return c.p.readWireLine(c.br, "provider", c.readError)
}

// readWireLine reads one CRLF-terminated line from br, at most maxLine
// bytes, for either suite: peer names the other side in failures, and
// readError turns a read error, with the bytes read so far, into one. A
// line that ends otherwise, or holds a bare CR or a NUL, fails the check
// (RFC 5321 section 2.3.8).
func (p *probe) readWireLine(br *bufio.Reader, peer string, readError func(err error, partial []byte) error) (string, error) {
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		buf = append(buf, frag...)
		if len(buf) > maxLine {
			p.saw(fmt.Sprintf("%.60q...", buf))
			return "", p.failf("%s sent a line longer than %d bytes", peer, maxLine)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return "", readError(err, buf)
		}
		break
	}
	if !bytes.HasSuffix(buf, []byte("\r\n")) {
		p.saw(fmt.Sprintf("%q", buf))
		return "", p.failf("%s ended a line with a bare LF, not CRLF (RFC 5321 section 2.3.8): %q", peer, buf)
	}
	line := buf[:len(buf)-2]
	if bytes.ContainsAny(line, "\r\n\x00") {
		p.saw(fmt.Sprintf("%q", buf))
		return "", p.failf("%s sent a bare CR or a NUL in a line (RFC 5321 section 2.3.8): %q", peer, buf)
	}
	return string(line), nil
}

// readError turns a read error into a failure that says what happened.
func (c *conn) readError(err error, partial []byte) error {
	var ne net.Error
	switch {
	case c.p.ctx.Err() != nil:
		return c.p.skipf("not finished: %v", c.p.ctx.Err())
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		c.p.saw("(no reply)")
		if len(partial) > 0 {
			c.p.saw(fmt.Sprintf("%q (no CRLF)", partial))
		}
		return c.p.failf("no complete reply within the check's timeout of %v", c.p.cfg.Timeout)
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed):
		c.eof = true
		c.p.saw("(connection closed)")
		if len(partial) > 0 {
			c.p.saw(fmt.Sprintf("%q (then closed)", partial))
		}
		return c.p.failf("provider closed the connection")
	}
	c.p.saw("(" + err.Error() + ")")
	return c.p.failf("reading from the provider: %v", err)
}

// parseReplyLine splits a reply line: a code of three digits, then a
// space, a hyphen or the end of the line (RFC 5321 section 4.2).
func parseReplyLine(line string) (code int, more bool, text string, ok bool) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' || line[2] < '0' || line[2] > '9' {
		return 0, false, "", false
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if len(line) == 3 {
		return code, false, "", true
	}
	switch line[3] {
	case ' ':
		return code, false, line[4:], true
	case '-':
		return code, true, line[4:], true
	}
	return 0, false, "", false
}

// readReply reads one reply, single or multi-line, and checks its syntax.
func (c *conn) readReply() (*reply, error) {
	r := &reply{}
	for {
		line, err := c.readLine()
		if err != nil {
			return nil, err
		}
		code, more, text, ok := parseReplyLine(line)
		if !ok {
			c.p.saw(line)
			return nil, c.p.failf("malformed reply line %q: want three digits, then a space or a hyphen (RFC 5321 section 4.2)", line)
		}
		if r.Code != 0 && code != r.Code {
			c.p.saw(r.String() + " | " + line)
			return nil, c.p.failf("multi-line reply changes its code from %d to %d (RFC 5321 section 4.2.1)", r.Code, code)
		}
		r.Code = code
		r.Lines = append(r.Lines, text)
		if !more {
			break
		}
	}
	c.p.saw(r.String())
	return r, nil
}

// writeLine sends line with CRLF.
func (c *conn) writeLine(line string) error {
	return c.write(line + "\r\n")
}

func (c *conn) write(s string) error {
	if _, err := io.WriteString(c.nc, s); err != nil {
		if c.p.ctx.Err() != nil {
			return c.p.skipf("not finished: %v", c.p.ctx.Err())
		}
		return c.p.failf("writing to the provider: %v", err)
	}
	return nil
}

// cmd sends a command line and reads the reply.
func (c *conn) cmd(line string) (*reply, error) {
	if err := c.writeLine(line); err != nil {
		return nil, err
	}
	return c.readReply()
}

// expect sends line and fails unless the reply has one of codes. The
// reply becomes the decisive one.
func (c *conn) expect(line string, why string, codes ...int) (*reply, error) {
	r, err := c.cmd(line)
	if err != nil {
		return nil, err
	}
	c.p.decide(r)
	if !slices.Contains(codes, r.Code) {
		return r, c.p.failf("%s answered %d, want %s: %s", redact(line), r.Code, codeList(codes), why)
	}
	return r, nil
}

// redact shortens a command line for a message.
func redact(line string) string {
	if len(line) > 60 {
		return line[:60] + "..."
	}
	return line
}

func codeList(codes []int) string {
	s := make([]string, len(codes))
	for i, c := range codes {
		s[i] = fmt.Sprint(c)
	}
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// ehloInfo is what an EHLO reply offers.
type ehloInfo struct {
	reply    *reply
	keywords map[string]string // upper-case keyword -> parameters
	mechs    []string          // upper-case SASL mechanisms after AUTH
}

func (e *ehloInfo) has(keyword string) bool {
	_, ok := e.keywords[keyword]
	return ok
}

func (e *ehloInfo) hasMech(m string) bool { return slices.Contains(e.mechs, m) }

// ehlo sends EHLO and parses the reply, which must be 250.
func (c *conn) ehlo() (*ehloInfo, error) {
	return c.ehloAs("EHLO " + c.p.cfg.Hostname)
}

func (c *conn) ehloAs(line string) (*ehloInfo, error) {
	r, err := c.expect(line, "EHLO is the same as in ESMTP (RFC 2645 section 5.1.1)", 250)
	if err != nil {
		return nil, err
	}
	info := &ehloInfo{reply: r, keywords: make(map[string]string)}
	for _, l := range r.Lines[1:] {
		kw, params, _ := strings.Cut(l, " ")
		kw = strings.ToUpper(kw)
		info.keywords[kw] = params
		if kw == "AUTH" {
			info.mechs = strings.Fields(strings.ToUpper(params))
		}
	}
	return info, nil
}

// cramResponse computes the CRAM-MD5 response of RFC 2195: the user name,
// a space and the HMAC-MD5 of the challenge in lower-case hex.
func cramResponse(user, secret string, challenge []byte) string {
	m := hmac.New(md5.New, []byte(secret))
	m.Write(challenge)
	return user + " " + hex.EncodeToString(m.Sum(nil))
}

// authCRAM runs AUTH CRAM-MD5 for user and secret and returns the final
// reply and the decoded challenge.
func (c *conn) authCRAM(user, secret string) (*reply, []byte, error) {
	r, err := c.cmd("AUTH CRAM-MD5")
	if err != nil {
		return nil, nil, err
	}
	if r.Code != 334 {
		c.p.decide(r)
		return r, nil, c.p.failf("AUTH CRAM-MD5 answered %d, want 334 with a challenge (RFC 4954 section 4)", r.Code)
	}
	chal, err := base64.StdEncoding.DecodeString(r.Lines[0])
	if err != nil {
		c.p.decide(r)
		return r, nil, c.p.failf("the 334 challenge is not base64 (RFC 4954 section 4): %v", err)
	}
	resp := base64.StdEncoding.EncodeToString([]byte(cramResponse(user, secret, chal)))
	r, err = c.cmd(resp)
	if err != nil {
		return nil, chal, err
	}
	return r, chal, nil
}

// login says EHLO and authenticates the configured account.
func (c *conn) login() error {
	return c.loginAs(c.p.cfg.User, c.p.cfg.Secret, c.p.cfg.Domains)
}

// loginAs says EHLO and authenticates user, who may pull domains.
func (c *conn) loginAs(user, secret string, domains []string) error {
	if _, err := c.ehlo(); err != nil {
		return err
	}
	r, _, err := c.authCRAM(user, secret)
	if err != nil {
		return err
	}
	if r.Code != 235 {
		c.p.decide(r)
		return c.p.failf("AUTH CRAM-MD5 as %s answered %d, want 235", user, r.Code)
	}
	c.account = domains
	return nil
}

// dialInfo dials and says EHLO, and returns what the reply offers.
func (p *probe) dialInfo() (*conn, *ehloInfo, error) {
	c, err := p.dial()
	if err != nil {
		return nil, nil, err
	}
	info, err := c.ehlo()
	return c, info, err
}

// dialEHLO dials and says EHLO.
func (p *probe) dialEHLO() (*conn, error) {
	c, _, err := p.dialInfo()
	return c, err
}

// dialLogin dials, says EHLO and authenticates.
func (p *probe) dialLogin() (*conn, error) {
	c, err := p.dial()
	if err != nil {
		return nil, err
	}
	return c, c.login()
}

// dialForeign dials, says EHLO and authenticates the second account,
// which owns ForeignDomain.
func (p *probe) dialForeign() (*conn, error) {
	c, err := p.dial()
	if err != nil {
		return nil, err
	}
	return c, c.loginAs(p.cfg.ForeignUser, p.cfg.ForeignSecret, []string{p.cfg.ForeignDomain})
}

// quit sends QUIT, wants 221 and then the connection closed.
func (c *conn) quit(why string) error {
	if _, err := c.expect("QUIT", why, 221); err != nil {
		return err
	}
	return c.expectClosed("after its 221 reply to QUIT")
}

// expectClosed reads until the provider closes the connection; anything
// it sends first fails the check.
func (c *conn) expectClosed(when string) error {
	b, err := c.br.ReadByte()
	if err == nil {
		rest, _ := c.br.Peek(c.br.Buffered())
		c.p.saw(fmt.Sprintf("%q", append([]byte{b}, rest...)))
		return c.p.failf("provider sent more %s instead of closing the connection", when)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return c.p.failf("provider did not close the connection %s", when)
	}
	return nil
}
