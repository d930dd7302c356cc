package pgqueue

import (
	"errors"
	"io"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/bouncetest"
	"github.com/go-odmr/odmr/queueadmin"
)

// TestAdminMessages lists, shows and opens messages, with the state of
// their recipients, and says fs.ErrNotExist for IDs it does not hold.
func TestAdminMessages(t *testing.T) {
	q := openTest(t, Options{})
	first := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example", "v@b.example"},
		DSN: &odmr.DSN{EnvID: "E1", Recipients: map[string]odmr.RecipientDSN{"u@a.example": {Notify: []odmr.DSNNotify{odmr.NotifyFailure}}}}})
	second := enqueue(t, q, odmr.Envelope{From: "t@sender.example", To: []string{"w@a.example"}})
	// a.example's customer defers both; b.example's is never asked.
	deliverAll(t, q, func(r string) odmr.RecipientResult {
		return odmr.RecipientResult{Recipient: r, Err: &odmr.Error{Code: 451, EnhancedCode: odmr.EnhancedCode{4, 3, 0}, Message: "later"}}
	}, "a.example")

	msgs, err := q.Messages(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || msgs[0].Envelope.ID != first || msgs[1].Envelope.ID != second {
		t.Fatalf("Messages = %+v, want %s then %s", msgs, first, second)
	}
	m := msgs[0]
	if m.Held || m.Envelope.From != "s@sender.example" || m.Envelope.Size != int64(len(testBody)) ||
		m.Envelope.DSN == nil || m.Envelope.DSN.EnvID != "E1" || !m.Envelope.DSN.Notifies("u@a.example", odmr.NotifyFailure) {
		t.Errorf("first message %+v", m)
	}
	if len(m.Recipients) != 2 || m.Recipients[0].Addr != "u@a.example" || m.Recipients[0].Attempts != 1 ||
		m.Recipients[0].LastAttempt.IsZero() || m.Recipients[1].Attempts != 0 || m.Recipients[1].LastError != nil {
		t.Fatalf("recipients %+v", m.Recipients)
	}
	var e *odmr.Error
	if !errors.As(m.Recipients[0].LastError, &e) || e.Code != 451 || e.Message != "later" {
		t.Errorf("LastError = %v, want the 451", m.Recipients[0].LastError)
	}

	got, err := q.Message(t.Context(), second)
	if err != nil || got.Envelope.ID != second || len(got.Envelope.To) != 1 {
		t.Fatalf("Message(%s) = %+v, %v", second, got, err)
	}
	rc, err := q.OpenMessage(t.Context(), first)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(body) != testBody {
		t.Fatalf("OpenMessage read %q, %v", body, err)
	}
	for _, id := range []string{"", "x", "0", "-1", "01", "99999", first + "0"} {
		if _, err := q.Message(t.Context(), id); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Message(%q) = %v, want fs.ErrNotExist", id, err)
		}
		for name, op := range map[string]func(string) error{"Delete": func(id string) error { return q.Delete(t.Context(), id) },
			"Bounce": func(id string) error { return q.Bounce(t.Context(), id) }, "Hold": func(id string) error { return q.Hold(t.Context(), id) }} {
			if err := op(id); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s(%q) = %v, want fs.ErrNotExist", name, id, err)
			}
		}
	}
}

