package pgqueue

import (
	"strings"
	"testing"
	"time"

	"github.com/go-odmr/odmr"
)

// TestQueueStats: the per-domain counts follow enqueues, deliveries,
// holds, releases and deletes, agree with a count of the messages, and
// survive the adding up of their rows.
func TestQueueStats(t *testing.T) {
	q := openTest(t, Options{})
	ids := []string{
		enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example", "v@b.example"}}),
		enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"w@a.example", "x@a.example"}}),
		enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"y@c.example"}}),
	}
	big, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"z@b.example"}},
		strings.NewReader(testBody+strings.Repeat("x", 1000)+"\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(testBody))
	check := func(what string, want map[string][2]int64) {
		t.Helper()
		st, err := q.QueueStats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][2]int64{}
		for _, s := range st {
			got[s.Domain] = [2]int64{int64(s.Messages), s.Bytes}
			if s.Oldest.IsZero() {
				t.Errorf("%s: %s has no oldest", what, s.Domain)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: QueueStats = %v, want %v", what, got, want)
		}
		for d, w := range want {
			if got[d] != w {
				t.Errorf("%s: %s has %v, want %v", what, d, got[d], w)
			}
		}
		// The same as a count of the messages offered.
		rows := count(t, q, `SELECT count(*) FROM (SELECT p.domain FROM odmr_pending p JOIN odmr_messages m ON m.id = p.message_id
			WHERE NOT p.held GROUP BY p.domain) t`)
		if rows != len(got) {
			t.Errorf("%s: %d domains offered, QueueStats has %d", what, rows, len(got))
		}
	}
	check("queued", map[string][2]int64{"a.example": {2, 2 * size}, "b.example": {2, 2*size + 1002}, "c.example": {1, size}})
	if n := count(t, q, "SELECT count(*) FROM odmr_domain_counts"); n != 3 {
		t.Errorf("%d rows of counts after adding them up, want one per domain", n)
	}

	deliverAll(t, q, func(r string) odmr.RecipientResult {
		if r == "x@a.example" {
			return odmr.RecipientResult{Recipient: r, Err: &odmr.Error{Code: 451, Message: "later"}}
		}
		return odmr.RecipientResult{Recipient: r}
	}, "a.example")
	check("a.example delivered", map[string][2]int64{"a.example": {1, size}, "b.example": {2, 2*size + 1002}, "c.example": {1, size}})

	if err := q.Hold(t.Context(), big); err != nil {
		t.Fatal(err)
	}
	check("held", map[string][2]int64{"a.example": {1, size}, "b.example": {1, size}, "c.example": {1, size}})
	if err := q.Release(t.Context(), big); err != nil {
		t.Fatal(err)
	}
	check("released", map[string][2]int64{"a.example": {1, size}, "b.example": {2, 2*size + 1002}, "c.example": {1, size}})
	if err := q.Delete(t.Context(), ids[2]); err != nil {
		t.Fatal(err)
	}
	if err := q.Bounce(t.Context(), ids[0]); err != nil {
		t.Fatal(err)
	}
	check("deleted and bounced", map[string][2]int64{"a.example": {1, size}, "b.example": {1, size + 1002}})
	deliverAll(t, q, func(r string) odmr.RecipientResult { return odmr.RecipientResult{Recipient: r} }, "a.example", "b.example")
	check("empty", map[string][2]int64{})
	if n := count(t, q, "SELECT count(*) FROM odmr_domain_counts"); n != 0 {
		t.Errorf("%d rows of counts left in an empty queue", n)
	}
}

// TestQueueStatsOldest: a domain's oldest follows its deliveries and
// holds, and a domain that did not change keeps its row as it was.
func TestQueueStatsOldest(t *testing.T) {
	q := openTest(t, Options{})
	t1 := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	t2 := t1.Add(time.Hour)
	first := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}, Received: t1})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"v@a.example"}, Received: t2})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"w@b.example"}, Received: t1})
	oldest := func() map[string]time.Time {
		t.Helper()
		st, err := q.QueueStats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]time.Time{}
		for _, s := range st {
			m[s.Domain] = s.Oldest
		}
		return m
	}
	if o := oldest(); !o["a.example"].Equal(t1) || !o["b.example"].Equal(t1) {
		t.Fatalf("oldest %v, want %v for both", o, t1)
	}
	if err := q.Hold(t.Context(), first); err != nil {
		t.Fatal(err)
	}
	if o := oldest(); !o["a.example"].Equal(t2) || !o["b.example"].Equal(t1) {
		t.Fatalf("oldest with the first held %v, want %v and %v", o, t2, t1)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_domain_counts WHERE oldest IS NULL"); n != 0 {
		t.Errorf("%d changes left after QueueStats", n)
	}
}

// TestStatsMigration: schema version 3 counts the mail a version 2
// database already holds.
func TestStatsMigration(t *testing.T) {
	q := openTest(t, Options{})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example", "v@b.example"}})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"w@a.example"}})
	// Back to version 2, mail and all.
	if _, err := q.pool.Exec(t.Context(), `DROP TRIGGER odmr_pending_insert_delete ON odmr_pending;
		DROP TRIGGER odmr_pending_held ON odmr_pending; DROP FUNCTION odmr_count_pending();
		DROP TABLE odmr_domain_counts; DROP INDEX odmr_pending_offered; ALTER TABLE odmr_pending DROP COLUMN held;
		DELETE FROM odmr_schema WHERE version = 3`); err != nil {
		t.Fatal(err)
	}
	if err := Migrate(t.Context(), q.pool); err != nil {
		t.Fatal(err)
	}
	st, err := q.QueueStats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st[0].Domain != "a.example" || st[0].Messages != 2 || st[1].Messages != 1 ||
		st[0].Bytes != 2*int64(len(testBody)) || st[0].Oldest.IsZero() {
		t.Fatalf("QueueStats after the migration = %+v", st)
	}
}
