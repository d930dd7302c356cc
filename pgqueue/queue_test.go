package pgqueue

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/bouncetest"
	"github.com/go-odmr/odmr/internal/pgtest"
)

const testBody = "From: s@sender.example\r\nSubject: hi\r\n\r\nhello\r\n"

func enqueue(t *testing.T, q *Queue, env odmr.Envelope) string {
	t.Helper()
	id, err := q.Enqueue(t.Context(), env, strings.NewReader(testBody))
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return id
}

func count(t *testing.T, q *Queue, query string, args ...any) int {
	t.Helper()
	var n int
	if err := q.pool.QueryRow(t.Context(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// deliverAll leases what is queued for domains and completes each
// recipient with result(rcpt).
func deliverAll(t *testing.T, q *Queue, result func(string) odmr.RecipientResult, domains ...string) {
	t.Helper()
	b, err := q.Claim(t.Context(), domains)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for {
		m, err := b.Next(t.Context())
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		var rs []odmr.RecipientResult
		for _, r := range m.Envelope().To {
			rs = append(rs, result(r))
		}
		if err := m.Complete(t.Context(), rs); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMigrateConcurrent starts several nodes on one new database at once:
// each migration is applied once and every node opens.
func TestMigrateConcurrent(t *testing.T) {
	dsn := pgtest.DSN(t)
	const nodes = 6
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	for range nodes {
		wg.Go(func() {
			q, err := Open(t.Context(), dsn, Options{MaintenanceInterval: -1})
			if err != nil {
				errs <- err
				return
			}
			q.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Open: %v", err)
	}
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// Once more: nothing to do.
	if err := Migrate(t.Context(), pool); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	var n, maxV int
	if err := pool.QueryRow(t.Context(), "SELECT count(*), max(version) FROM odmr_schema").Scan(&n, &maxV); err != nil {
		t.Fatal(err)
	}
	if n != SchemaVersion || maxV != SchemaVersion {
		t.Fatalf("odmr_schema has %d rows up to version %d, want %d", n, maxV, SchemaVersion)
	}
	// A database migrated by a newer program is refused.
	if _, err := pool.Exec(t.Context(), "INSERT INTO odmr_schema (version) VALUES ($1)", SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	if err := Migrate(t.Context(), pool); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Migrate on a newer schema: %v, want an error", err)
	}
}

// TestQuota checks both limits: the message count before the body is
// read, the bytes as it arrives; nothing of a refused message stays.
func TestQuota(t *testing.T) {
	q := openTest(t, Options{Quota: func(d string) (int64, int) {
		switch d {
		case "few.example":
			return 0, 2
		case "small.example":
			return 1000, 0
		}
		return 0, 0
	}})
	for range 2 {
		enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@few.example"}})
	}
	_, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"u@other.example", "u@few.example"}}, strings.NewReader(testBody))
	var e *odmr.Error
	if !errors.As(err, &e) || e.Code != 452 || e.EnhancedCode != (odmr.EnhancedCode{4, 2, 2}) {
		t.Fatalf("third message to few.example: %v, want a 452 4.2.2", err)
	}
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@small.example"}})
	_, err = q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"u@small.example"}}, strings.NewReader(strings.Repeat("x", 1000)))
	if !errors.As(err, &e) || e.Code != 452 {
		t.Fatalf("a message over small.example's bytes: %v, want a 452", err)
	}
	if ok, _ := q.HasMail(t.Context(), []string{"other.example"}); ok {
		t.Error("a refused message was queued for other.example")
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 3 {
		t.Errorf("%d messages stored, want 3", n)
	}
	// Delivering makes room.
	deliverAll(t, q, func(r string) odmr.RecipientResult { return odmr.RecipientResult{Recipient: r} }, "few.example")
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@few.example"}})
}

type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("connection reset")
	}
	k := min(len(p), r.n)
	for i := range k {
		p[i] = 'x'
	}
	r.n -= k
	return k, nil
}

