package spool

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

// Open does not wait for the index: while it is built, sessions are
// served from the markers, quotas are checked against the domain's
// directory and QueueStats waits; what this process changes meanwhile (a
// delivery, a new message) is replayed over what the scan read.
func TestIndexBuiltInBackground(t *testing.T) {
	quota := func(o *Options) {
		o.Quota = func(domain string) (int64, int) {
			if domain == "few.test" {
				return 0, 2
			}
			return 0, 0
		}
	}
	f := newFixture(t, quota)
	f.enqueue("s@origin.test", "Subject: 1\r\n\r\none\r\n", "a@example.org")
	f.enqueue("s@origin.test", "Subject: 2\r\n\r\ntwo\r\n", "b@example.org")
	f.enqueue("s@origin.test", "Subject: 3\r\n\r\nthree\r\n", "c@few.test")
	require.NoError(t, f.s.Close())

	scanned, resume := make(chan struct{}), make(chan struct{})
	buildHook = func() {
		close(scanned)
		<-resume
	}
	t.Cleanup(func() { buildHook = nil })
	s, err := Open(f.dir, f.options(quota))
	require.NoError(t, err)
	defer s.Close()
	<-scanned
	ctx := context.Background()

	// Served from the markers.
	assert.True(t, has(t, s, "example.org"))
	got := drain(t, s, "example.org")
	assert.Len(t, got, 2)
	// Quotas from the domain's directory.
	assert.NoError(t, s.CheckQuota("z@few.test"))
	_, err = s.Enqueue(ctx, odmr.Envelope{From: "s@origin.test", To: []string{"d@few.test"}}, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	assertQuota(t, s.CheckQuota("z@few.test"), "few.test")
	_, err = s.Enqueue(ctx, odmr.Envelope{From: "s@origin.test", To: []string{"e@few.test"}}, strings.NewReader("x\r\n"))
	assertQuota(t, err, "few.test")
	// Statistics wait for the index.
	assert.False(t, s.Indexed())
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.QueueStats(canceled)
	assert.ErrorIs(t, err, context.Canceled)
	_, err = s.Enqueue(ctx, odmr.Envelope{From: "s@origin.test", To: []string{"e@example.net"}}, strings.NewReader("new\r\n"))
	require.NoError(t, err)

	close(resume)
	require.NoError(t, s.WaitIndexed(ctx))
	assert.True(t, s.Indexed())
	stats, err := s.QueueStats(ctx)
	require.NoError(t, err)
	var domains []string
	for _, st := range stats {
		domains = append(domains, fmt.Sprint(st.Domain, " ", st.Messages, " ", st.Bytes))
	}
	assert.Equal(t, []string{"example.net 1 5", "few.test 2 24"}, domains,
		"the delivery made during the build is not counted, the messages queued then are")
	assertQuota(t, s.CheckQuota("z@few.test"), "few.test")
}

// What another process sharing the spool queues and delivers reaches the
// index RefreshDomains domain directories per maintenance, going on where
// the last one stopped; List looks at them all.
func TestRefreshDomains(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.RefreshDomains = 1 })
	assert.Equal(t, 1, f.s.opts.RefreshDomains)
	other, err := Open(f.dir, f.options())
	require.NoError(t, err)
	defer other.Close()
	require.NoError(t, other.WaitIndexed(context.Background()))
	assert.Equal(t, DefaultRefreshDomains, other.opts.RefreshDomains, "0 means the default")
	for _, d := range []string{"a.test", "b.test", "c.test"} {
		_, err := other.Enqueue(context.Background(), odmr.Envelope{From: "s@origin.test", To: []string{"u@" + d}}, strings.NewReader("x\r\n"))
		require.NoError(t, err)
	}
	counted := func() int {
		stats, err := f.s.QueueStats(context.Background())
		require.NoError(t, err)
		n := 0
		for _, st := range stats {
			n += st.Messages
		}
		return n
	}
	assert.Equal(t, 0, counted())
	for i := 1; i <= 3; i++ {
		f.s.maintain(context.Background())
		assert.Equal(t, i, counted(), "after %d maintenances", i)
	}

	drain(t, other, "a.test", "b.test", "c.test")
	f.s.maintain(context.Background()) // the end of the listing
	for i := 1; i <= 3; i++ {
		f.s.maintain(context.Background())
		assert.Equal(t, 3-i, counted(), "after %d maintenances", i)
	}

	_, err = other.Enqueue(context.Background(), odmr.Envelope{From: "s@origin.test", To: []string{"u@d.test"}}, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	stats, err := f.s.List()
	require.NoError(t, err)
	assert.Len(t, stats, 1)
}

// The oldest arrival of a domain follows its deliveries.
func TestQueueStatsOldest(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range 3 {
		_, err := f.s.Enqueue(ctx, odmr.Envelope{From: "s@x.test", To: []string{fmt.Sprintf("u%d@example.org", i)}, Received: t0.Add(time.Duration(i) * time.Hour)},
			strings.NewReader("x\r\n"))
		require.NoError(t, err)
	}
	oldest := func() time.Time {
		stats, err := f.s.QueueStats(ctx)
		require.NoError(t, err)
		require.Len(t, stats, 1)
		return stats[0].Oldest.UTC()
	}
	assert.Equal(t, t0, oldest())
	b, err := f.s.Claim(ctx, []string{"example.org"})
	require.NoError(t, err)
	d, err := next(t, b)
	require.NoError(t, err)
	d.complete(t, nil)
	require.NoError(t, b.Close())
	assert.Equal(t, t0.Add(time.Hour), oldest())
}

// The index holds a message in far less than the 300 bytes issue 17 asks
// for; 1.1 KiB before it was made compact.
func TestIndexMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100,000 entries")
	}
	const n, perDomain = 100000, 10
	var ix index
	ix.init()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	t0 := time.Now()
	for i := range n {
		id := newID(t0.Add(time.Duration(i)))
		d := fmt.Sprintf("d%06d.test", i/perDomain)
		ix.add(id, &msgInfo{size: 10 << 10, received: t0, domains: map[string]string{d: d}}, []string{d})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per message", per)
	assert.Less(t, per, 300.0)
	runtime.KeepAlive(&ix)
}
