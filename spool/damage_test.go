package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

// assertQuarantined checks that message id left the queue for
// quarantine/, whole, with a reason that says why.
func assertQuarantined(t *testing.T, f *fixture, id, why string) {
	t.Helper()
	q, err := f.s.Quarantined()
	require.NoError(t, err)
	require.Len(t, q, 1)
	assert.Equal(t, id, q[0].ID)
	assert.Contains(t, q[0].Reason, why)
	assert.Contains(t, q[0].Reason, "to: <a@example.org> queued")
	assert.FileExists(t, filepath.Join(f.dir, quarantineDir, id+".json"))
	assert.NoFileExists(t, f.s.envPath(id))
	assert.NoFileExists(t, f.s.bodyPath(id))
	assert.NoFileExists(t, f.s.markerPath("example.org", id))
	assert.False(t, has(t, f.s, "example.org"), "HasMail must not count a quarantined message")
	assert.Contains(t, f.logs.String(), "damaged message quarantined")
	assert.Contains(t, f.logs.String(), "level=ERROR")
	_, dsns := f.bounces.All()
	assert.Empty(t, dsns, "a quarantined message is held for the operator, not bounced")
}

// A body cut short after its commit is found when a batch leases the
// message: the batch passes over it, and the next ATRN gets 453 instead
// of one more empty session.
func TestTruncatedBodyIsQuarantinedAtLease(t *testing.T) {
	f := newFixture(t)
	bad := f.enqueue("s@origin.test", "Subject: bad\r\n\r\nsome text\r\n", "a@example.org")
	good := f.enqueue("s@origin.test", "Subject: good\r\n\r\ntext\r\n", "b@example.org")
	require.NoError(t, os.Truncate(f.s.bodyPath(bad), 10))

	got := drain(t, f.s, "example.org")
	require.Len(t, got, 1)
	assert.Equal(t, good, got[0].env.ID)
	assertQuarantined(t, f, bad, "body has 10 bytes, its envelope says 27")
}

// Through the provider: the first ATRN after the damage may still find
// the marker (250 and nothing delivered); every later one gets 453.
func TestTruncatedBodyEndsEmptySessions(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("s@origin.test", "Subject: bad\r\n\r\nsome text\r\n", "a@example.org")
	require.NoError(t, os.Truncate(f.s.bodyPath(id), 0))
	code, got := pullThroughProvider(t, f.s, "example.org")
	assert.Equal(t, 250, code)
	assert.Empty(t, got)
	code, _ = pullThroughProvider(t, f.s, "example.org")
	assert.Equal(t, 453, code)
	assertQuarantined(t, f, id, "body has 0 bytes")
}

// Damage found at Open: the message is never indexed, List does not show
// it, and a missing body is damage too.
func TestDamagedBodiesAreQuarantinedAtOpen(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("s@origin.test", "Subject: x\r\n\r\nsome text\r\n", "a@example.org")
	require.NoError(t, f.s.Close())
	require.NoError(t, os.Remove(f.s.bodyPath(id)))
	f.s = f.open()
	assertQuarantined(t, f, id, "body file missing")
	stats, err := f.s.List()
	require.NoError(t, err)
	assert.Empty(t, stats)
}

// A body damaged between the lease and its reading: Open refuses it and
// quarantines the message, Complete records nothing and says so without
// an error, and the rest of the batch goes on.
func TestBodyDamagedAfterLeaseIsQuarantined(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.enqueue("s@origin.test", "Subject: x\r\n\r\nsome text\r\n", "a@example.org")
	f.enqueue("s@origin.test", "Subject: y\r\n\r\ntext\r\n", "b@example.org")
	b, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	defer b.Close()
	m, err := b.Next(ctx)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(f.s.bodyPath(id), 10))
	_, err = m.Open()
	assert.ErrorContains(t, err, "body has 10 bytes")
	require.NoError(t, m.Complete(ctx, []odmr.RecipientResult{{Recipient: "a@example.org", Err: errors.New("local error")}}))
	d, err := next(t, b)
	require.NoError(t, err)
	d.complete(t, nil)
	assertQuarantined(t, f, id, "body has 10 bytes")
}

// The operator can put a repaired message back: it is queued again at the
// next Open. Nothing was lost.
func TestQuarantinedMessageCanBeRestored(t *testing.T) {
	f := newFixture(t)
	body := "Subject: x\r\n\r\nsome text\r\n"
	id := f.enqueue("s@origin.test", body, "a@example.org")
	require.NoError(t, os.Truncate(f.s.bodyPath(id), 3))
	assert.Empty(t, drain(t, f.s, "example.org"))
	require.NoError(t, f.s.Close())

	q := filepath.Join(f.dir, quarantineDir)
	require.NoError(t, os.WriteFile(f.s.bodyPath(id), []byte(body), 0o600))
	require.NoError(t, os.Rename(filepath.Join(q, id+".json"), f.s.envPath(id)))
	require.NoError(t, os.Remove(filepath.Join(q, id+".eml")))
	require.NoError(t, os.Remove(filepath.Join(q, id+".reason")))
	f.s = f.open()
	assert.True(t, has(t, f.s, "example.org"))
	got := drain(t, f.s, "example.org")
	require.Len(t, got, 1)
	assert.Equal(t, body, got[0].body)
}

