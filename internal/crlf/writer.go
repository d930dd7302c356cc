package crlf

import (
	"bytes"
	"errors"
	"io"
)

// ErrTooBig is the error of a [Writer] whose Limit a Write would pass.
var ErrTooBig = errors.New("odmr: message over the size limit")

var crlfBytes = []byte("\r\n")

// Writer writes a message body as the queues store it, with every bare
// LF turned into CRLF, counting the bytes written and noting 8-bit ones.
// A Write that would take N past Limit fails with [ErrTooBig].
type Writer struct {
	W        io.Writer
	Limit    int64 // -1: none
	N        int64 // bytes written
	EightBit bool  // a byte written had the high bit set
	cr       bool  // the last byte written was CR
}

func (c *Writer) Write(p []byte) (int, error) {
	total := len(p)
	if !c.EightBit {
		for _, b := range p {
			if b >= 0x80 {
				c.EightBit = true
				break
			}
		}
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if err := c.write(p); err != nil {
				return 0, err
			}
			break
		}
		cr := c.cr
		if i > 0 {
			cr = p[i-1] == '\r'
		}
		line := p[:i+1] // with its LF
		if !cr {
			if err := c.write(p[:i]); err != nil {
				return 0, err
			}
			line = crlfBytes
		}
		if err := c.write(line); err != nil {
			return 0, err
		}
		p = p[i+1:]
	}
	return total, nil
}

func (c *Writer) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	c.N += int64(len(p))
	if c.Limit >= 0 && c.N > c.Limit {
		return ErrTooBig
	}
	c.cr = p[len(p)-1] == '\r'
	_, err := c.W.Write(p)
	return err
}
