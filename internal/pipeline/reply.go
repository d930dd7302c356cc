package pipeline

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// Limits on what the reply reader accepts from the server.
const (
	// maxReplyLine is the longest reply line, CRLF included. RFC 5321
	// section 4.5.3.1.5 allows 512 octets; go-smtp's client allows 2000.
	maxReplyLine = 4096
	// maxReplyLines bounds a multi-line reply, so that a server cannot make
	// the client hold an endless reply in memory.
	maxReplyLines = 256
)

// ErrProtocol is wrapped by the errors of malformed replies: a line that
// does not start with a three-digit code, a multi-line reply whose lines
// disagree on the code, a line or reply over the limits.
var ErrProtocol = errors.New("pipeline: malformed reply")

// Reply is one SMTP reply: its code and its text, the lines of a
// multi-line reply joined with "\n" (as net/textproto does). The text
// keeps any enhanced status code.
type Reply struct {
	Code int
	Text string
}

// readReply reads one reply, multi-line or not. It accepts a code alone
// ("250" without text), which RFC 5321's grammar allows.
func readReply(br *bufio.Reader) (Reply, error) {
	var r Reply
	var more []string
	for n := 0; ; n++ {
		line, err := br.ReadSlice('\n')
		if err != nil {
			switch {
			case errors.Is(err, bufio.ErrBufferFull):
				return Reply{}, fmt.Errorf("%w: line longer than %d bytes", ErrProtocol, maxReplyLine)
			case errors.Is(err, io.EOF) && (len(line) > 0 || n > 0):
				return Reply{}, io.ErrUnexpectedEOF
			}
			return Reply{}, err
		}
		line = line[:len(line)-1]
		if k := len(line); k > 0 && line[k-1] == '\r' {
			line = line[:k-1]
		}
		code, cont, text, ok := parseReplyLine(line)
		if !ok {
			return Reply{}, fmt.Errorf("%w: %q", ErrProtocol, truncate(line, 64))
		}
		if n == 0 {
			r.Code = code
			r.Text = string(text)
		} else if code != r.Code {
			return Reply{}, fmt.Errorf("%w: code %d within a %d reply", ErrProtocol, code, r.Code)
		} else {
			more = append(more, string(text))
		}
		if !cont {
			break
		}
		if n+1 >= maxReplyLines {
			return Reply{}, fmt.Errorf("%w: more than %d lines", ErrProtocol, maxReplyLines)
		}
	}
	if len(more) > 0 {
		r.Text += "\n" + strings.Join(more, "\n")
	}
	return r, nil
}

// parseReplyLine splits "250-text", "250 text" or "250".
func parseReplyLine(line []byte) (code int, cont bool, text []byte, ok bool) {
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

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// Lines returns the lines of the reply's text.
func (r Reply) Lines() []string { return strings.Split(r.Text, "\n") }

// Check reports whether the reply has the expected code, in the sense of
// net/textproto: a one-digit expect matches the class (2 matches 2xx), a
// two-digit one the first two digits (25 matches 250 and 251), a
// three-digit one the exact code. It returns nil for a match, and the
// reply as an [*smtp.SMTPError] otherwise.
func (r Reply) Check(expect int) error {
	switch {
	case expect < 10 && r.Code/100 == expect,
		expect >= 10 && expect < 100 && r.Code/10 == expect,
		r.Code == expect:
		return nil
	}
	return r.Err()
}

// Err returns the reply as an [*smtp.SMTPError], the way go-smtp's client
// converts replies: a leading enhanced status code (RFC 2034) is split
// off, and removed from the following lines too.
func (r Reply) Err() *smtp.SMTPError {
	e := &smtp.SMTPError{Code: r.Code, Message: r.Text}
	first, rest, ok := strings.Cut(r.Text, " ")
	if !ok {
		return e
	}
	ec, ok := parseEnhancedCode(first)
	if !ok {
		return e
	}
	e.EnhancedCode = ec
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

// parseEnhancedCode parses "x.y.z" as go-smtp's client does.
func parseEnhancedCode(s string) (smtp.EnhancedCode, bool) {
	var ec smtp.EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return ec, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return ec, false
		}
		ec[i] = n
	}
	return ec, true
}
