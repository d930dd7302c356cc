package spool

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/queueadmin"
)

var ctx = context.Background()

// TestAdminMessagesAndMessage: the list shows what is queued, oldest
// first, with the recipients still queued and their attempts and last
// error; Message and OpenMessage show one.
func TestAdminMessagesAndMessage(t *testing.T) {
	f := newFixture(t)
	a := f.enqueue("s@x.test", "Subject: a\r\n\r\nhi\r\n", "u@a.test", "v@b.test")
	b := f.enqueue("", "Subject: b\r\n\r\nhi\r\n", "w@a.test")
	// One delivery to a.test: u fails for now, w is delivered; b.test waits.
	bt, err := f.s.Claim(ctx, []string{"a.test"})
	require.NoError(t, err)
	d, err := next(t, bt)
	require.NoError(t, err)
	d.complete(t, &odmr.Error{Code: 450, EnhancedCode: odmr.EnhancedCode{4, 2, 1}, Message: "busy"})
	d, err = next(t, bt)
	require.NoError(t, err)
	d.complete(t, nil)
	require.NoError(t, bt.Close())

	msgs, err := f.s.Messages(ctx)
	require.NoError(t, err)
	require.Len(t, msgs, 1, "b was delivered")
	m := msgs[0]
	assert.Equal(t, a, m.Envelope.ID)
	assert.Equal(t, "s@x.test", m.Envelope.From)
	assert.Equal(t, []string{"u@a.test", "v@b.test"}, m.Envelope.To)
	assert.Equal(t, int64(len("Subject: a\r\n\r\nhi\r\n")), m.Envelope.Size)
	require.Len(t, m.Recipients, 2)
	assert.Equal(t, 1, m.Recipients[0].Attempts)
	assert.False(t, m.Recipients[0].LastAttempt.IsZero())
	var reply *odmr.Error
	require.ErrorAs(t, m.Recipients[0].LastError, &reply)
	assert.Equal(t, 450, reply.Code)
	assert.Zero(t, m.Recipients[1].Attempts)
	assert.NoError(t, m.Recipients[1].LastError)
	assert.False(t, m.Held)

	one, err := f.s.Message(ctx, a)
	require.NoError(t, err)
	assert.Equal(t, m, one)
	rc, err := f.s.OpenMessage(ctx, a)
	require.NoError(t, err)
	body, _ := io.ReadAll(rc)
	rc.Close()
	assert.Equal(t, "Subject: a\r\n\r\nhi\r\n", string(body))

	for _, id := range []string{b, "nope", "../queue/" + a, strings.Repeat("0", idLen)} {
		_, err := f.s.Message(ctx, id)
		assert.ErrorIs(t, err, fs.ErrNotExist, id)
		_, err = f.s.OpenMessage(ctx, id)
		assert.ErrorIs(t, err, fs.ErrNotExist, id)
		for name, op := range f.writes() {
			assert.ErrorIs(t, op(ctx, id), fs.ErrNotExist, "%s %s", name, id)
		}
	}
}

// writes returns the queueadmin.Admin methods that change a message.
func (f *fixture) writes() map[string]func(context.Context, string) error {
	return map[string]func(context.Context, string) error{
		"Delete": f.s.Delete, "Bounce": f.s.Bounce, "Hold": f.s.Hold, "Release": f.s.Release,
	}
}

