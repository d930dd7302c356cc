package crlf

import (
	"bufio"
	"bytes"
	"testing"
)

// The Writer leaves no bare LF, adds nothing else, and does not depend
// on how the input is cut into writes.
func FuzzCRLFWriter(f *testing.F) {
	f.Add([]byte("a\nb\r\nc\r\r\n\n"), uint8(1))
	f.Add([]byte("\n"), uint8(0))
	f.Add([]byte("\r"), uint8(3))
	f.Fuzz(func(t *testing.T, in []byte, cut uint8) {
		var whole, pieces bytes.Buffer
		w := &Writer{W: bufio.NewWriter(&whole), Limit: -1}
		w.Write(in)
		w.W.(*bufio.Writer).Flush()
		pw := &Writer{W: bufio.NewWriter(&pieces), Limit: -1}
		step := int(cut%7) + 1
		for i := 0; i < len(in); i += step {
			pw.Write(in[i:min(i+step, len(in))])
		}
		pw.W.(*bufio.Writer).Flush()
		out := whole.Bytes()
		if !bytes.Equal(out, pieces.Bytes()) {
			t.Fatalf("depends on the cut: %q vs %q", out, pieces.Bytes())
		}
		if int64(len(out)) != w.N {
			t.Fatalf("counted %d, wrote %d", w.N, len(out))
		}
		for i, c := range out {
			if c == '\n' && (i == 0 || out[i-1] != '\r') {
				t.Fatalf("bare LF at %d in %q", i, out)
			}
		}
		// Taking out the CRs added gives the input back.
		var back []byte
		j := 0
		for i := 0; i < len(out); i++ {
			if out[i] == '\r' && i+1 < len(out) && out[i+1] == '\n' && (j >= len(in) || in[j] != '\r') {
				continue
			}
			back = append(back, out[i])
			j++
		}
		if !bytes.Equal(back, in) {
			t.Fatalf("%q became %q", in, out)
		}
	})
}

// The Writer is on the path of every body a queue stores: it writes a
// line's ending from its input or from a constant, never from a new
// buffer.
func TestCRLFWriterDoesNotAllocate(t *testing.T) {
	body := []byte("Subject: x\r\n\r\nbare\nlines\r\nand CRLF ones\n")
	w := &Writer{W: bufio.NewWriterSize(&bytes.Buffer{}, 1<<20), Limit: -1}
	if n := testing.AllocsPerRun(100, func() { w.Write(body) }); n != 0 {
		t.Errorf("Write allocates %v times a call, want 0", n)
	}
}
