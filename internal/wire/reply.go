package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrProtocol is wrapped by the errors of malformed replies: a line that
// does not start with a three-digit code from 200 to 599, a multi-line
// reply whose lines disagree on the code, a line or a reply over the
// limits, a bare CR or a NUL. It is the root package's odmr.ErrProtocol,
// which documents it for callers.
var ErrProtocol = errors.New("odmr: protocol error")

// Reply is one SMTP reply: its code and its text, the lines of a
// multi-line reply joined with "\n" (as net/textproto does). The text
// keeps any enhanced status code.
type Reply struct {
	Code int
	Text string
}

// Lines returns the lines of the reply's text.
func (r Reply) Lines() []string { return strings.Split(r.Text, "\n") }

// Extensions reads r as an EHLO reply (RFC 5321 section 4.1.1.1): the
// keyword of each line after the first, in upper case, with its
// parameters.
func (r Reply) Extensions() map[string]string {
	ext := make(map[string]string)
	for _, l := range r.Lines()[1:] {
		k, v, _ := strings.Cut(l, " ")
		ext[strings.ToUpper(k)] = v
	}
	return ext
}

// Check reports whether the reply has the expected code, in the sense of
// net/textproto: a one-digit expect matches the class (2 matches 2xx), a
// two-digit one the first two digits (25 matches 250 and 251), a
// three-digit one the exact code. It returns nil for a match, and the
// reply as an [*Error] otherwise.
func (r Reply) Check(expect int) error {
	switch {
	case expect < 10 && r.Code/100 == expect,
		expect >= 10 && expect < 100 && r.Code/10 == expect,
		r.Code == expect:
		return nil
	}
	return r.Err()
}

// Err returns the reply as an [*Error]: a leading enhanced status code
// (RFC 2034) of the reply's class is split off, and removed from the
// following lines too, so that the message does not repeat it.
func (r Reply) Err() *Error {
	e := &Error{Code: r.Code, Message: r.Text}
	first, rest, ok := strings.Cut(r.Text, " ")
	if !ok {
		return e
	}
	ec, ok := ParseEnhancedCode(first)
	if !ok || ec[0] != r.Code/100 {
		return e
	}
	e.EnhancedCode = ec
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

// Error is a reply that refused a command, with its enhanced status code
// split off. The root package turns it into an odmr.Error.
type Error struct {
	Code         int
	EnhancedCode [3]int // zero when the reply had none
	Message      string
}

// Error formats the reply as it came, "CODE X.Y.Z text".
func (e *Error) Error() string {
	s := strconv.Itoa(e.Code)
	if e.EnhancedCode != [3]int{} {
		s += " " + FormatEnhancedCode(e.EnhancedCode)
	}
	if e.Message != "" {
		s += " " + e.Message
	}
	return s
}

// ParseEnhancedCode parses an RFC 3463 enhanced status code,
// "class.subject.detail": a class of 2, 4 or 5 and two numbers of one to
// three digits.
func ParseEnhancedCode(s string) ([3]int, bool) {
	var ec [3]int
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return ec, false
	}
	for i, p := range parts {
		if p == "" || len(p) > 3 {
			return [3]int{}, false
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return [3]int{}, false
			}
		}
		ec[i], _ = strconv.Atoi(p)
	}
	if ec[0] != 2 && ec[0] != 4 && ec[0] != 5 {
		return [3]int{}, false
	}
	return ec, true
}

// FormatEnhancedCode formats ec as "class.subject.detail", "" for the
// zero value.
func FormatEnhancedCode(ec [3]int) string {
	if ec == [3]int{} {
		return ""
	}
	return strconv.Itoa(ec[0]) + "." + strconv.Itoa(ec[1]) + "." + strconv.Itoa(ec[2])
}

// ParseReplyLine splits "250-text", "250 text" or a bare "250" (which
// RFC 5321's grammar allows) into its code, whether more lines follow and
// its text. ok is false for anything else, a code outside 200 to 599
// included.
func ParseReplyLine(line []byte) (code int, cont bool, text []byte, ok bool) {
	if len(line) < 3 {
		return 0, false, nil, false
	}
	for _, c := range line[:3] {
		if c < '0' || c > '9' {
			return 0, false, nil, false
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code > 599 {
		return 0, false, nil, false
	}
	if len(line) == 3 {
		return code, false, nil, true
	}
	switch line[3] {
	case ' ':
	case '-':
		cont = true
	default:
		return 0, false, nil, false
	}
	return code, cont, line[4:], true
}

// ReplyLimits bound what [ReadReply] accepts, so that a peer cannot make
// the reader hold an endless reply in memory.
type ReplyLimits struct {
	// Line is the longest line, CRLF excluded. RFC 5321 section
	// 4.5.3.1.5 allows 512 octets; servers send longer ones, and
	// clients take them (smtpsink's up to 2000).
	Line int
	// Lines is the most lines of one multi-line reply.
	Lines int
}

// ReadReply reads one reply, multi-line or not, with [ReadLine]. trace,
// if not nil, sees each line read, without its line ending, before it is
// parsed (a debug transcript shows a malformed line too). A reply cut
// short by the end of input is io.ErrUnexpectedEOF; no input at all is
// io.EOF; anything malformed wraps [ErrProtocol].
func ReadReply(br *bufio.Reader, lim ReplyLimits, trace func(line []byte)) (Reply, error) {
	var r Reply
	var text strings.Builder
	for n := 0; ; n++ {
		if n == lim.Lines {
			return Reply{}, fmt.Errorf("%w: reply longer than %d lines", ErrProtocol, lim.Lines)
		}
		line, err := ReadLine(br, lim.Line)
		switch {
		case errors.Is(err, ErrLineTooLong), errors.Is(err, ErrFlood):
			return Reply{}, fmt.Errorf("%w: reply line longer than %d bytes", ErrProtocol, lim.Line)
		case errors.Is(err, ErrBareCR):
			return Reply{}, fmt.Errorf("%w: bare CR or NUL in a reply", ErrProtocol)
		case errors.Is(err, io.EOF) && (n > 0 || br.Buffered() > 0):
			return Reply{}, io.ErrUnexpectedEOF
		case errors.Is(err, io.EOF):
			return Reply{}, err
		case err != nil:
			return Reply{}, err
		}
		if trace != nil {
			trace(line)
		}
		code, cont, t, ok := ParseReplyLine(line)
		switch {
		case !ok:
			return Reply{}, fmt.Errorf("%w: malformed reply %q", ErrProtocol, Truncate(line, 80))
		case n > 0 && code != r.Code:
			return Reply{}, fmt.Errorf("%w: malformed reply: code %d within a %d reply", ErrProtocol, code, r.Code)
		}
		r.Code = code
		if n > 0 {
			text.WriteByte('\n')
		}
		text.Write(t)
		if !cont {
			r.Text = text.String()
			return r, nil
		}
	}
}

// Truncate returns b as a string of at most n bytes, with "..." when it
// was cut: for quoting a peer's line in an error or a log.
func Truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