// TestAdminDelete: a deleted message leaves no file and no DSN.
func TestAdminDelete(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("s@x.test", "Subject: a\r\n\r\nhi\r\n", "u@a.test", "v@b.test")
	keep := f.enqueue("s@x.test", "Subject: b\r\n\r\nhi\r\n", "w@a.test")
	require.NoError(t, f.s.Delete(ctx, id))
	assert.NoFileExists(t, f.s.envPath(id))
	assert.NoFileExists(t, f.s.bodyPath(id))
	assert.NoFileExists(t, f.s.markerPath(dirName("a.test"), id))
	assert.False(t, has(t, f.s, "b.test"))
	assert.ErrorIs(t, f.s.Delete(ctx, id), fs.ErrNotExist)
	_, err := f.s.FlushBounces(ctx)
	require.NoError(t, err)
	envs, _ := f.bounces.All()
	assert.Empty(t, envs)
	st, err := f.s.List()
	require.NoError(t, err)
	require.Len(t, st, 1)
	assert.Equal(t, 1, st[0].Messages)
	ds := drain(t, f.s, "a.test", "b.test")
	require.Len(t, ds, 1)
	assert.Equal(t, keep, ds[0].env.ID)
	assert.Contains(t, f.logs.String(), "spool: deleted by the operator")
}

// TestAdminBounce: the queued recipients fail and the sender gets a DSN
// through the Bouncer; the delivered ones are not reported.
func TestAdminBounce(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("s@x.test", "Subject: a\r\n\r\nhi\r\n", "u@a.test", "v@b.test")
	drain(t, f.s, "a.test")
	require.NoError(t, f.s.Bounce(ctx, id))
	assert.NoFileExists(t, f.s.envPath(id))
	assert.False(t, has(t, f.s, "a.test", "b.test"))
	n, err := f.s.FlushBounces(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	envs, dsns := f.bounces.All()
	assert.Equal(t, []string{"s@x.test"}, envs[0].To)
	p := parseDSN(t, dsns[0])
	require.Len(t, p.recipients, 1)
	assert.Contains(t, p.recipient("v@b.test").Get("Final-Recipient"), "v@b.test")
	assert.Equal(t, "5.0.0", p.recipient("v@b.test").Get("Status"))
	assert.Equal(t, id, p.perMessage.Get("X-ODMR-Queue-ID"))
	assert.Contains(t, p.text, "administrator returned the message")

	// A held message bounces too; a null sender gets no DSN.
	id = f.enqueue("", "Subject: b\r\n\r\nhi\r\n", "u@a.test")
	require.NoError(t, f.s.Hold(ctx, id))
	require.NoError(t, f.s.Bounce(ctx, id))
	pending, err := f.s.PendingBounces()
	require.NoError(t, err)
	assert.Zero(t, pending)
	assert.NoFileExists(t, f.s.envPath(id))
}

// TestOutboxWarning: a DSN waiting in the outbox draws a warning from a
// spool opened to serve mail without a Bouncer, which would keep it
// forever, but not from one opened by a tool (no maintenance) beside a
// provider that sends it: the operator of -queue-hold was told "no
// Bouncer is configured" while the provider's own Bouncer was about to
// send the bounce.
func TestOutboxWarning(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Bouncer = nil })
	id := f.enqueue("s@x.test", "Subject: a\r\n\r\nhi\r\n", "u@a.test")
	require.NoError(t, f.s.Bounce(ctx, id))
	require.NoError(t, f.s.Close())
	for _, c := range []struct {
		name string
		opt  func(*Options)
		warn bool
	}{
		{"a tool", func(o *Options) { o.Bouncer = nil; o.NoCreate = true }, false},
		{"serving without a Bouncer", func(o *Options) { o.Bouncer = nil; o.MaintenanceInterval = time.Hour }, true},
		{"serving with a Bouncer", func(o *Options) { o.MaintenanceInterval = time.Hour }, false},
	} {
		f.logs = &logBuffer{}
		s := f.open(c.opt)
		require.NoError(t, s.Close())
		if c.warn {
			assert.Contains(t, f.logs.String(), "Options.Bouncer is nil; open the spool with a Bouncer", c.name)
		} else {
			assert.NotContains(t, f.logs.String(), "level=WARN", c.name)
		}
	}
}

