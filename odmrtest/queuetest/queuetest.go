// Package queuetest is a test suite for implementations of
// [odmr.QueueSource]: the behaviour the provider relies on, whatever the
// store. Run it from a test of the queue's package:
//
//	func TestQueue(t *testing.T) {
//		queuetest.Run(t, queuetest.Config{
//			New: func(t *testing.T) queuetest.Queue { return newQueue(t) },
//		})
//	}
//
// The suite checks that enqueued mail is visible to HasMail and Claim,
// that each recipient is settled on its own (delivered, failed for good,
// or left queued after a temporary failure or a missing result), that a
// message for several domains is delivered to each separately, that two
// batches never hold the same recipient, that a batch returns a message
// once and releases what it did not complete, that the DSN requests of a
// message are kept, that bodies come back byte for byte, and, when the
// queue's leases can be made to lapse ([Config.ExpireLeases]), that a
// lapsed lease makes the mail deliverable again and that a late Complete
// from the batch that lost it changes nothing (fencing).
package queuetest

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-odmr/odmr"
)

// Queue is a queue under test: a QueueSource the suite can put mail in.
type Queue interface {
	odmr.QueueSource
	// Enqueue queues a message for env.From and env.To with the body read
	// from body, and returns its ID. env.ID may be ignored.
	Enqueue(ctx context.Context, env odmr.Envelope, body io.Reader) (string, error)
}

// Config says how to make the queues under test.
type Config struct {
	// New returns a new, empty queue; the suite calls it once per subtest
	// and never closes it (register any cleanup with t.Cleanup).
	New func(t *testing.T) Queue

	// ExpireLeases, if set, makes every lease held in q lapse now, as if
	// the lease time had passed without a word from its holder (a node
	// that died). nil skips the tests of lease expiry and fencing.
	ExpireLeases func(t *testing.T, q Queue)

	// Reopen, if set, returns another handle on q's store, as another
	// process or node sharing it would open it; the suite spreads its
	// concurrent sessions over q and such handles. nil means q alone.
	Reopen func(t *testing.T, q Queue) Queue
}

// Run runs the suite, each test in a subtest with a queue of its own.
func Run(t *testing.T, c Config) {
	t.Helper()
	if c.New == nil {
		t.Fatal("queuetest: Config.New is nil")
	}
	tests := []struct {
		name string
		fn   func(*testing.T, Config)
	}{
		{"EnqueueVisible", testEnqueueVisible},
		{"Body", testBody},
		{"BodyType", testBodyType},
		{"Delivered", testDelivered},
		{"PerRecipient", testPerRecipient},
		{"MissingResult", testMissingResult},
		{"DuplicateRecipients", testDuplicateRecipients},
		{"MultiDomain", testMultiDomain},
		{"ArrivalOrder", testArrivalOrder},
		{"OncePerBatch", testOncePerBatch},
		{"CloseReleases", testCloseReleases},
		{"CompleteTwice", testCompleteTwice},
		{"NewMailDuringBatch", testNewMailDuringBatch},
		{"DSNKept", testDSNKept},
		{"TwoConsumers", testTwoConsumers},
		{"ManyConsumers", testManyConsumers},
		{"CanceledNext", testCanceledNext},
		{"LeaseExpiry", testLeaseExpiry},
		{"Fencing", testFencing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, c) })
	}
}

const body = "From: a@sender.example\r\nSubject: test\r\n\r\nhello\r\n"

