package spool

import (
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