// TestAdminHoldRelease: a held message is not offered (HasMail, Claim),
// survives a restart held, and is delivered once released.
func TestAdminHoldRelease(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("s@x.test", "Subject: a\r\n\r\nhi\r\n", "u@a.test", "v@b.test")
	require.NoError(t, f.s.Hold(ctx, id))
	require.NoError(t, f.s.Hold(ctx, id), "holding twice")
	assert.False(t, has(t, f.s, "a.test", "b.test"))
	assert.Empty(t, drain(t, f.s, "a.test", "b.test"))
	st, err := f.s.List()
	require.NoError(t, err)
	assert.Empty(t, st)
	m, err := f.s.Message(ctx, id)
	require.NoError(t, err)
	assert.True(t, m.Held)

	// Open restores no marker for it; a marker left by a crash after the
	// envelope said "held" is stale and removed.
	require.NoError(t, f.s.Close())
	require.NoError(t, os.WriteFile(f.s.markerPath(dirName("a.test"), id), nil, 0o600))
	f.s = f.open()
	assert.NoFileExists(t, f.s.markerPath(dirName("b.test"), id))
	assert.Empty(t, drain(t, f.s, "a.test", "b.test"))
	assert.False(t, has(t, f.s, "a.test", "b.test"))

	require.NoError(t, f.s.Release(ctx, id))
	require.NoError(t, f.s.Release(ctx, id), "releasing twice")
	assert.True(t, has(t, f.s, "b.test"))
	ds := drain(t, f.s, "a.test", "b.test")
	require.Len(t, ds, 1)
	assert.Equal(t, []string{"u@a.test", "v@b.test"}, ds[0].env.To)
	assert.NoFileExists(t, f.s.envPath(id))
}

// TestAdminDuringDelivery: a message a session has leased cannot be
// deleted or bounced; held, the session still records its results, and
// what it did not deliver stays held.
func TestAdminDuringDelivery(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("s@x.test", "Subject: a\r\n\r\nhi\r\n", "u@a.test", "w@a.test")
	b, err := f.s.Claim(ctx, []string{"a.test"})
	require.NoError(t, err)
	d, err := next(t, b)
	require.NoError(t, err)
	assert.ErrorIs(t, f.s.Delete(ctx, id), queueadmin.ErrBusy)
	assert.ErrorIs(t, f.s.Bounce(ctx, id), queueadmin.ErrBusy)
	// Another Spool, as another process would.
	other, err := Open(f.dir, f.options())
	require.NoError(t, err)
	defer other.Close()
	assert.ErrorIs(t, other.Delete(ctx, id), queueadmin.ErrBusy)
	require.NoError(t, other.Hold(ctx, id))

	require.NoError(t, d.msg.Complete(ctx, []odmr.RecipientResult{
		{Recipient: "u@a.test"},
		{Recipient: "w@a.test", Err: &odmr.Error{Code: 451, Message: "later"}},
	}))
	require.NoError(t, b.Close())
	m, err := f.s.Message(ctx, id)
	require.NoError(t, err)
	assert.True(t, m.Held)
	assert.Equal(t, []string{"w@a.test"}, m.Envelope.To)
	assert.False(t, has(t, f.s, "a.test"))
	require.NoError(t, f.s.Release(ctx, id))
	ds := drain(t, other, "a.test")
	require.Len(t, ds, 1)
	assert.Equal(t, []string{"w@a.test"}, ds[0].env.To)
}