// TestEnqueueAtomic checks that a body that fails half way leaves nothing
// queued, chunks written included, and that bad addresses are refused.
func TestEnqueueAtomic(t *testing.T) {
	q := openTest(t, Options{ChunkSize: 1024})
	_, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}}, &failingReader{n: 10000})
	if err == nil {
		t.Fatal("Enqueue with a failing body succeeded")
	}
	for _, table := range []string{"odmr_messages", "odmr_recipients", "odmr_pending", "odmr_body"} {
		if n := count(t, q, "SELECT count(*) FROM "+table); n != 0 {
			t.Errorf("%s has %d rows after a failed Enqueue", table, n)
		}
	}
	for _, env := range []odmr.Envelope{
		{From: "s@sender.example\r\nRCPT TO:<x@y>", To: []string{"u@a.example"}},
		{From: "s@sender.example", To: []string{"u@a.example\n"}},
		{From: "s@sender.example", To: []string{""}},
	} {
		var e *odmr.Error
		if _, err := q.Enqueue(t.Context(), env, strings.NewReader(testBody)); !errors.As(err, &e) || e.Code != 501 {
			t.Errorf("Enqueue(%q, %q): %v, want a 501", env.From, env.To, err)
		}
	}
	if _, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example"}, strings.NewReader(testBody)); err == nil {
		t.Error("Enqueue without recipients succeeded")
	}
}

// TestDomainCase checks that domains match without regard to case or a
// trailing dot, as ATRN's do.
func TestDomainCase(t *testing.T) {
	q := openTest(t, Options{})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@A.Example"}})
	if ok, err := q.HasMail(t.Context(), []string{"a.EXAMPLE."}); err != nil || !ok {
		t.Fatalf("HasMail(a.EXAMPLE.) = %v, %v", ok, err)
	}
	b, _ := q.Claim(t.Context(), []string{"A.EXAMPLE"})
	defer b.Close()
	if m, err := b.Next(t.Context()); err != nil || m.Envelope().To[0] != "u@A.Example" {
		t.Fatalf("Next: %v", err)
	}
}

// TestFailureDSN checks the reports of permanent failures: one DSN per
// failed delivery, sent by FlushBounces, none when NOTIFY says NEVER or
// the sender is null.
func TestFailureDSN(t *testing.T) {
	bb := &bouncetest.Collector{}
	q := openTest(t, Options{Bouncer: bb, Hostname: "mx.test"})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"bad@a.example", "good@a.example", "quiet@a.example"},
		DSN: &odmr.DSN{EnvID: "E1", Recipients: map[string]odmr.RecipientDSN{
			"quiet@a.example": {Notify: []odmr.DSNNotify{odmr.NotifyNever}},
			"bad@a.example":   {ORcptType: "rfc822", ORcpt: "orig@a.example"},
		}}})
	enqueue(t, q, odmr.Envelope{From: "", To: []string{"bad@a.example"}})
	perm := &odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "no such user"}
	deliverAll(t, q, func(r string) odmr.RecipientResult {
		if r == "good@a.example" {
			return odmr.RecipientResult{Recipient: r}
		}
		return odmr.RecipientResult{Recipient: r, Err: perm}
	}, "a.example")
	if pending, _, _ := q.PendingBounces(t.Context()); pending != 1 {
		t.Fatalf("%d DSNs pending, want 1", pending)
	}
	if n, err := q.FlushBounces(t.Context()); n != 1 || err != nil {
		t.Fatalf("FlushBounces = %d, %v", n, err)
	}
	envs, dsns := bb.All()
	if len(envs) != 1 || envs[0].From != "" || envs[0].To[0] != "s@sender.example" {
		t.Fatalf("DSN envelopes %+v", envs)
	}
	for _, want := range []string{"Final-Recipient: rfc822; bad@a.example", "Status: 5.1.1", "Diagnostic-Code: smtp; 550 5.1.1 no such user",
		"Original-Envelope-Id: E1", "Original-Recipient: rfc822;orig@a.example", "Reporting-MTA: dns; mx.test", "Subject: hi"} {
		if !strings.Contains(dsns[0], want) {
			t.Errorf("the DSN lacks %q:\n%s", want, dsns[0])
		}
	}
	if strings.Contains(dsns[0], "quiet@") || strings.Contains(dsns[0], "good@") {
		t.Errorf("the DSN reports a recipient it should not:\n%s", dsns[0])
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 0 {
		t.Errorf("%d messages left after every recipient was settled", n)
	}
	if pending, _, _ := q.PendingBounces(t.Context()); pending != 0 {
		t.Errorf("%d DSNs pending after the flush", pending)
	}
}

