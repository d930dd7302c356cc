package spool

import (
	"bufio"
	"bytes"
	"testing"
)

// Whatever an envelope file holds, reading it returns an error or an
// envelope that passes check; it never panics.
func FuzzParseEnvelope(f *testing.F) {
	const id = "18eb05b7fdf71e45081e83a080d1"
	f.Add([]byte(`{"version":1,"id":"` + id + `","from":"a@b","received":"2024-01-02T03:04:05Z","size":3,"recipients":[{"addr":"u@example.org","state":"queued"}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"id":"` + id + `","recipients":[{"addr":"","state":"queued"}]}`))
	f.Add([]byte(`{"version":1,"id":"` + id + `","received":"2024-01-02T03:04:05Z","recipients":[{"addr":"u@x","state":"queued","last_error":{"code":451,"enhanced":"4.4","text":"x"}}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := parseEnvelope(data, "fuzz", id)
		if err != nil {
			return
		}
		if err := e.check(id); err != nil {
			t.Fatal("accepted an envelope that fails check:", err)
		}
		for _, r := range e.Recipients {
			_ = r.LastError.err()
		}
		e.queuedDirs()
	})
}

// The CRLF writer leaves no bare LF, adds nothing else, and does not depend
// on how the input is cut into writes.
func FuzzCRLFWriter(f *testing.F) {
	f.Add([]byte("a\nb\r\nc\r\r\n\n"), uint8(1))
	f.Add([]byte("\n"), uint8(0))
	f.Add([]byte("\r"), uint8(3))
	f.Fuzz(func(t *testing.T, in []byte, cut uint8) {
		var whole, pieces bytes.Buffer
		w := &crlfWriter{w: bufio.NewWriter(&whole), limit: -1}
		w.Write(in)
		w.w.Flush()
		pw := &crlfWriter{w: bufio.NewWriter(&pieces), limit: -1}
		step := int(cut%7) + 1
		for i := 0; i < len(in); i += step {
			pw.Write(in[i:min(i+step, len(in))])
		}
		pw.w.Flush()
		out := whole.Bytes()
		if !bytes.Equal(out, pieces.Bytes()) {
			t.Fatalf("depends on the cut: %q vs %q", out, pieces.Bytes())
		}
		if int64(len(out)) != w.n {
			t.Fatalf("counted %d, wrote %d", w.n, len(out))
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

// Every domain maps to a usable directory name, and back.
func FuzzDirName(f *testing.F) {
	for _, d := range []string{"example.org", "", ".", "..", "a/b", "[192.0.2.1]", "bücher.example", "%41"} {
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, d string) {
		name := dirName(d)
		if name == "" || name == "." || name == ".." || bytes.ContainsAny([]byte(name), "/\x00") || len(name) > 255 {
			t.Fatalf("dirName(%q) = %q", d, name)
		}
		if back, ok := domainOfDir(name); ok && back != d {
			t.Fatalf("dirName(%q) = %q, back to %q", d, name, back)
		}
	})
}

// The header section is cut at a line boundary and within the limit.
func FuzzReadHeaderSection(f *testing.F) {
	f.Add([]byte("Subject: x\r\nFrom: y\r\n\r\nbody\r\n"), uint16(64))
	f.Add([]byte("Subject: no end"), uint16(5))
	f.Fuzz(func(t *testing.T, msg []byte, limit uint16) {
		max := int(limit) + 2
		h, err := readHeaderSection(bytes.NewReader(msg), max)
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
