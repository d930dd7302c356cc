// Package wire holds the line-level codec shared by both ODMR roles.
package wire

import (
	"bufio"
	"bytes"
	"errors"
)

// ErrLineTooLong is returned by ReadLine for a line over the limit. The
// rest of the line has been read and dropped, so the next call starts on
// the next line.
var ErrLineTooLong = errors.New("line too long")

// ErrBareCR is returned by ReadLine for a line that holds a CR other than
// the one before its LF, or a NUL: input no SMTP peer sends.
var ErrBareCR = errors.New("bare CR or NUL in line")

// ErrFlood is returned when a client sends an endless line: more than
// MaxDiscard bytes without a line feed.
var ErrFlood = errors.New("line without end")

// MaxDiscard bounds how much of an over-long line ReadLine reads and drops
// before it gives up on the connection.
const MaxDiscard = 64 << 10

// ReadLine reads one line of at most max bytes (terminator excluded) and
// returns it without its CRLF or LF. The returned slice is valid until the
// next read from br.
func ReadLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > max+2 {
			if e := discard(br, err, len(line)+len(frag)); e != nil {
				return nil, e
			}
			return nil, ErrLineTooLong
		}
		if err == nil {
			if line == nil {
				line = frag
			} else {
				line = append(line, frag...)
			}
			break
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
		line = append(line, frag...)
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > max {
		return nil, ErrLineTooLong
	}
	if bytes.IndexByte(line, '\r') >= 0 || bytes.IndexByte(line, 0) >= 0 {
		return nil, ErrBareCR
	}
	return line, nil
}

// discard reads up to and including the next LF.
func discard(br *bufio.Reader, lastErr error, n int) error {
	for lastErr == bufio.ErrBufferFull {
		if n > MaxDiscard {
			return ErrFlood
		}
		var frag []byte
		frag, lastErr = br.ReadSlice('\n')
		n += len(frag)
	}
	return lastErr
}
