package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzReadLine reads arbitrary input line by line with arbitrary limits,
// buffer sizes and fragmentation, and compares every result with a model
// written from ReadLine's documentation: a line is returned without its
// CRLF or LF, holds no CR, LF or NUL and is at most max bytes long; a
// longer line is ErrLineTooLong and the next call starts on the next line;
// a CR or NUL inside a line is ErrBareCR; a last line without LF is not
// returned (io.EOF).
func FuzzReadLine(f *testing.F) {
	for _, s := range []string{
		"", "EHLO x\r\n", "EHLO x\n", "a\r\nb\nc", "\r\n\r\n", "a\rb\r\n", "a\r\r\n", "nul\x00\r\n",
		"AUTH CRAM-MD5\r\nZm9v\r\n*\r\n", "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		string(bytes.Repeat([]byte("x"), 600)) + "\r\nnext\r\n",
		string(bytes.Repeat([]byte("y"), 5000)) + "\nafter\n",
		"\r", "\n", "\r\r\n\n",
	} {
		f.Add([]byte(s), uint16(512), uint16(16), false)
		f.Add([]byte(s), uint16(4), uint16(4096), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, max16, size16 uint16, oneByte bool) {
		if len(data) > MaxDiscard {
			// The flood limit depends on buffering; the unit tests cover it.
			return
		}
		max := int(max16 % 2048)
		var r io.Reader = bytes.NewReader(data)
		if oneByte {
			r = iotest.OneByteReader(r)
		}
		br := bufio.NewReaderSize(r, int(size16%8192))
		want := modelLines(data, max)
		for i := 0; ; i++ {
			line, err := ReadLine(br, max)
			if i >= len(want) {
				if err != io.EOF {
					t.Fatalf("call %d: %q, %v; want io.EOF (model %+v)", i, line, err, want)
				}
				break
			}
			w := want[i]
			if !errors.Is(err, w.err) || (err == nil && string(line) != w.line) {
				t.Fatalf("call %d (max %d, buffer %d): %q, %v; want %q, %v", i, max, br.Size(), line, err, w.line, w.err)
			}
			if err == nil && (len(line) > max || bytes.ContainsAny(line, "\r\n\x00")) {
				t.Fatalf("call %d: returned %q, over %d bytes or with CR, LF or NUL", i, line, max)
			}
			if err != nil && line != nil {
				t.Fatalf("call %d: returned %q with error %v", i, line, err)
			}
		}
	})
}

type modelLine struct {
	line string
	err  error
}

// modelLines splits data as ReadLine documents it.
func modelLines(data []byte, max int) []modelLine {
	var out []modelLine
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return out
		}
		seg := data[:i+1]
		data = data[i+1:]
		l := seg[:len(seg)-1]
		l = bytes.TrimSuffix(l, []byte("\r"))
		switch {
		case len(seg) > max+2 || len(l) > max:
			out = append(out, modelLine{err: ErrLineTooLong})
		case bytes.ContainsAny(l, "\r\x00"):
			out = append(out, modelLine{err: ErrBareCR})
		default:
			out = append(out, modelLine{line: string(l)})
		}
	}
}