func ctxOf(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func enqueue(t *testing.T, q Queue, from string, to ...string) string {
	t.Helper()
	return enqueueEnv(t, q, odmr.Envelope{From: from, To: to}, body)
}

func enqueueEnv(t *testing.T, q Queue, env odmr.Envelope, b string) string {
	t.Helper()
	id, err := q.Enqueue(ctxOf(t), env, strings.NewReader(b))
	if err != nil {
		t.Fatalf("Enqueue(%v): %v", env.To, err)
	}
	return id
}

func hasMail(t *testing.T, q Queue, domains ...string) bool {
	t.Helper()
	ok, err := q.HasMail(ctxOf(t), domains)
	if err != nil {
		t.Fatalf("HasMail(%v): %v", domains, err)
	}
	return ok
}

func claim(t *testing.T, q Queue, domains ...string) odmr.Batch {
	t.Helper()
	b, err := q.Claim(ctxOf(t), domains)
	if err != nil {
		t.Fatalf("Claim(%v): %v", domains, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// next returns the next message of b, or nil at io.EOF.
func next(t *testing.T, b odmr.Batch) odmr.Message {
	t.Helper()
	m, err := b.Next(ctxOf(t))
	if err == io.EOF {
		return nil
	}
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return m
}

// drain returns the messages b has left.
func drain(t *testing.T, b odmr.Batch) []odmr.Message {
	t.Helper()
	var ms []odmr.Message
	for m := next(t, b); m != nil; m = next(t, b) {
		ms = append(ms, m)
	}
	return ms
}

func complete(t *testing.T, m odmr.Message, results ...odmr.RecipientResult) {
	t.Helper()
	if err := m.Complete(ctxOf(t), results); err != nil {
		t.Fatalf("Complete: %v", err)
	}
}

// allOK completes m with every recipient delivered.
func allOK(t *testing.T, m odmr.Message) {
	t.Helper()
	var rs []odmr.RecipientResult
	for _, r := range m.Envelope().To {
		rs = append(rs, odmr.RecipientResult{Recipient: r})
	}
	complete(t, m, rs...)
}

func readBody(t *testing.T, m odmr.Message) string {
	t.Helper()
	rc, err := m.Open()
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return string(b)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func wantTo(t *testing.T, m odmr.Message, want ...string) {
	t.Helper()
	if got := sorted(m.Envelope().To); !slices.Equal(got, sorted(want)) {
		t.Fatalf("Envelope().To = %v, want %v", got, sorted(want))
	}
}

var (
	errTemp = &odmr.Error{Code: 451, EnhancedCode: odmr.EnhancedCode{4, 3, 0}, Message: "try later"}
	errPerm = &odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "no such user"}
)

// Enqueued mail is seen by HasMail for its domain only, and comes back
// from Claim with its envelope and body.
func testEnqueueVisible(t *testing.T, c Config) {
	q := c.New(t)
	if hasMail(t, q, "a.example") {
		t.Fatal("HasMail on an empty queue = true")
	}
	before := time.Now().Add(-time.Minute)
	enqueue(t, q, "s@sender.example", "u@a.example")
	if !hasMail(t, q, "a.example") {
		t.Fatal("HasMail(a.example) = false after Enqueue")
	}
	if !hasMail(t, q, "b.example", "a.example") {
		t.Fatal("HasMail(b.example, a.example) = false after Enqueue")
	}
	if hasMail(t, q, "b.example") {
		t.Fatal("HasMail(b.example) = true with mail only for a.example")
	}
	if m := next(t, claim(t, q, "b.example")); m != nil {
		t.Fatalf("Claim(b.example) returned a message for %v", m.Envelope().To)
	}
	m := next(t, claim(t, q, "a.example"))
	if m == nil {
		t.Fatal("Claim(a.example): io.EOF, want the message")
	}
	env := m.Envelope()
	if env.From != "s@sender.example" {
		t.Errorf("From = %q", env.From)
	}
	wantTo(t, m, "u@a.example")
	if env.ID == "" {
		t.Error("ID is empty")
	}
	if env.Received.Before(before) || env.Received.After(time.Now().Add(time.Minute)) {
		t.Errorf("Received = %v, want about now", env.Received)
	}
	if env.Size != int64(len(body)) {
		t.Errorf("Size = %d, want %d", env.Size, len(body))
	}
	if got := readBody(t, m); got != body {
		t.Errorf("body = %q, want %q", got, body)
	}
}

// Bodies come back byte for byte: large ones, 8-bit ones, and those with
// bare LF turned into CRLF.
func testBody(t *testing.T, c Config) {
	q := c.New(t)
	var big strings.Builder
	big.WriteString("Subject: big\r\n\r\n")
	for i := 0; big.Len() < 1<<20+12345; i++ {
		fmt.Fprintf(&big, "line %d of a long message, with some 8-bit text: \xc3\xa9t\xc3\xa9\r\n", i)
	}
	cases := []struct{ in, want string }{
		{big.String(), big.String()},
		{"Subject: lf\n\nbare\nline feeds\n", "Subject: lf\r\n\r\nbare\r\nline feeds\r\n"},
		{"Subject: tiny\r\n\r\n", "Subject: tiny\r\n\r\n"},
	}
	for i, tc := range cases {
		enqueueEnv(t, q, odmr.Envelope{From: "s@sender.example", To: []string{fmt.Sprintf("u%d@a.example", i)}}, tc.in)
	}
	got := map[string]string{}
	for _, m := range drain(t, claim(t, q, "a.example")) {
		got[m.Envelope().To[0]] = readBody(t, m)
		if m.Envelope().Size != int64(len(got[m.Envelope().To[0]])) {
			t.Errorf("%s: Size = %d, body has %d bytes", m.Envelope().To[0], m.Envelope().Size, len(got[m.Envelope().To[0]]))
		}
		allOK(t, m)
	}
	for i, tc := range cases {
		to := fmt.Sprintf("u%d@a.example", i)
		if got[to] != tc.want {
			t.Errorf("%s: body of %d bytes differs from the %d bytes expected", to, len(got[to]), len(tc.want))
		}
	}
}

// The content decides BODY, not the declaration (but for BINARYMIME); a
// non-ASCII address sets UTF8; a Received time given is kept.
func testBodyType(t *testing.T, c Config) {
	q := c.New(t)
	received := time.Now().Add(-time.Hour).Truncate(time.Second)
	cases := []struct {
		env      odmr.Envelope
		body     string
		wantBody odmr.BodyType
		wantUTF8 bool
	}{
		{odmr.Envelope{From: "s@sender.example", To: []string{"u0@a.example"}, Body: odmr.Body8BitMIME, Received: received}, body, "", false},
		{odmr.Envelope{From: "s@sender.example", To: []string{"u1@a.example"}}, "Subject: caf\xc3\xa9\r\n\r\n\xc3\xa9\r\n", odmr.Body8BitMIME, false},
		{odmr.Envelope{From: "s@sender.example", To: []string{"u2@a.example"}, Body: odmr.BodyBinaryMIME}, body, odmr.BodyBinaryMIME, false},
		{odmr.Envelope{From: "s@sender.example", To: []string{"j\u00f6rg@a.example"}}, body, "", true},
	}
	for _, tc := range cases {
		enqueueEnv(t, q, tc.env, tc.body)
	}
	ms := drain(t, claim(t, q, "a.example"))
	if len(ms) != len(cases) {
		t.Fatalf("%d messages, want %d", len(ms), len(cases))
	}
	for i, m := range ms {
		env, tc := m.Envelope(), cases[i]
		if env.Body != tc.wantBody || env.UTF8 != tc.wantUTF8 {
			t.Errorf("%s: Body %q, UTF8 %v; want %q, %v", env.To[0], env.Body, env.UTF8, tc.wantBody, tc.wantUTF8)
		}
	}
	if got := ms[0].Envelope().Received; !got.Equal(received) {
		t.Errorf("Received = %v, want %v as given", got, received)
	}
}

// A message whose recipients are all delivered leaves the queue.
func testDelivered(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example", "v@a.example")
	m := next(t, claim(t, q, "a.example"))
	wantTo(t, m, "u@a.example", "v@a.example")
	allOK(t, m)
	if hasMail(t, q, "a.example") {
		t.Fatal("HasMail = true after every recipient was delivered")
	}
	if m := next(t, claim(t, q, "a.example")); m != nil {
		t.Fatalf("a new batch got %v after delivery", m.Envelope().To)
	}
}

// Each recipient is settled on its own: delivered and permanently failed
// ones leave the queue, a temporary failure stays.
func testPerRecipient(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "ok@a.example", "perm@a.example", "temp@a.example")
	m := next(t, claim(t, q, "a.example"))
	complete(t, m,
		odmr.RecipientResult{Recipient: "ok@a.example"},
		odmr.RecipientResult{Recipient: "perm@a.example", Err: errPerm},
		odmr.RecipientResult{Recipient: "temp@a.example", Err: errTemp})
	if !hasMail(t, q, "a.example") {
		t.Fatal("HasMail = false with a recipient that failed temporarily")
	}
	m = next(t, claim(t, q, "a.example"))
	if m == nil {
		t.Fatal("the temporarily failed recipient was not queued again")
	}
	wantTo(t, m, "temp@a.example")
	allOK(t, m)
	if hasMail(t, q, "a.example") {
		t.Fatal("HasMail = true after the last recipient was delivered")
	}
}

// A recipient Complete says nothing about stays queued.
func testMissingResult(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example", "v@a.example")
	m := next(t, claim(t, q, "a.example"))
	complete(t, m, odmr.RecipientResult{Recipient: "u@a.example"})
	m = next(t, claim(t, q, "a.example"))
	if m == nil {
		t.Fatal("the recipient without a result was dropped")
	}
	wantTo(t, m, "v@a.example")
}

// A recipient given twice is queued, and delivered, once.
func testDuplicateRecipients(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example", "v@a.example", "u@a.example")
	m := next(t, claim(t, q, "a.example"))
	wantTo(t, m, "u@a.example", "v@a.example")
	allOK(t, m)
	if hasMail(t, q, "a.example") {
		t.Fatal("HasMail = true after every recipient was delivered")
	}
}

// A message for several domains is delivered to each domain's batch
// separately, and at the same time.
func testMultiDomain(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example", "w@b.example", "v@a.example")
	ma := next(t, claim(t, q, "a.example"))
	if ma == nil {
		t.Fatal("no message for a.example")
	}
	wantTo(t, ma, "u@a.example", "v@a.example")
	mb := next(t, claim(t, q, "b.example"))
	if mb == nil {
		t.Fatal("no message for b.example while a.example's recipients are leased")
	}
	wantTo(t, mb, "w@b.example")
	if ma.Envelope().ID != mb.Envelope().ID {
		t.Errorf("IDs differ: %q and %q", ma.Envelope().ID, mb.Envelope().ID)
	}
	if readBody(t, mb) != body {
		t.Error("b.example's body differs")
	}
	allOK(t, ma)
	if hasMail(t, q, "a.example") {
		t.Error("HasMail(a.example) = true after its recipients were delivered")
	}
	if !hasMail(t, q, "b.example") {
		t.Error("HasMail(b.example) = false while its recipient is leased, not delivered")
	}
	complete(t, mb, odmr.RecipientResult{Recipient: "w@b.example", Err: errTemp})
	if !hasMail(t, q, "b.example") {
		t.Fatal("HasMail(b.example) = false after a temporary failure")
	}
	// One batch for both domains gets the message once, with the
	// recipients left in either.
	b := claim(t, q, "a.example", "b.example")
	m := next(t, b)
	if m == nil {
		t.Fatal("no message left for b.example")
	}
	wantTo(t, m, "w@b.example")
	allOK(t, m)
	if m := next(t, b); m != nil {
		t.Fatalf("Next after the last message gave %v", m.Envelope().To)
	}
}

// Messages come out in the order they were queued.
func testArrivalOrder(t *testing.T, c Config) {
	q := c.New(t)
	var want []string
	for i := range 5 {
		want = append(want, enqueue(t, q, "s@sender.example", fmt.Sprintf("u%d@a.example", i)))
	}
	var got []string
	for _, m := range drain(t, claim(t, q, "a.example")) {
		got = append(got, m.Envelope().ID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
}

// A batch returns a message once, even when its recipients failed
// temporarily; a later batch gets it again.
func testOncePerBatch(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example")
	b := claim(t, q, "a.example")
	m := next(t, b)
	complete(t, m, odmr.RecipientResult{Recipient: "u@a.example", Err: errTemp})
	if m := next(t, b); m != nil {
		t.Fatal("the batch returned a message a second time")
	}
	if next(t, claim(t, q, "a.example")) == nil {
		t.Fatal("a new batch did not get the message back")
	}
}

// Close releases the messages not completed, as they were; Next after
// Close fails.
func testCloseReleases(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example", "v@a.example")
	b := claim(t, q, "a.example")
	if next(t, b) == nil {
		t.Fatal("no message")
	}
	if m := next(t, claim(t, q, "a.example")); m != nil {
		t.Fatalf("a second batch got %v while the first holds them", m.Envelope().To)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := b.Next(ctxOf(t)); err == nil {
		t.Error("Next after Close succeeded")
	}
	if !hasMail(t, q, "a.example") {
		t.Fatal("HasMail = false after a batch released its message")
	}
	m := next(t, claim(t, q, "a.example"))
	if m == nil {
		t.Fatal("the released message was not deliverable again")
	}
	wantTo(t, m, "u@a.example", "v@a.example")
}

// A second Complete fails and changes nothing.
func testCompleteTwice(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example")
	m := next(t, claim(t, q, "a.example"))
	complete(t, m, odmr.RecipientResult{Recipient: "u@a.example", Err: errTemp})
	if err := m.Complete(ctxOf(t), []odmr.RecipientResult{{Recipient: "u@a.example"}}); err == nil {
		t.Error("a second Complete succeeded")
	}
	if !hasMail(t, q, "a.example") {
		t.Fatal("a second Complete delivered a recipient")
	}
}

// Mail queued while a batch is open is handed out by that batch.
func testNewMailDuringBatch(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example")
	b := claim(t, q, "a.example")
	allOK(t, next(t, b))
	enqueue(t, q, "s@sender.example", "v@a.example")
	m := next(t, b)
	if m == nil {
		t.Fatal("mail queued during the batch was not handed out")
	}
	wantTo(t, m, "v@a.example")
}

// The DSN requests of a message come back with it, limited to the
// recipients of the delivery.
func testDSNKept(t *testing.T, c Config) {
	q := c.New(t)
	dsn := &odmr.DSN{
		Return: odmr.ReturnHeaders,
		EnvID:  "env-1",
		Recipients: map[string]odmr.RecipientDSN{
			"u@a.example": {Notify: []odmr.DSNNotify{odmr.NotifySuccess, odmr.NotifyFailure}, ORcptType: "rfc822", ORcpt: "orig@a.example"},
			"w@b.example": {Notify: []odmr.DSNNotify{odmr.NotifyNever}},
		},
	}
	enqueueEnv(t, q, odmr.Envelope{From: "s@sender.example", To: []string{"u@a.example", "v@a.example", "w@b.example"}, DSN: dsn}, body)
	enqueue(t, q, "s@sender.example", "x@a.example")
	b := claim(t, q, "a.example")
	m := next(t, b)
	got := m.Envelope().DSN
	want := &odmr.DSN{Return: odmr.ReturnHeaders, EnvID: "env-1", Recipients: map[string]odmr.RecipientDSN{
		"u@a.example": dsn.Recipients["u@a.example"],
	}}
	if !equalDSN(got, want) {
		t.Errorf("DSN = %s, want %s", fmtDSN(got), fmtDSN(want))
	}
	if m := next(t, b); m == nil || m.Envelope().DSN != nil {
		t.Errorf("a message queued without DSN requests has DSN %v", m.Envelope().DSN)
	}
	mb := next(t, claim(t, q, "b.example"))
	want = &odmr.DSN{Return: odmr.ReturnHeaders, EnvID: "env-1", Recipients: map[string]odmr.RecipientDSN{
		"w@b.example": dsn.Recipients["w@b.example"],
	}}
	if got := mb.Envelope().DSN; !equalDSN(got, want) {
		t.Errorf("b.example: DSN = %s, want %s", fmtDSN(got), fmtDSN(want))
	}
}

func equalDSN(a, b *odmr.DSN) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Return != b.Return || a.EnvID != b.EnvID || len(a.Recipients) != len(b.Recipients) {
		return false
	}
	for k, x := range a.Recipients {
		y, ok := b.Recipients[k]
		if !ok || !slices.Equal(x.Notify, y.Notify) || !strings.EqualFold(x.ORcptType, y.ORcptType) || x.ORcpt != y.ORcpt {
			return false
		}
	}
	return true
}

func fmtDSN(d *odmr.DSN) string {
	if d == nil {
		return "nil"
	}
	return fmt.Sprintf("%+v", *d)
}

// Two batches on one domain at once share its messages: every message is
// handed out once, to one of them.
func testTwoConsumers(t *testing.T, c Config) {
	q := c.New(t)
	const n = 20
	for i := range n {
		enqueue(t, q, "s@sender.example", fmt.Sprintf("u%d@a.example", i))
	}
	b1, b2 := claim(t, q, "a.example"), claim(t, q, "a.example")
	seen := map[string]int{}
	for {
		m1, m2 := next(t, b1), next(t, b2)
		if m1 == nil && m2 == nil {
			break
		}
		for _, m := range []odmr.Message{m1, m2} {
			if m != nil {
				seen[m.Envelope().To[0]]++
			}
		}
	}
	if len(seen) != n {
		t.Errorf("%d recipients handed out, want %d", len(seen), n)
	}
	for r, k := range seen {
		if k != 1 {
			t.Errorf("%s handed out %d times", r, k)
		}
	}
}

// Many sessions fetching at once, over handles of one store (Reopen),
// with domain sets that overlap ({a,b}, {b,c}, {a,c}, ...), from messages
// to one, two or three of the domains, deliver every recipient exactly
// once, whatever the interleaving.
func testManyConsumers(t *testing.T, c Config) {
	q := c.New(t)
	handles := []Queue{q, q, q}
	if c.Reopen != nil {
		handles[1], handles[2] = c.Reopen(t, q), c.Reopen(t, q)
	}
	const n = 90
	domains := []string{"a.example", "b.example", "c.example"}
	want := map[string]bool{}
	for i := range n {
		var to []string
		for j, d := range domains {
			if (i>>j)&1 == 1 || i%7 == 0 {
				to = append(to, fmt.Sprintf("u%d@%s", i, d))
			}
		}
		if len(to) == 0 {
			to = []string{fmt.Sprintf("u%d@%s", i, domains[i%3])}
		}
		enqueue(t, handles[i%3], "s@sender.example", to...)
		for _, r := range to {
			want[r] = true
		}
	}
	sets := [][]string{
		{"a.example", "b.example"}, {"b.example", "c.example"}, {"a.example", "c.example"},
		{"a.example"}, {"b.example"}, {"c.example"}, domains,
	}
	var (
		mu        sync.Mutex
		delivered = map[string]int{}
		wg        sync.WaitGroup
		errs      = make(chan error, len(sets))
	)
	// The first error stops every session: a lease gone wrong would keep
	// the others waiting until it lapsed.
	ctx, stop := context.WithCancel(ctxOf(t))
	defer stop()
	fail := func(err error) {
		errs <- err
		stop()
	}
	for w, set := range sets {
		h := handles[w%3]
		wg.Go(func() {
			for ctx.Err() == nil {
				if has, err := h.HasMail(ctx, domains); err != nil {
					fail(err)
					return
				} else if !has {
					return
				}
				if err := deliverAll(ctx, h, set, &mu, delivered); err != nil {
					fail(err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for r := range want {
		if delivered[r] != 1 {
			t.Errorf("%s delivered %d times", r, delivered[r])
		}
	}
	if len(delivered) != len(want) {
		t.Errorf("%d recipients delivered, want %d", len(delivered), len(want))
	}
	if hasMail(t, q, domains...) {
		t.Error("HasMail = true after every recipient was delivered")
	}
}

// deliverAll runs one session for domains on q, counting in delivered
// (under mu) each recipient it is handed and completing each message as
// delivered.
func deliverAll(ctx context.Context, q Queue, domains []string, mu *sync.Mutex, delivered map[string]int) error {
	b, err := q.Claim(ctx, domains)
	if err != nil {
		return err
	}
	defer b.Close()
	for {
		m, err := b.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var rs []odmr.RecipientResult
		mu.Lock()
		for _, r := range m.Envelope().To {
			delivered[r]++
			rs = append(rs, odmr.RecipientResult{Recipient: r})
		}
		mu.Unlock()
		if err := m.Complete(ctx, rs); err != nil {
			return err
		}
	}
}

// Next with a canceled context fails and leases nothing.
func testCanceledNext(t *testing.T, c Config) {
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example")
	b := claim(t, q, "a.example")
	ctx, cancel := context.WithCancel(ctxOf(t))
	cancel()
	if m, err := b.Next(ctx); err == nil {
		t.Fatalf("Next with a canceled context returned %v", m.Envelope().To)
	}
	if next(t, claim(t, q, "a.example")) == nil {
		t.Fatal("a canceled Next left the message leased")
	}
}

// A lease that lapses makes the mail deliverable again.
func testLeaseExpiry(t *testing.T, c Config) {
	if c.ExpireLeases == nil {
		t.Skip("the queue cannot be made to let its leases lapse (Config.ExpireLeases)")
	}
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example")
	if next(t, claim(t, q, "a.example")) == nil {
		t.Fatal("no message")
	}
	c.ExpireLeases(t, q)
	if !hasMail(t, q, "a.example") {
		t.Fatal("HasMail = false after a lease lapsed")
	}
	m := next(t, claim(t, q, "a.example"))
	if m == nil {
		t.Fatal("the message of a lapsed lease was not deliverable again")
	}
	wantTo(t, m, "u@a.example")
	allOK(t, m)
}

// A Complete from a batch whose lease lapsed and was taken by another
// changes nothing: the new holder's results count.
func testFencing(t *testing.T, c Config) {
	if c.ExpireLeases == nil {
		t.Skip("the queue cannot be made to let its leases lapse (Config.ExpireLeases)")
	}
	q := c.New(t)
	enqueue(t, q, "s@sender.example", "u@a.example", "v@a.example")
	old := next(t, claim(t, q, "a.example"))
	c.ExpireLeases(t, q)
	cur := next(t, claim(t, q, "a.example"))
	if cur == nil {
		t.Fatal("the message of a lapsed lease was not deliverable again")
	}
	err := old.Complete(ctxOf(t), []odmr.RecipientResult{
		{Recipient: "u@a.example"},
		{Recipient: "v@a.example", Err: errPerm},
	})
	if err == nil {
		t.Error("Complete from the lapsed lease succeeded")
	}
	if !hasMail(t, q, "a.example") {
		t.Fatal("the lapsed lease's Complete settled the recipients")
	}
	complete(t, cur,
		odmr.RecipientResult{Recipient: "u@a.example", Err: errTemp},
		odmr.RecipientResult{Recipient: "v@a.example"})
	m := next(t, claim(t, q, "a.example"))
	if m == nil {
		t.Fatal("the current holder's temporary failure was lost")
	}
	wantTo(t, m, "u@a.example")
}