// TestRelayedDSN: a recipient that asked for NOTIFY=SUCCESS and was
// accepted by a receiver without DSN gets a "relayed" report.
func TestRelayedDSN(t *testing.T) {
	bb := &bouncetest.Collector{}
	q := openTest(t, Options{Bouncer: bb})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"},
		DSN: &odmr.DSN{Recipients: map[string]odmr.RecipientDSN{"u@a.example": {Notify: []odmr.DSNNotify{odmr.NotifySuccess}}}}})
	deliverAll(t, q, func(r string) odmr.RecipientResult { return odmr.RecipientResult{Recipient: r, NoDSN: true} }, "a.example")
	q.FlushBounces(t.Context())
	_, dsns := bb.All()
	if len(dsns) != 1 || !strings.Contains(dsns[0], "Action: relayed") {
		t.Fatalf("DSNs %q, want one saying relayed", dsns)
	}
}

// TestExpire checks that mail older than MaxAge fails with 4.4.7 and a
// DSN, whether Expire or Next finds it, and that leased mail is left to
// its session.
func TestExpire(t *testing.T) {
	bb := &bouncetest.Collector{}
	q := openTest(t, Options{Bouncer: bb, MaxAge: time.Hour})
	old := time.Now().Add(-2 * time.Hour)
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}, Received: old})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@b.example"}, Received: old})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@c.example"}})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"v@a.example"}})

	// A session holds c.example's, which gets old during the delivery.
	bc, _ := q.Claim(t.Context(), []string{"c.example"})
	defer bc.Close()
	mc, err := bc.Next(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.pool.Exec(t.Context(), "UPDATE odmr_messages SET received = $1 WHERE id = $2", old, mc.Envelope().ID); err != nil {
		t.Fatal(err)
	}
	if n, err := q.Expire(t.Context()); n != 2 || err != nil {
		t.Fatalf("Expire = %d, %v; want 2", n, err)
	}
	if ok, _ := q.HasMail(t.Context(), []string{"b.example"}); ok {
		t.Error("b.example still has mail after it expired")
	}
	if ok, _ := q.HasMail(t.Context(), []string{"a.example"}); !ok {
		t.Error("a.example's new message expired too")
	}
	// Its session's temporary failure expires it.
	if err := mc.Complete(t.Context(), []odmr.RecipientResult{{Recipient: "u@c.example", Err: &odmr.Error{Code: 421, Message: "bye"}}}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := q.HasMail(t.Context(), []string{"c.example"}); ok {
		t.Error("c.example's message stayed queued after a failure past MaxAge")
	}
	q.FlushBounces(t.Context())
	_, dsns := bb.All()
	if len(dsns) != 3 {
		t.Fatalf("%d DSNs, want 3", len(dsns))
	}
	for _, d := range dsns {
		if !strings.Contains(d, "Status: 4.4.7") {
			t.Errorf("a DSN without status 4.4.7:\n%s", d)
		}
	}

	// Next expires an old message instead of returning it.
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"w@a.example"}, Received: old})
	b, _ := q.Claim(t.Context(), []string{"a.example"})
	defer b.Close()
	var got []string
	for {
		m, err := b.Next(t.Context())
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.Envelope().To...)
	}
	if len(got) != 1 || got[0] != "v@a.example" {
		t.Fatalf("Next gave %v, want only v@a.example", got)
	}
}