// TestAdminHold: a held message is not offered, counted in a quota or
// expired until it is released; then it is delivered.
func TestAdminHold(t *testing.T) {
	bb := &bouncetest.Collector{}
	q := openTest(t, Options{Bouncer: bb, MaxAge: time.Hour, Quota: func(string) (int64, int) { return 0, 1 }})
	id := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}, Received: time.Now().Add(-2 * time.Hour)})
	if err := q.Hold(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if err := q.Hold(t.Context(), id); err != nil {
		t.Fatalf("holding a held message: %v", err)
	}
	if ok, _ := q.HasMail(t.Context(), []string{"a.example"}); ok {
		t.Error("HasMail offers a held message")
	}
	b, _ := q.Claim(t.Context(), []string{"a.example"})
	if m, err := b.Next(t.Context()); err != io.EOF {
		t.Errorf("Next on a held message = %v, %v; want io.EOF", m, err)
	}
	b.Close()
	if n, err := q.Expire(t.Context()); n != 0 || err != nil {
		t.Errorf("Expire = %d, %v; a held message does not expire", n, err)
	}
	if m, err := q.Message(t.Context(), id); err != nil || !m.Held {
		t.Errorf("Message = %+v, %v; want held", m, err)
	}
	if st, _ := q.QueueStats(t.Context()); len(st) != 0 {
		t.Errorf("QueueStats counts a held message: %+v", st)
	}
	// The quota of one message counts only what is offered.
	other := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"v@a.example"}})
	if err := q.Delete(t.Context(), other); err != nil {
		t.Fatal(err)
	}

	if err := q.Release(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if err := q.Release(t.Context(), id); err != nil {
		t.Fatalf("releasing a message not held: %v", err)
	}
	if ok, _ := q.HasMail(t.Context(), []string{"a.example"}); !ok {
		t.Error("a released message is not offered")
	}
	// Released, it is old: it expires now.
	if n, err := q.Expire(t.Context()); n != 1 || err != nil {
		t.Errorf("Expire after Release = %d, %v; want 1", n, err)
	}
}

