package pgqueue

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/go-odmr/odmr"
)

// TestSettleReplayed: when the reply to the COMMIT of a delivery's
// results is lost, Complete tries again in the background, and its
// second try must change nothing if the first committed after all: the
// temporary failure is counted once, and the recipients stay free for
// the next session.
func TestSettleReplayed(t *testing.T) {
	q := openTest(t, Options{})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example", "v@a.example", "w@b.example"}})
	b, err := q.Claim(t.Context(), []string{"a.example", "b.example"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	om, err := b.Next(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	m := om.(*message)
	deferred := &odmr.Error{Code: 451, EnhancedCode: odmr.EnhancedCode{4, 3, 0}, Message: "try later"}
	results := []odmr.RecipientResult{
		{Recipient: "u@a.example"},
		{Recipient: "v@a.example", Err: deferred},
		{Recipient: "w@b.example", Err: deferred},
	}
	// The first try commits; the second is the retry of a Complete that
	// did not see the COMMIT's reply.
	if err := m.completeOnce(t.Context(), results); err != nil {
		t.Fatal(err)
	}
	if err := m.completeOnce(t.Context(), results); !errors.Is(err, errLeaseLost) {
		t.Errorf("replayed settle: %v, want errLeaseLost", err)
	}
	if n := count(t, q, "SELECT sum(attempts)::int FROM odmr_recipients WHERE state = 'queued'"); n != 2 {
		t.Errorf("%d attempts counted for the two deferred recipients, want 2", n)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_recipients WHERE state = 'delivered'"); n != 1 {
		t.Errorf("%d recipients delivered, want 1", n)
	}

	// The recipients left are free for the next session.
	b2, err := q.Claim(t.Context(), []string{"a.example", "b.example"})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	om, err = b2.Next(t.Context())
	if err != nil {
		t.Fatalf("Next after the replay: %v", err)
	}
	if to := om.Envelope().To; len(to) != 2 {
		t.Errorf("leased %q after the replay, want v@a.example and w@b.example", to)
	}
}

// TestSettleLogsAfterCommit: what settle records is logged only once its
// transaction commits; one rolled back leaves no "bounce queued" line
// for a bounce that was never queued.
func TestSettleLogsAfterCommit(t *testing.T) {
	var buf bytes.Buffer
	q := openTest(t, Options{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	id := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}})
	tx, n, domains, err := q.lockMessage(t.Context(), id, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.settle(t.Context(), tx, n, domains, nil, nil, settleCancel); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 0 {
		t.Errorf("logged before the commit: %s", buf.String())
	}
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_reports"); n != 0 {
		t.Fatalf("%d reports after a rollback", n)
	}

	// Bounce commits, then logs.
	if err := q.Bounce(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); !strings.Contains(got, "bounce queued") {
		t.Errorf("log after Bounce: %q, want a bounce queued line", got)
	}
}