// A domain directory that cannot be read costs that domain its mail until
// it is repaired, and no one else anything: the spool opens, the other
// domains are served and listed, and the damage is logged.
func TestUnreadableDomainDirIsSkipped(t *testing.T) {
	for _, how := range []string{"file instead of directory", "no permission"} {
		t.Run(how, func(t *testing.T) {
			if how == "no permission" && os.Geteuid() == 0 {
				t.Skip("root reads a directory whatever its mode; the other case covers it")
			}
			f := newFixture(t)
			f.enqueue("s@origin.test", "Subject: org\r\n\r\ntext\r\n", "a@example.org")
			f.enqueue("s@origin.test", "Subject: net\r\n\r\ntext\r\n", "b@example.net")
			f.enqueue("s@origin.test", "Subject: both\r\n\r\ntext\r\n", "c@example.org", "d@example.net")
			require.NoError(t, f.s.Close())
			net := filepath.Join(f.dir, domainsDir, "example.net")
			if how == "no permission" {
				require.NoError(t, os.Chmod(net, 0))
				t.Cleanup(func() { os.Chmod(net, 0o700) })
			} else {
				require.NoError(t, os.RemoveAll(net))
				require.NoError(t, os.WriteFile(net, []byte("not a directory"), 0o600))
			}

			f.s = f.open()
			assert.True(t, has(t, f.s, "example.org"))
			_, err := f.s.HasMail(context.Background(), []string{"example.net"})
			assert.Error(t, err, "the damaged domain: a temporary failure (451), not 'no mail'")
			stats, err := f.s.List()
			require.NoError(t, err)
			require.Len(t, stats, 1)
			assert.Equal(t, "example.org", stats[0].Domain)
			assert.Equal(t, 2, stats[0].Messages)
			got := drain(t, f.s, "example.org", "example.net")
			assert.Len(t, got, 2, "a batch with the damaged domain still serves the others")
			assert.Equal(t, 1, strings.Count(f.logs.String(), "domain directory"), "logged once:\n%s", f.logs.String())
		})
	}
}

// When the spool cannot record what a session delivered (a full disk),
// the session stops: the mail it would deliver next would stay queued and
// be delivered again after a restart. Only what was in flight is
// delivered twice.
func TestFullDiskStopsTheBatch(t *testing.T) {
	f := newFixture(t)
	const n = 20
	for i := range n {
		// The recipient in example.com keeps the message queued, so
		// recording the delivery to a@ must rewrite the envelope.
		f.enqueue("s@origin.test", fmt.Sprintf("Subject: %d\r\n\r\ntext\r\n", i), "a@example.org", "b@example.com")
	}
	full := &os.PathError{Op: "open", Path: filepath.Join(f.dir, tmpDir), Err: syscall.ENOSPC}
	writeFault = func(string) error { return full }
	t.Cleanup(func() { writeFault = nil })
	// With DATA the sender has one message in flight behind the one
	// whose record fails: it waits for the 354 of each message, which
	// comes after the reply to the previous one's end. (With BDAT as
	// many messages as fit in its window may be in flight: how many
	// depends on how fast the customer answers.)
	dataOnly := func(p *odmr.Provider) { p.DisableChunking = true }
	code, first := pullThroughProvider(t, f.s, "example.org", dataOnly)
	require.Equal(t, 250, code)
	writeFault = nil

	// The restart.
	require.NoError(t, f.s.Close())
	f.s = f.open()
	code, second := pullThroughProvider(t, f.s, "example.org")
	require.Equal(t, 250, code)
	seen := make(map[string]int)
	for _, m := range append(first, second...) {
		seen[subject(m.Body)]++
	}
	dups := 0
	for _, c := range seen {
		dups += c - 1
	}
	t.Logf("full disk: %d delivered before the restart, %d after, %d duplicates", len(first), len(second), dups)
	assert.Len(t, seen, n, "every message delivered")
	assert.LessOrEqual(t, len(first), 2, "the session stops after the failed record: the message it was for and one in flight")
	assert.Equal(t, len(first), dups, "no delivery was recorded while the disk was full, so each is made again")
	assert.False(t, has(t, f.s, "example.org"))
	assert.True(t, has(t, f.s, "example.com"))
}

func subject(msg string) string {
	_, s, _ := strings.Cut(msg, "Subject: ")
	s, _, _ = strings.Cut(s, "\r\n")
	return s
}