// TestBouncerFailures: a temporary failure keeps the DSN for later, a
// permanent one sets it aside as dead.
func TestBouncerFailures(t *testing.T) {
	bb := &bouncetest.Collector{}
	bb.Fail(errors.New("smarthost down"))
	q := openTest(t, Options{Bouncer: bb})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}})
	deliverAll(t, q, func(r string) odmr.RecipientResult {
		return odmr.RecipientResult{Recipient: r, Err: &odmr.Error{Code: 550, Message: "no"}}
	}, "a.example")
	if _, err := q.FlushBounces(t.Context()); err == nil {
		t.Fatal("FlushBounces with a failing Bouncer succeeded")
	}
	if p, d, _ := q.PendingBounces(t.Context()); p != 1 || d != 0 {
		t.Fatalf("pending %d, dead %d; want 1, 0", p, d)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_reports WHERE attempts = 1 AND next_attempt > now() AND last_error LIKE '%smarthost down%'"); n != 1 {
		t.Fatal("the failed attempt was not recorded with a delay")
	}
	// Not due yet: the background flush leaves it.
	if n, _ := q.flush(t.Context(), true); n != 0 {
		t.Fatalf("a DSN not due was sent")
	}
	bb.Fail(&odmr.Error{Code: 550, Message: "no such sender"})
	q.FlushBounces(t.Context())
	if p, d, _ := q.PendingBounces(t.Context()); p != 0 || d != 1 {
		t.Fatalf("pending %d, dead %d; want 0, 1", p, d)
	}
}