// TestAdminHoldWhileDelivering: a session delivering a message when it
// is held finishes, and what it does not deliver stays queued, and held.
func TestAdminHoldWhileDelivering(t *testing.T) {
	q := openTest(t, Options{})
	id := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example", "v@a.example"}})
	b, _ := q.Claim(t.Context(), []string{"a.example"})
	defer b.Close()
	m, err := b.Next(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Hold(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if err := m.Complete(t.Context(), []odmr.RecipientResult{{Recipient: "u@a.example"},
		{Recipient: "v@a.example", Err: &odmr.Error{Code: 451, Message: "later"}}}); err != nil {
		t.Fatalf("Complete of a message held meanwhile: %v", err)
	}
	qm, err := q.Message(t.Context(), id)
	if err != nil || !qm.Held || len(qm.Envelope.To) != 1 || qm.Envelope.To[0] != "v@a.example" {
		t.Fatalf("Message = %+v, %v; want v@a.example, held", qm, err)
	}
	if ok, _ := q.HasMail(t.Context(), []string{"a.example"}); ok {
		t.Error("HasMail offers the rest of a held message")
	}
}

// TestAdminMessagesMarksDelivering: a message whose recipients a session
// has leased is listed, marked Delivering, until the lease ends or lapses.
func TestAdminMessagesMarksDelivering(t *testing.T) {
	q := openTest(t, Options{})
	a := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example", "v@b.example"}})
	b := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"w@b.example"}})
	delivering := func() map[string]bool {
		t.Helper()
		msgs, err := q.Messages(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		got := make(map[string]bool)
		for _, m := range msgs {
			got[m.Envelope.ID] = m.Delivering
			one, err := q.Message(t.Context(), m.Envelope.ID)
			if err != nil || one.Delivering != m.Delivering {
				t.Errorf("Message(%s).Delivering = %v, %v; Messages says %v", m.Envelope.ID, one.Delivering, err, m.Delivering)
			}
		}
		return got
	}
	if got := delivering(); len(got) != 2 || got[a] || got[b] {
		t.Fatalf("idle queue: Delivering %v, want both false", got)
	}
	bt, err := q.Claim(t.Context(), []string{"a.example"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bt.Next(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := delivering(); len(got) != 2 || !got[a] || got[b] {
		t.Errorf("under a lease on %s: Delivering %v", a, got)
	}
	lapseLeases(t, q)
	if got := delivering(); got[a] {
		t.Errorf("a lapsed lease still marks %s", a)
	}
	bt.Close()
	if got := delivering(); len(got) != 2 || got[a] || got[b] {
		t.Errorf("after the batch: Delivering %v, want both false", got)
	}
}

// TestAdminBusy: Delete and Bounce refuse a message under a live lease
// and change nothing; once the lease lapses they go ahead, and the late
// holder's Complete records nothing.
func TestAdminBusy(t *testing.T) {
	q := openTest(t, Options{})
	id := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}})
	b, _ := q.Claim(t.Context(), []string{"a.example"})
	defer b.Close()
	m, err := b.Next(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Delete(t.Context(), id); !errors.Is(err, queueadmin.ErrBusy) {
		t.Errorf("Delete under a lease = %v, want ErrMessageBusy", err)
	}
	// A node killed mid-delivery leaves its lease: the operator learns
	// when it lapses.
	if _, err := q.pool.Exec(t.Context(), "UPDATE odmr_pending SET lease_until = '2999-01-02 03:04:05+00'"); err != nil {
		t.Fatal(err)
	}
	if err := q.Delete(t.Context(), id); err == nil || !strings.Contains(err.Error(), "after 2999-01-02T03:04:05Z") {
		t.Errorf("Delete under a lease = %v, want when the lease lapses", err)
	}
	if err := q.Bounce(t.Context(), id); !errors.Is(err, queueadmin.ErrBusy) {
		t.Errorf("Bounce under a lease = %v, want ErrMessageBusy", err)
	}
	if _, err := q.Message(t.Context(), id); err != nil {
		t.Fatalf("the message went after a refusal: %v", err)
	}
	lapseLeases(t, q)
	if err := q.Delete(t.Context(), id); err != nil {
		t.Fatalf("Delete after the lease lapsed: %v", err)
	}
	if err := m.Complete(t.Context(), []odmr.RecipientResult{{Recipient: "u@a.example"}}); err == nil {
		t.Error("Complete of a deleted message succeeded")
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 0 {
		t.Errorf("%d messages left after Delete", n)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_body"); n != 0 {
		t.Errorf("%d body chunks left after Delete", n)
	}
}

// TestAdminBounce: the recipients still queued fail with 5.0.0, held or
// not, and the sender gets one DSN saying the operator returned it; the
// recipients that asked for no DSN and a null sender get none.
func TestAdminBounce(t *testing.T) {
	bb := &bouncetest.Collector{}
	q := openTest(t, Options{Bouncer: bb, Hostname: "mx.test"})
	id := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example", "v@b.example", "quiet@a.example"},
		DSN: &odmr.DSN{Recipients: map[string]odmr.RecipientDSN{"quiet@a.example": {Notify: []odmr.DSNNotify{odmr.NotifyNever}}}}})
	null := enqueue(t, q, odmr.Envelope{From: "", To: []string{"w@a.example"}})
	deliverAll(t, q, func(r string) odmr.RecipientResult {
		return odmr.RecipientResult{Recipient: r, Err: &odmr.Error{Code: 452, EnhancedCode: odmr.EnhancedCode{4, 2, 2}, Message: "mailbox full"}}
	}, "a.example")
	if err := q.Hold(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{id, null} {
		if err := q.Bounce(t.Context(), id); err != nil {
			t.Fatalf("Bounce(%s): %v", id, err)
		}
	}
	if n, err := q.FlushBounces(t.Context()); n != 1 || err != nil {
		t.Fatalf("FlushBounces = %d, %v; want 1", n, err)
	}
	envs, dsns := bb.All()
	if envs[0].To[0] != "s@sender.example" {
		t.Errorf("DSN to %v", envs[0].To)
	}
	for _, want := range []string{"Final-Recipient: rfc822; u@a.example", "Final-Recipient: rfc822; v@b.example",
		"Status: 5.0.0", "administrator returned", "Diagnostic-Code: smtp; 452 4.2.2 mailbox full"} {
		if !strings.Contains(dsns[0], want) {
			t.Errorf("the DSN lacks %q:\n%s", want, dsns[0])
		}
	}
	if strings.Contains(dsns[0], "quiet@") {
		t.Errorf("the DSN reports a recipient with NOTIFY=NEVER:\n%s", dsns[0])
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 0 {
		t.Errorf("%d messages left after Bounce", n)
	}
	if _, err := q.Message(t.Context(), id); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Message of a bounced message = %v", err)
	}
}
