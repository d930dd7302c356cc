package pipeline

import (
	"bytes"
	"io"
	"sync/atomic"
)

// encoder turns a message body into the bytes sent for it: bare LF
// becomes CRLF, a body that does not end with a line break gets one and,
// for DATA, a leading dot is doubled (RFC 5321 section 4.5.2). It makes
// exactly the bytes net/textproto's DotWriter makes, quirks included, so
// that a message reads the same to the receiver whichever path sent it;
// but it hands runs of unchanged lines on in one piece instead of byte by
// byte.
//
// textproto's DotWriter inserts a CR before an LF unless the LF ends a run
// of CRs of odd length (its "CR" state alternates along a run of CRs), and
// escapes a dot at the start of the body or after an LF.
type encoder struct {
	stuff     bool // DATA: double leading dots
	begun     bool // a byte has been seen
	lineStart bool // the last byte seen was LF
	oddCR     bool // the last bytes seen are a run of CRs of odd length
}

var (
	crlf = []byte("\r\n")
	dot  = []byte(".")
)

// encode writes the encoding of p to w. w must be a buffered writer whose
// errors are sticky (bufio.Writer, or chunk): encode does not check them.
func (e *encoder) encode(w io.Writer, p []byte) {
	if len(p) == 0 {
		return
	}
	start := 0
	if e.stuff && p[0] == '.' && (e.lineStart || !e.begun) {
		w.Write(dot)
	}
	e.begun = true
	for i := 0; ; {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			break
		}
		j += i
		if !e.oddRunBefore(p, j) {
			// A bare LF (or one after an even run of CRs): insert CR.
			w.Write(p[start:j])
			w.Write(crlf)
			start = j + 1
		}
		i = j + 1
		if i == len(p) {
			break
		}
		if e.stuff && p[i] == '.' {
			w.Write(p[start:i])
			w.Write(dot)
			start = i
		}
	}
	w.Write(p[start:])
	last := len(p) - 1
	e.lineStart = p[last] == '\n'
	e.oddCR = e.oddRunBefore(p, len(p))
}

// oddRunBefore reports whether the CRs right before p[j] (continuing the
// run that ended the previous write if the run reaches p[0]) are odd in
// number.
func (e *encoder) oddRunBefore(p []byte, j int) bool {
	// The usual case, a single CR before LF.
	if j >= 2 && p[j-1] == '\r' && p[j-2] != '\r' {
		return true
	}
	k := 0
	for k < j && p[j-1-k] == '\r' {
		k++
	}
	odd := k%2 == 1
	if k == j && e.oddCR {
		odd = !odd
	}
	return odd
}

// tail returns what ends the body: the missing line break and, for DATA,
// the final dot.
func (e *encoder) tail() []byte {
	var t string
	switch {
	case e.begun && e.lineStart:
		t = ""
	case e.begun && e.oddCR:
		t = "\n"
	default:
		// Data, or nothing at all: textproto's DotWriter sends an empty
		// line for an empty body.
		t = "\r\n"
	}
	if e.stuff {
		t += ".\r\n"
	}
	return []byte(t)
}

// errWriter remembers the first error of the writer under it, so that a
// copy that fails can tell a write error (the connection) from a read
// error (the body).
//
// For the Sender's ackReader it also counts the writes begun and keeps in
// sent the value of due (the Sender's count of replies due) at the latest
// write: the replies of the commands on the wire, and maybe of some still
// in the buffer.
type errWriter struct {
	w      io.Writer
	err    error
	due    *int64
	writes atomic.Int64
	sent   atomic.Int64
}

func (w *errWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	w.writes.Add(1)
	w.sent.Store(*w.due)
	n, err := w.w.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// chunk is an append-only byte buffer with a Write method that never
// fails, for encoding a BDAT chunk whose size must be known before it is
// sent.
type chunk struct{ b []byte }

func (c *chunk) Write(p []byte) (int, error) {
	c.b = append(c.b, p...)
	return len(p), nil
}