// TestBodyStreaming checks that a body is read one chunk per query with
// no connection held in between, and that reading renews the lease.
func TestBodyStreaming(t *testing.T) {
	const chunk = 4096
	q := openTest(t, Options{ChunkSize: chunk, LeaseTTL: time.Hour})
	body := bytes.Repeat([]byte("0123456789abcde\n"), 3*chunk/16+7)
	if _, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}}, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	want := bytes.ReplaceAll(body, []byte("\n"), []byte("\r\n"))
	if n := count(t, q, "SELECT count(*) FROM odmr_body"); n != (len(want)+chunk-1)/chunk {
		t.Errorf("%d chunks stored for %d bytes", n, len(want))
	}
	b, _ := q.Claim(t.Context(), []string{"a.example"})
	defer b.Close()
	m, err := b.Next(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	rc, err := m.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	// As if a quarter of LeaseTTL had passed since the lease was taken.
	m.(*message).renewed = time.Time{}
	if _, err := q.pool.Exec(t.Context(), "UPDATE odmr_pending SET lease_until = now() + interval '1 minute'"); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	buf := make([]byte, 1000)
	for {
		n, err := rc.Read(buf)
		got.Write(buf[:n])
		if acq := q.pool.Stat().AcquiredConns(); acq != 0 {
			t.Fatalf("%d connections held between reads of the body", acq)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("body of %d bytes differs from the %d stored", got.Len(), len(want))
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_pending WHERE lease_until > now() + interval '30 minutes'"); n != 1 {
		t.Fatal("reading the body did not renew the lease")
	}
}

// TestClosedQueue: a closed queue answers with an error, not a panic.
func TestClosedQueue(t *testing.T) {
	q := openTest(t, Options{})
	q.Close()
	if _, err := q.HasMail(t.Context(), []string{"a.example"}); err == nil {
		t.Error("HasMail on a closed queue succeeded")
	}
	if _, err := q.Enqueue(t.Context(), odmr.Envelope{To: []string{"u@a.example"}}, strings.NewReader("x")); err == nil {
		t.Error("Enqueue on a closed queue succeeded")
	}
	if err := q.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
}

// TestInspect checks List and Inspect, and that Inspect creates nothing in
// a database without a queue.
func TestInspect(t *testing.T) {
	if _, err := Inspect(t.Context(), pgtest.DSN(t)); err == nil || !strings.Contains(err.Error(), "holds no queue") {
		t.Fatalf("Inspect on an empty database: %v", err)
	}
	q := openTest(t, Options{})
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example", "u@b.example"}})
	held := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"v@a.example"}})
	list, err := q.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Domain != "a.example" || list[0].Messages != 2 || list[1].Messages != 1 ||
		list[0].Bytes != 2*int64(len(testBody)) || list[0].Oldest.IsZero() {
		t.Fatalf("List = %+v", list)
	}
	inv, err := Inspect(t.Context(), q.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Messages != 2 || inv.Bytes != 2*int64(len(testBody)) || len(inv.Domains) != 2 || inv.PendingBounces != 0 || inv.Held != 0 {
		t.Fatalf("Inspect = %+v", inv)
	}
	// A held message is counted apart.
	if err := q.Hold(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	inv, err = Inspect(t.Context(), q.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Messages != 1 || inv.Held != 1 || len(inv.Domains) != 2 || inv.Domains[0].Messages != 1 {
		t.Fatalf("Inspect with a message held = %+v", inv)
	}
}

// TestStalePending: a pending row with no recipient behind it (which this
// package's transactions never leave, but a hand edit could) is cleared
// by Next and by Expire, which must not loop on it.
func TestStalePending(t *testing.T) {
	q := openTest(t, Options{MaxAge: time.Hour})
	id := enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}})
	if _, err := q.pool.Exec(t.Context(), "INSERT INTO odmr_pending (domain, message_id) VALUES ('z.example', $1), ('y.example', $1)", id); err != nil {
		t.Fatal(err)
	}
	b, _ := q.Claim(t.Context(), []string{"z.example"})
	if m, err := b.Next(t.Context()); err != io.EOF {
		t.Fatalf("Next on a stale row: %v, %v", m, err)
	}
	b.Close()
	if ok, _ := q.HasMail(t.Context(), []string{"z.example"}); ok {
		t.Error("Next left the stale row")
	}
	if _, err := q.pool.Exec(t.Context(), "UPDATE odmr_messages SET received = now() - interval '2 hours'"); err != nil {
		t.Fatal(err)
	}
	if n, err := q.Expire(t.Context()); n != 1 || err != nil {
		t.Fatalf("Expire = %d, %v; want 1", n, err)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_pending"); n != 0 {
		t.Errorf("%d pending rows left after Expire", n)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 0 {
		t.Errorf("%d messages left after Expire", n)
	}
}

// connCheckingReader is a message body that records, at each read,
// whether the queue holds a connection of its pool.
type connCheckingReader struct {
	q    *Queue
	r    io.Reader
	held int32 // the most connections seen held during a read
}

func (c *connCheckingReader) Read(p []byte) (int, error) {
	c.held = max(c.held, c.q.pool.Stat().AcquiredConns())
	return c.r.Read(p[:min(len(p), 100)])
}

// TestEnqueueHoldsNoConnectionWhileReading: Enqueue reads the body before
// it takes a connection, so that SMTP clients that send slowly, or stop
// in the middle of DATA, cannot take the whole pool (4 connections on
// two CPUs) and stall every node's enqueuing and delivery; bodies below
// and above ChunkSize, the latter through a temporary file. The quota's
// query before reading gives its connection back before the first read.
func TestEnqueueHoldsNoConnectionWhileReading(t *testing.T) {
	const chunk = 1024
	q := openTest(t, Options{ChunkSize: chunk, Quota: func(string) (int64, int) { return 1 << 30, 1000 }})
	for _, size := range []int{10, chunk, chunk + 1, 5*chunk + 3} {
		body := strings.Repeat("x", size-2) + "\r\n"
		r := &connCheckingReader{q: q, r: strings.NewReader(body)}
		id, err := q.Enqueue(t.Context(), odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}}, r)
		if err != nil {
			t.Fatal(err)
		}
		if r.held != 0 {
			t.Errorf("body of %d bytes: %d connections held while it was read", size, r.held)
		}
		var got []byte
		if err := q.pool.QueryRow(t.Context(), "SELECT string_agg(data, ''::bytea ORDER BY n) FROM odmr_body WHERE message_id = $1", id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if string(got) != body {
			t.Errorf("body of %d bytes stored as %d bytes", size, len(got))
		}
	}
}

