// Package crlf checks and repairs the line endings of message text: SMTP
// allows a CR or an LF only as a CRLF pair (RFC 5321 section 2.3.8), and
// peers that disagree about a bare one are how SMTP smuggling works.
package crlf

import (
	"bytes"
	"errors"
	"io"
)

// ErrBare is the error of a [Checker] that met a CR or LF outside a CRLF
// pair.
var ErrBare = errors.New("bare CR or LF in message")

// Checker passes a message through unchanged and fails with [ErrBare] at
// the first CR or LF that is not part of a CRLF pair; a CR that ends the
// message is bare too. The bytes before the bad one are returned first.
type Checker struct {
	R   io.Reader
	cr  bool  // the last byte passed on was a CR
	err error // sticky
}

// Err reports whether the checker found a bare CR or LF: it is [ErrBare]
// then, nil otherwise.
func (c *Checker) Err() error {
	if c.err == ErrBare {
		return c.err
	}
	return nil
}

func (c *Checker) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.R.Read(p)
	if bad := c.check(p[:n]); bad >= 0 {
		c.err = ErrBare
		return bad, c.err
	}
	if err == io.EOF && c.cr {
		c.err = ErrBare
		return n, c.err
	}
	if err != nil {
		c.err = err
	}
	return n, err
}

// check returns the index of the first bare CR or LF in p, or -1. A CR at
// the end of p is judged with the next read.
func (c *Checker) check(p []byte) int {
	if len(p) == 0 {
		return -1
	}
	if c.cr && p[0] != '\n' {
		return 0
	}
	for i := range p {
		switch p[i] {
		case '\n':
			if i == 0 && !c.cr || i > 0 && p[i-1] != '\r' {
				return i
			}
		case '\r':
			if i+1 < len(p) && p[i+1] != '\n' {
				return i
			}
		}
	}
	c.cr = p[len(p)-1] == '\r'
	return -1
}

// Normalizer passes a message through with every line break made CRLF: a
// bare CR and a bare LF each become CRLF, and CRLF stays as it is. It is
// what a sender puts in front of its encoder so that no bare CR or LF
// goes on the wire whatever it was given.
type Normalizer struct {
	R   io.Reader
	cr  bool   // the last byte read was a CR whose LF was written
	out []byte // encoded bytes not yet returned
	buf []byte // out's storage
	err error
}

// Read reads into p and hands what it read on as it is when it holds no
// bare CR or LF, the usual case: no copy and no buffer. Otherwise the
// normalized bytes, which may be longer, are kept in a buffer and handed
// on from there.
func (z *Normalizer) Read(p []byte) (int, error) {
	for len(z.out) == 0 {
		if z.err != nil {
			return 0, z.err
		}
		n, err := z.R.Read(p)
		z.err = err
		if !z.cr && clean(p[:n]) {
			if n > 0 {
				return n, nil
			}
			continue
		}
		z.buf = z.normalize(z.buf[:0], p[:n])
		z.out = z.buf
	}
	n := copy(p, z.out)
	z.out = z.out[n:]
	return n, nil
}

// clean reports whether every line break in p is a CRLF within p.
func clean(p []byte) bool {
	for i := 0; i < len(p); {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			break
		}
		j += i
		if j == 0 || p[j-1] != '\r' {
			return false
		}
		i = j + 1
	}
	for i := 0; i < len(p); {
		j := bytes.IndexByte(p[i:], '\r')
		if j < 0 {
			break
		}
		j += i
		if j+1 == len(p) || p[j+1] != '\n' {
			return false
		}
		i = j + 2
	}
	return true
}

// normalize appends the normalized form of p to dst. Each CR is written
// as CRLF at once; an LF right after a CR is then dropped.
func (z *Normalizer) normalize(dst, p []byte) []byte {
	for len(p) > 0 {
		if z.cr && p[0] == '\n' {
			p = p[1:]
		}
		z.cr = false
		i := bytes.IndexAny(p, "\r\n")
		if i < 0 {
			return append(dst, p...)
		}
		dst = append(dst, p[:i]...)
		dst = append(dst, '\r', '\n')
		z.cr = p[i] == '\r'
		p = p[i+1:]
	}
	return dst
}