// TestOpenReadOnly: a read-only Spool reads a live spool and changes
// nothing; NoCreate and ReadOnly refuse a directory without a spool.
func TestOpenReadOnly(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("s@x.test", "Subject: a\r\n\r\nhi\r\n", "u@a.test")
	ro, err := Open(f.dir, f.options(func(o *Options) { o.ReadOnly = true }))
	require.NoError(t, err)
	defer ro.Close()
	msgs, err := ro.Messages(ctx)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	assert.True(t, has(t, ro, "a.test"))
	for name, op := range map[string]func() error{
		"Enqueue": func() error {
			_, err := ro.Enqueue(ctx, odmr.Envelope{From: "s@x.test", To: []string{"u@a.test"}}, strings.NewReader("x"))
			return err
		},
		"Claim":        func() error { _, err := ro.Claim(ctx, []string{"a.test"}); return err },
		"Expire":       func() error { _, err := ro.Expire(ctx); return err },
		"FlushBounces": func() error { _, err := ro.FlushBounces(ctx); return err },
		"Delete":       func() error { return ro.Delete(ctx, id) },
		"Bounce":       func() error { return ro.Bounce(ctx, id) },
		"Hold":         func() error { return ro.Hold(ctx, id) },
		"Release":      func() error { return ro.Release(ctx, id) },
	} {
		assert.ErrorIs(t, op(), errReadOnly, name)
	}

	empty := t.TempDir()
	for _, o := range []func(*Options){
		func(o *Options) { o.ReadOnly = true },
		func(o *Options) { o.NoCreate = true },
	} {
		_, err := Open(empty, f.options(o))
		assert.ErrorIs(t, err, ErrNotSpool)
	}
	names, err := os.ReadDir(empty)
	require.NoError(t, err)
	assert.Empty(t, names)
	assert.True(t, errors.Is(func() error {
		_, err := Open(filepath.Join(empty, "missing"), f.options(func(o *Options) { o.NoCreate = true }))
		return err
	}(), fs.ErrNotExist))
}

// TestAdminMessagesMarksDelivering: a message a session has leased is
// listed, marked Delivering, by the Spool that leased it and, on Linux,
// by another one on the same directory (another process, as the queue
// tools are); the listing takes no lock, so the session's own lease is
// undisturbed and the listing of an idle spool changes nothing.
func TestAdminMessagesMarksDelivering(t *testing.T) {
	f := newFixture(t)
	a := f.enqueue("s@x.test", "Subject: a\r\n\r\nhi\r\n", "u@a.test", "v@b.test")
	b := f.enqueue("s@x.test", "Subject: b\r\n\r\nhi\r\n", "w@b.test")
	ro, err := Open(f.dir, Options{ReadOnly: true, MaintenanceInterval: -1, Logger: f.s.log})
	require.NoError(t, err)
	defer ro.Close()

	delivering := func(s *Spool) map[string]bool {
		t.Helper()
		msgs, err := s.Messages(ctx)
		require.NoError(t, err)
		got := make(map[string]bool)
		for _, m := range msgs {
			got[m.Envelope.ID] = m.Delivering
			one, err := s.Message(ctx, m.Envelope.ID)
			require.NoError(t, err)
			assert.Equal(t, m.Delivering, one.Delivering, "Message agrees with Messages")
		}
		return got
	}
	idle := map[string]bool{a: false, b: false}
	assert.Equal(t, idle, delivering(f.s))
	assert.Equal(t, idle, delivering(ro))

	bt, err := f.s.Claim(ctx, []string{"a.test"})
	require.NoError(t, err)
	d, err := next(t, bt)
	require.NoError(t, err)
	require.Equal(t, a, d.env.ID)
	leased := map[string]bool{a: true, b: false}
	assert.Equal(t, leased, delivering(f.s), "the Spool that leased it")
	if lockTableReadable() {
		assert.Equal(t, leased, delivering(ro), "another Spool, through /proc/locks")
	} else {
		t.Log("no /proc/locks: only the leasing Spool marks the message")
	}
	_, err = bt.Next(ctx)
	assert.ErrorIs(t, err, io.EOF, "the batch goes on, undisturbed")
	d.complete(t, nil)
	require.NoError(t, bt.Close())

	assert.Equal(t, map[string]bool{a: false, b: false}, delivering(f.s))
	assert.Equal(t, map[string]bool{a: false, b: false}, delivering(ro))
}

// lockTableReadable reports whether this platform shows other
// processes' locks (lockedFiles).
func lockTableReadable() bool {
	_, ok := lockedFiles()
	return ok
}
