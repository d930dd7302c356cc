package pgqueue

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/go-odmr/odmr"
)

// countingReader is a message body of n bytes that counts what was read
// of it.
type countingReader struct {
	n, read int
	// at, when not nil, is called once read reaches atN.
	at  func()
	atN int
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.read >= r.n {
		return 0, io.EOF
	}
	k := min(len(p), r.n-r.read)
	for i := range k {
		p[i] = 'x'
		if (r.read+i)%100 == 98 {
			p[i] = '\r'
		} else if (r.read+i)%100 == 99 {
			p[i] = '\n'
		}
	}
	r.read += k
	if r.at != nil && r.read >= r.atN {
		r.at()
		r.at = nil
	}
	return k, nil
}

// assertNothingLeft checks that no table holds a row of a message and
// that dir holds no file.
func assertNothingLeft(t *testing.T, q *Queue, dir string) {
	t.Helper()
	for _, table := range []string{"odmr_messages", "odmr_recipients", "odmr_pending", "odmr_body"} {
		if n := count(t, q, "SELECT count(*) FROM "+table); n != 0 {
			t.Errorf("%s has %d rows after a refused Enqueue", table, n)
		}
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("temporary directory: %v entries, err %v", len(ents), err)
	}
}

func wantReply(t *testing.T, err error, code int, enh odmr.EnhancedCode) {
	t.Helper()
	var e *odmr.Error
	if !errors.As(err, &e) || e.Code != code || e.EnhancedCode != enh {
		t.Fatalf("Enqueue: %v, want a %d %v *odmr.Error", err, code, enh)
	}
}

// TestMaxMessageBytes: a body over MaxMessageBytes is refused with 552
// 5.3.4 once one byte past the limit is read, not after it was spilled
// whole, and nothing of it stays; a body at the limit is queued.
func TestMaxMessageBytes(t *testing.T) {
	const chunk, limit = 1024, 10_000
	dir := t.TempDir()
	q := openTest(t, Options{ChunkSize: chunk, MaxMessageBytes: limit, TempDir: dir})
	env := odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}}
	// A limit below ChunkSize stops the body in memory, one above it in
	// the temporary file.
	for _, max := range []int64{chunk / 2, limit} {
		q.opts.MaxMessageBytes = max
		body := &countingReader{n: 100 * limit}
		_, err := q.Enqueue(t.Context(), env, body)
		wantReply(t, err, 552, odmr.EnhancedCode{5, 3, 4})
		if body.read > int(max)+1 {
			t.Errorf("read %d bytes of a body over a limit of %d, want at most one more", body.read, max)
		}
		assertNothingLeft(t, q, dir)
	}
	q.opts.MaxMessageBytes = limit
	if _, err := q.Enqueue(t.Context(), env, &countingReader{n: limit}); err != nil {
		t.Fatalf("a body of exactly MaxMessageBytes: %v", err)
	}
	// Bare LFs made CRLF count: the stored size decides.
	_, err := q.Enqueue(t.Context(), env, strings.NewReader(strings.Repeat("x\n", limit/2)))
	wantReply(t, err, 552, odmr.EnhancedCode{5, 3, 4})

	// No limit.
	q.opts.MaxMessageBytes = -1
	if _, err := q.Enqueue(t.Context(), env, &countingReader{n: 3 * limit}); err != nil {
		t.Fatalf("MaxMessageBytes -1: %v", err)
	}
}

// TestMaxMessageBytesDefault: the zero value stands for 50 MiB, a
// negative one for no limit.
func TestMaxMessageBytesDefault(t *testing.T) {
	for _, c := range []struct{ in, want int64 }{{0, 50 << 20}, {-5, -1}, {1234, 1234}} {
		q := openTest(t, Options{MaxMessageBytes: c.in})
		if q.opts.MaxMessageBytes != c.want {
			t.Errorf("MaxMessageBytes %d: %d, want %d", c.in, q.opts.MaxMessageBytes, c.want)
		}
	}
}

// TestQuotaWhileReading: the bytes a domain's quota leaves bound the
// reading of the body, and a domain with no room for one more message
// refuses it before a byte is read; the transaction's check still
// decides.
func TestQuotaWhileReading(t *testing.T) {
	const chunk = 1024
	dir := t.TempDir()
	q := openTest(t, Options{ChunkSize: chunk, TempDir: dir, Quota: func(d string) (int64, int) {
		switch d {
		case "small.example":
			return 10_000, 0
		case "few.example":
			return 0, 1
		}
		return 0, 0
	}})
	first := &countingReader{n: 6000}
	if _, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"u@small.example"}}, first); err != nil {
		t.Fatal(err)
	}
	// Over the domain's whole quota: refused for good (see
	// TestTooBigForQuotaIsPermanent), and read no further than it.
	body := &countingReader{n: 1 << 20}
	_, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"u@other.example", "u@small.example"}}, body)
	wantReply(t, err, 552, odmr.EnhancedCode{5, 3, 4})
	if body.read > 10_001 {
		t.Errorf("read %d bytes of a body over the quota of 10,000", body.read)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d files left in the temporary directory", len(ents))
	}

	if _, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"u@few.example"}}, &countingReader{n: 10}); err != nil {
		t.Fatal(err)
	}
	body = &countingReader{n: 1 << 20}
	_, err = q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"u@few.example"}}, body)
	wantReply(t, err, 452, odmr.EnhancedCode{4, 2, 2})
	if body.read != 0 {
		t.Errorf("read %d bytes of a message the count refuses", body.read)
	}
}

