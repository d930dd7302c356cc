package dsnreport

import (
	"bytes"
	"testing"
)

// The header section is cut at a line boundary and within the limit.
func FuzzReadHeaderSection(f *testing.F) {
	f.Add([]byte("Subject: x\r\nFrom: y\r\n\r\nbody\r\n"), uint16(64))
	f.Add([]byte("Subject: no end"), uint16(5))
	f.Fuzz(func(t *testing.T, msg []byte, limit uint16) {
		max := int(limit) + 2
		h, err := ReadHeaderSection(bytes.NewReader(msg), max)
		if err != nil {
			t.Fatal(err)
		}
		if len(h) > max {
			t.Fatalf("%d bytes, limit %d", len(h), max)
		}
		if len(h) > 0 && !bytes.HasSuffix(h, []byte("\r\n")) {
			t.Fatalf("does not end in CRLF: %q", h)
		}
	})
}
