package pgqueue

import (
	"strconv"
	"syscall"
	"testing"

	"github.com/go-odmr/odmr"
)

// smallTmpfs mounts a tmpfs of size bytes on a new directory, unmounted
// when t ends, or skips t where mounting is not allowed (not root).
func smallTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size)); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (%v): run as root to test a full disk", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// freeBytes returns the bytes free in the file system of dir.
func freeBytes(t *testing.T, dir string) uint64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bfree * uint64(st.Bsize)
}

// TestSpillFullDisk: a body that fills the disk it is spilled to is
// refused with 452 4.3.1, the sender to try again later; nothing is
// queued and the space is given back. A body that fits still goes
// through.
func TestSpillFullDisk(t *testing.T) {
	dir := smallTmpfs(t, 64<<10)
	free := freeBytes(t, dir)
	q := openTest(t, Options{ChunkSize: 1024, TempDir: dir})
	env := odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}}
	_, err := q.Enqueue(t.Context(), env, &countingReader{n: 1 << 20})
	wantReply(t, err, 452, odmr.EnhancedCode{4, 3, 1})
	assertNothingLeft(t, q, dir)
	if f := freeBytes(t, dir); f != free {
		t.Errorf("%d bytes free after the refusal, %d before", f, free)
	}
	if _, err := q.Enqueue(t.Context(), env, &countingReader{n: 32 << 10}); err != nil {
		t.Fatalf("a body that fits: %v", err)
	}
	if f := freeBytes(t, dir); f != free {
		t.Errorf("%d bytes free after a message was queued, %d before", f, free)
	}
}