// TestRetriedAfterRestart: when the database ends the pool's
// connections in the middle of a session (a restart), recording a
// delivery and releasing a lease fail; the queue tries both again in the
// background, so that the delivered message is not delivered again and
// the other is free once the database is back, not only when the leases
// lapse (15 minutes by default, for every node).
func TestRetriedAfterRestart(t *testing.T) {
	cfg, err := pgxpool.ParseConfig(pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	// Connections are never pinged before use, so that the first use of
	// an ended one fails, as it does within a second of its last use.
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	logged := make(chan string, 10)
	q, err := New(t.Context(), pool, Options{MaintenanceInterval: -1,
		Logger: slog.New(slog.NewTextHandler(logWatch{logged, []string{"results recorded", "lease released"}}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	defer func(d time.Duration) { retryInterval = d }(retryInterval)
	retryInterval = time.Millisecond

	other, err := pgx.Connect(t.Context(), cfg.ConnConfig.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	// restart ends every connection of the pool, as a restart does.
	restart := func() {
		t.Helper()
		if _, err := other.Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
			t.Fatal(err)
		}
	}
	lease := func() (odmr.Batch, odmr.Message) {
		t.Helper()
		b, err := q.Claim(t.Context(), []string{"a.example"})
		if err != nil {
			t.Fatal(err)
		}
		m, err := b.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return b, m
	}

	// A lease released in vain is released later.
	enqueue(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"v@a.example"}})
	b, _ := lease()
	restart()
	if err := b.Close(); err == nil {
		t.Fatal("release over an ended connection succeeded: the test shows nothing")
	}
	if got := <-logged; got != "lease released" {
		t.Fatalf("logged %q", got)
	}

	// Results recorded in vain are recorded later.
	b, m := lease()
	defer b.Close()
	restart()
	if err := m.Complete(t.Context(), []odmr.RecipientResult{{Recipient: "v@a.example"}}); err == nil {
		t.Fatal("Complete over an ended connection succeeded: the test shows nothing")
	}
	if got := <-logged; got != "results recorded" {
		t.Fatalf("logged %q", got)
	}
	if n := count(t, q, "SELECT count(*) FROM odmr_messages"); n != 0 {
		t.Errorf("%d messages left: the delivery was not recorded", n)
	}
}

// logWatch sends on ch each of match that a log record contains.
type logWatch struct {
	ch    chan string
	match []string
}

func (w logWatch) Write(p []byte) (int, error) {
	for _, m := range w.match {
		if strings.Contains(string(p), m) {
			w.ch <- m
		}
	}
	return len(p), nil
}

// TestEnqueueBoundsDatabaseWork: with no connection to be had (here every
// one of the pool is held; a database that stopped answering looks the
// same), Enqueue fails after its own bound even when the caller's context
// has no deadline, as the intake's has not, instead of waiting for ever.
func TestEnqueueBoundsDatabaseWork(t *testing.T) {
	q := openTest(t, Options{QueryTimeout: 200 * time.Millisecond})
	var held []*pgxpool.Conn
	for range q.pool.Config().MaxConns {
		c, err := q.pool.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			c.Release()
		}
	}()
	_, err := q.Enqueue(context.Background(), odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example"}}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Enqueue with no connection to be had: %v, want the deadline exceeded", err)
	}
}