// TestQuotaCheckedAgainInTransaction: what is queued between the check
// before reading and the transaction counts: the transaction refuses.
func TestQuotaCheckedAgainInTransaction(t *testing.T) {
	q := openTest(t, Options{ChunkSize: 1024, Quota: func(d string) (int64, int) { return 10_000, 0 }})
	env := odmr.Envelope{From: "s@sender.example", To: []string{"u@small.example"}}
	// While the second body is read, a first one of 6000 bytes is
	// queued: the second, of 6000 too, passed the check before reading
	// but not the transaction's.
	var innerErr error
	second := &countingReader{n: 6000, atN: 1, at: func() {
		_, innerErr = q.Enqueue(context.Background(), env, &countingReader{n: 6000})
	}}
	_, err := q.Enqueue(t.Context(), env, second)
	if innerErr != nil {
		t.Fatal(innerErr)
	}
	wantReply(t, err, 452, odmr.EnhancedCode{4, 2, 2})
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
}

// TestEnqueueCancelledWhileSpilling: a context cancelled in the middle of
// a body being spilled leaves nothing, in the database or on disk.
func TestEnqueueCancelledWhileSpilling(t *testing.T) {
	dir := t.TempDir()
	q := openTest(t, Options{ChunkSize: 1024, TempDir: dir})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	body := &countingReader{n: 1 << 20, atN: 5000, at: cancel}
	_, err := q.Enqueue(ctx, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}}, body)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Enqueue: %v, want context.Canceled", err)
	}
	if body.read >= body.n {
		t.Error("the whole body was read after the context was cancelled")
	}
	assertNothingLeft(t, q, dir)
}

// TestTempDir: a body over ChunkSize goes to TempDir; one that cannot be
// created there fails Enqueue, with nothing queued.
func TestTempDir(t *testing.T) {
	q := openTest(t, Options{ChunkSize: 1024, TempDir: t.TempDir() + "/missing"})
	env := odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}}
	if _, err := q.Enqueue(t.Context(), env, &countingReader{n: 100}); err != nil {
		t.Fatalf("a body that stays in memory: %v", err)
	}
	if _, err := q.Enqueue(t.Context(), env, &countingReader{n: 5000}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a body spilled to a missing directory: %v, want ErrNotExist", err)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
}

// TestTooBigForQuotaIsPermanent: a body over the room a quota leaves
// gets the temporary 452 4.2.2 only if it could ever be queued; one over
// the domain's whole byte quota, or over MaxMessageBytes, gets 552 5.3.4.
// Past the room, the body is read on without being stored, to tell the
// two apart, and no further than the smaller of the two bounds.
func TestTooBigForQuotaIsPermanent(t *testing.T) {
	dir := t.TempDir()
	q := openTest(t, Options{ChunkSize: 1024, TempDir: dir, MaxMessageBytes: 90_000, Quota: func(d string) (int64, int) {
		switch d {
		case "small.example":
			return 10_000, 0
		case "big.example":
			return 100_000, 0
		}
		return 0, 0
	}})
	send := func(to string, n int) *countingReader {
		body := &countingReader{n: n}
		if _, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{to}}, body); err != nil {
			t.Fatalf("%d bytes for %s: %v", n, to, err)
		}
		return body
	}
	send("u@small.example", 6000)
	send("u@big.example", 80_000)

	for _, c := range []struct {
		to    string
		n     int
		code  int
		enh   odmr.EnhancedCode
		reads int // at most
	}{
		// Room 4000 of 10,000: 5000 bytes fit later, 20,000 never.
		{"u@small.example", 5000, 452, odmr.EnhancedCode{4, 2, 2}, 5000},
		{"u@small.example", 20_000, 552, odmr.EnhancedCode{5, 3, 4}, 10_001},
		// Room 20,000 of 100,000, but MaxMessageBytes is 90,000.
		{"u@big.example", 30_000, 452, odmr.EnhancedCode{4, 2, 2}, 30_000},
		{"u@big.example", 1 << 20, 552, odmr.EnhancedCode{5, 3, 4}, 90_001},
	} {
		body := &countingReader{n: c.n}
		_, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{c.to}}, body)
		wantReply(t, err, c.code, c.enh)
		if body.read > c.reads {
			t.Errorf("%d bytes for %s: read %d, want at most %d", c.n, c.to, body.read, c.reads)
		}
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 2 {
		t.Errorf("%d messages, want 2", n)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d files left in the temporary directory", len(ents))
	}
}
