package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// Locks.
//
// Every lock in the spool is a flock(2) lock on a file that is never
// rewritten in place, held through its own open file description:
//
//   - the lease on the recipients of one message in one domain is a lock
//     on the domain's marker file, domains/<domain>/<id>;
//   - the right to change a message's envelope is a lock on its body,
//     queue/<id>.eml, held for the few milliseconds of a read-modify-write;
//   - a message being enqueued keeps its body and its markers locked until
//     its envelope is committed, so that no one mistakes it for debris;
//   - a DSN waiting in the outbox is locked by whoever is sending it.
//
// flock was chosen over lock files holding a pid and an expiry because the
// kernel releases it the moment its holder dies, however it dies: a
// SIGKILLed provider leaves nothing to expire and no pid to misjudge after
// reuse. Locks taken through different open file descriptions exclude each
// other even inside one process, so two sessions, two Spools on one
// directory and two processes all meet the same rule. fcntl locks would not
// do: they belong to the process and vanish when any of its descriptors of
// the file is closed. flock is not reliable on NFS, so the spool must live
// on a local file system.
//
// A locked file can be unlinked by its holder. Whoever opened it before and
// locks it after would hold a lock on a file that no longer has a name, so
// lockPath compares the locked file with the one at the path and treats a
// mismatch as "gone".

// lockPath opens path and tries to lock it. It returns the locked file; or
// nil and busy when someone else holds the lock; or nil and !busy when
// there is no file at path (any more).
func lockPath(path string) (f *os.File, busy bool, err error) {
	f, err = openRegular(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	} else if err != nil {
		return nil, false, err
	}
	ok, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, false, err
	}
	if !ok {
		f.Close()
		return nil, true, nil
	}
	locked, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, err
	}
	named, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) || err == nil && !os.SameFile(locked, named) {
		f.Close()
		return nil, false, nil
	} else if err != nil {
		f.Close()
		return nil, false, err
	}
	return f, false, nil
}

// lockWait is how long lockWaiting waits at most for a lock that someone
// else holds. Envelope locks are held for milliseconds; a holder that keeps
// one this long is stopped or wedged.
const lockWait = 30 * time.Second

// lockWaiting locks path, waiting while another holds it. It returns an
// error matching fs.ErrNotExist when the file is gone.
func lockWaiting(ctx context.Context, path string) (*os.File, error) {
	ctx, cancel := context.WithTimeout(ctx, lockWait)
	defer cancel()
	delay := 500 * time.Microsecond
	for {
		f, busy, err := lockPath(path)
		if err != nil || f != nil {
			return f, err
		}
		if !busy {
			return nil, &os.PathError{Op: "lock", Path: path, Err: fs.ErrNotExist}
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("spool: waiting for lock on %s: %w", path, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 20*time.Millisecond)
	}
}
