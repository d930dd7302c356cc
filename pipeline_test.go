package odmr

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/pipeline/pipetest"
	"github.com/go-odmr/odmr/internal/smtptest"
)

// recQueue is a memqueue.Queue that records every Complete and can make
// bodies fail to open or to read.
type recQueue struct {
	memQueue
	openErr map[string]bool // message IDs whose Open fails
	readErr map[string]bool // message IDs whose body fails half-way

	mu      sync.Mutex
	results map[string][]RecipientResult
}

func (q *recQueue) Claim(ctx context.Context, domains []string) (Batch, error) {
	b, err := q.memQueue.Claim(ctx, domains)
	return &recBatch{Batch: b, q: q}, err
}

type recBatch struct {
	Batch
	q *recQueue
}

func (b *recBatch) Next(ctx context.Context) (Message, error) {
	m, err := b.Batch.Next(ctx)
	if err != nil {
		return nil, err
	}
	return &recMessage{Message: m, q: b.q}, nil
}

type recMessage struct {
	Message
	q *recQueue
}

var errTestDisk = errors.New("test: disk read error")

func (m *recMessage) Open() (io.ReadCloser, error) {
	id := m.Envelope().ID
	if m.q.openErr[id] {
		return nil, errors.New("test: spool file missing")
	}
	r, err := m.Message.Open()
	if err == nil && m.q.readErr[id] {
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(io.LimitReader(r, 10), errReader{errTestDisk}), r}, nil
	}
	return r, err
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func (m *recMessage) Complete(ctx context.Context, results []RecipientResult) error {
	m.q.mu.Lock()
	if m.q.results == nil {
		m.q.results = make(map[string][]RecipientResult)
	}
	m.q.results[m.Envelope().ID] = append([]RecipientResult(nil), results...)
	m.q.mu.Unlock()
	return m.Message.Complete(ctx, results)
}

// plMsg is a queued message of a scenario.
type plMsg struct {
	from, body string
	to         []string
}

// plMode is one way to deliver.
type plMode struct {
	name      string
	ext       []string // what the customer offers besides the scenario's
	chunking  bool     // let the pipelined path use BDAT
	pipelined bool
}

var plModes = []plMode{
	{"lock-step", nil, false, false},
	{"pipelined DATA", []string{"PIPELINING"}, false, true},
	{"pipelined BDAT", []string{"PIPELINING", "CHUNKING"}, true, true},
}

// plRun is what one delivery did.
type plRun struct {
	outcome   map[string]string // "msgID rcpt" -> class
	delivered []string          // what the customer accepted
	commands  []string
	input     string
	err       error
}

// plClass names a recipient's result so that runs can be compared: the
// reply for a refusal, "queued" for anything that leaves it queued
// without a reply (a lost connection, or never attempted).
func plClass(err error) string {
	switch {
	case err == nil:
		return "delivered"
	case errors.Is(err, errLostConnection):
		return "queued"
	}
	e := AsError(err)
	if e == nil {
		return "unexpected: " + err.Error()
	}
	return fmt.Sprintf("%d %s %s", e.Code, e.EnhancedCode, e.Message)
}

// runReversed queues msgs and runs the reversed state of one session
// against the scripted customer srv, over a net.Pipe or loopback TCP.
func runReversed(t *testing.T, msgs []plMsg, srv *pipetest.Server, q *recQueue, mode plMode, tcp bool) plRun {
	t.Helper()
	var ids []string
	for _, m := range msgs {
		id, err := q.Enqueue(Envelope{From: m.from, To: m.to}, strings.NewReader(m.body))
		require.NoError(t, err)
		ids = append(ids, id)
	}

	var pc, cc net.Conn
	if tcp {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err == nil {
				srv.Serve(c)
			}
		}()
		pc, err = net.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
	} else {
		pc, cc = net.Pipe()
		go srv.Serve(cc)
	}
	defer pc.Close()
	p := &Provider{
		Hostname:        "provider.test",
		Queue:           q,
		Logger:          slog.New(slog.DiscardHandler),
		ReplyTimeout:    10 * time.Second,
		DataTimeout:     10 * time.Second,
		WriteTimeout:    10 * time.Second,
		DisableChunking: !mode.chunking,
	}
	s := newSession(p, pc)
	run := plRun{outcome: map[string]string{}}
	run.err = s.deliver(context.Background(), pc, []string{"example.org"})
	pc.Close()

	q.mu.Lock()
	for i, id := range ids {
		for _, r := range msgs[i].to {
			run.outcome[id+" "+r] = "queued"
		}
		for _, r := range q.results[id] {
			run.outcome[id+" "+r.Recipient] = plClass(r.Err)
		}
	}
	q.mu.Unlock()
	for _, m := range srv.Delivered() {
		run.delivered = append(run.delivered, m.String())
	}
	run.commands = srv.Commands()
	run.input = srv.Input()
	return run
}

// plScenario is one scripted customer and the mail queued for it.
type plScenario struct {
	name    string
	msgs    []plMsg
	ext     []string                // the customer's other extensions
	script  func() *pipetest.Server // a fresh script for each run
	openErr []string                // IDs of messages whose body cannot be opened
	readErr []string                // IDs of messages whose body fails half-way
	// dataOnly marks a script about replies to DATA, a command BDAT
	// does not send.
	dataOnly bool
	// check, if set, looks at each run's outcome to make sure the
	// scenario does what its name says.
	check func(t *testing.T, r plRun)
}

func rcptBy(to string) string {
	switch {
	case strings.HasPrefix(to, "temp"):
		return "450 4.2.1 mailbox busy"
	case strings.HasPrefix(to, "perm"):
		return "550 5.1.1 no such user"
	case strings.HasPrefix(to, "fwd"):
		return "251 2.1.5 will forward"
	}
	return "250 2.1.5 OK"
}

// nth returns a function that is true on its nth call with a line
// starting with prefix.
func nth(prefix string, n int) func(string) bool {
	seen := 0
	return func(l string) bool {
		if strings.HasPrefix(l, prefix) {
			seen++
			return seen == n
		}
		return false
	}
}

func plScenarios() []plScenario {
	five := func(body string) []plMsg {
		var out []plMsg
		for i := 1; i <= 5; i++ {
			out = append(out, plMsg{fmt.Sprintf("s%d@x.test", i), fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, body), []string{fmt.Sprintf("a%d@example.org", i), fmt.Sprintf("b%d@example.org", i)}})
		}
		return out
	}
	return []plScenario{
		{
			name: "ordinary mail, dot-stuffing and 8-bit bytes",
			msgs: append(five("hello"),
				plMsg{"", "Subject: bounce\r\n\r\n.leading dot\r\n..two\r\n.\r\ncaf\xc3\xa9 \xff\r\nbare LF\nno end", []string{"u@example.org"}},
				plMsg{"s@x.test", "Subject: split\r\n\r\nother domain\r\n", []string{"v@example.net", "w@example.org"}}),
			ext:    []string{"8BITMIME", "SIZE 100000"},
			script: func() *pipetest.Server { return &pipetest.Server{} },
		},
		{
			// 250, 251, 450 and 550 in one message, and a message
			// no recipient of which is accepted.
			name: "mixed RCPT replies",
			msgs: []plMsg{
				{"s@x.test", "one\r\n", []string{"ok@example.org", "temp@example.org", "perm@example.org", "fwd@example.org"}},
				{"s@x.test", "two\r\n", []string{"temp2@example.org", "perm2@example.org"}},
				{"s@x.test", "three\r\n", []string{"ok3@example.org"}},
			},
			script: func() *pipetest.Server { return &pipetest.Server{Rcpt: rcptBy} },
		},
		{
			// RFC 2920 section 3.1: a pipelining client sends DATA
			// before it knows that every RCPT failed; a customer may
			// still answer 354, and then gets a lone dot.
			name: "354 although no recipient was accepted",
			msgs: []plMsg{
				{"s@x.test", "one\r\n", []string{"perm@example.org", "temp@example.org"}},
				{"s@x.test", "two\r\n", []string{"ok@example.org"}},
			},
			script: func() *pipetest.Server {
				return &pipetest.Server{Rcpt: rcptBy, Data: func(int) string { return "354 go ahead" }}
			},
		},
		{
			name:     "DATA refused",
			dataOnly: true,
			msgs:     five("hi"),
			script: func() *pipetest.Server {
				n := 0
				return &pipetest.Server{Data: func(int) string {
					if n++; n == 2 {
						return "451 4.3.0 try later"
					} else if n == 4 {
						return "554 5.3.0 no data for you"
					}
					return "354 go ahead"
				}}
			},
			check: func(t *testing.T, r plRun) { assert.Len(t, r.delivered, 3) },
		},
		{
			name: "refusal after the data",
			msgs: []plMsg{
				{"s@x.test", "a virus\r\n", []string{"a@example.org", "perm@example.org"}},
				{"s@x.test", "later please\r\n", []string{"b@example.org"}},
				{"s@x.test", "fine\r\n", []string{"c@example.org"}},
			},
			script: func() *pipetest.Server {
				return &pipetest.Server{Rcpt: rcptBy, End: func(m pipetest.Message) string {
					switch {
					case strings.Contains(m.Body, "virus"):
						return "554 5.7.1 rejected content"
					case strings.Contains(m.Body, "later"):
						return "452 4.3.1 out of space"
					}
					return "250 2.0.0 queued"
				}}
			},
		},
		{
			name: "MAIL refused",
			msgs: []plMsg{
				{"spammer@x.test", "spam\r\n", []string{"a@example.org", "b@example.org"}},
				{"ok@x.test", "ham\r\n", []string{"c@example.org"}},
			},
			script: func() *pipetest.Server {
				return &pipetest.Server{Mail: func(from string) string {
					if from == "spammer@x.test" {
						return "550 5.7.1 sender refused"
					}
					return "250 2.1.0 OK"
				}}
			},
		},
		{
			// The provider refuses these itself, permanently.
			name: "customer limits: SIZE and no SMTPUTF8",
			msgs: []plMsg{
				{"s@x.test", strings.Repeat("x", 300) + "\r\n", []string{"big@example.org"}},
				{"s@x.test", "hi\r\n", []string{"jos\u00e9@example.org", "ok@example.org"}},
				{"s@x.test", "small\r\n", []string{"ok2@example.org"}},
			},
			ext:    []string{"SIZE 200"},
			script: func() *pipetest.Server { return &pipetest.Server{} },
		},
		{
			name:    "body cannot be opened",
			msgs:    []plMsg{{"s@x.test", "one\r\n", []string{"a@example.org"}}, {"s@x.test", "two\r\n", []string{"b@example.org", "perm@example.org"}}, {"s@x.test", "three\r\n", []string{"c@example.org"}}},
			openErr: []string{"2"},
			script:  func() *pipetest.Server { return &pipetest.Server{Rcpt: rcptBy} },
		},
		{
			// The connection is dropped without the final dot.
			name:    "body read error",
			msgs:    []plMsg{{"s@x.test", "one\r\n", []string{"a@example.org"}}, {"s@x.test", "Subject: two\r\n\r\nlong enough body\r\n", []string{"b@example.org", "perm@example.org"}}, {"s@x.test", "three\r\n", []string{"c@example.org"}}},
			readErr: []string{"2"},
			script:  func() *pipetest.Server { return &pipetest.Server{Rcpt: rcptBy} },
			check: func(t *testing.T, r plRun) {
				assert.Equal(t, "queued", r.outcome["2 b@example.org"])
				assert.NotContains(t, r.input, "Subject: t\r\n.\r\n", "the partial body is never ended")
				assert.NotContains(t, r.input, "BDAT 10 LAST")
			},
		},
		{
			name:   "connection cut at a later MAIL",
			msgs:   five("hi"),
			script: func() *pipetest.Server { return &pipetest.Server{Cut: nth("MAIL", 3)} },
			check:  func(t *testing.T, r plRun) { assert.Len(t, r.delivered, 2) },
		},
		{
			name:   "connection cut between recipients",
			msgs:   five("hi"),
			script: func() *pipetest.Server { return &pipetest.Server{Cut: nth("RCPT TO:<b2@", 1)} },
		},
		{
			name: "connection cut in the middle of a body",
			msgs: func() []plMsg {
				m := five("hi")
				m[1].body = "first half\r\nCUT HERE\r\nsecond half\r\n"
				return m
			}(),
			script: func() *pipetest.Server {
				bdat := nth("BDAT", 2)
				return &pipetest.Server{Cut: func(l string) bool {
					return strings.HasPrefix(l, "CUT HERE") || bdat(l)
				}}
			},
		},
		{
			// The customer got the whole message but the provider never
			// gets the reply: it must stay queued (and may come twice).
			name: "connection cut before the final reply",
			msgs: five("hi"),
			script: func() *pipetest.Server {
				dot := nth(".\r\n", 2)
				last := nth("BDAT", 2)
				return &pipetest.Server{Cut: func(l string) bool { return dot(l) || last(l) }}
			},
		},
		{
			// More recipients than the pipeline keeps in flight.
			name: "many recipients",
			msgs: func() []plMsg {
				var to []string
				for i := range 300 {
					prefix := "ok"
					if i%3 == 1 {
						prefix = "perm"
					} else if i%7 == 2 {
						prefix = "temp"
					}
					to = append(to, fmt.Sprintf("%s%d@example.org", prefix, i))
				}
				return []plMsg{{"s@x.test", "hi\r\n", to}, {"s@x.test", "again\r\n", to[:50]}}
			}(),
			script: func() *pipetest.Server { return &pipetest.Server{Rcpt: rcptBy} },
		},
	}
}

// TestOutcomesSameInEveryMode runs each scenario through the one
// delivery engine in its three modes, lock-step, pipelined with DATA and
// pipelined with BDAT, over net.Pipe and TCP, and compares what every
// recipient of every message ends up with: how the commands travel must
// not change what the queue records.
func TestOutcomesSameInEveryMode(t *testing.T) {
	for _, sc := range plScenarios() {
		t.Run(sc.name, func(t *testing.T) {
			for _, tcp := range []bool{false, true} {
				transport := "net.Pipe"
				if tcp {
					transport = "TCP"
				}
				var lockstep plRun
				for _, mode := range plModes {
					if sc.dataOnly && mode.chunking {
						continue
					}
					srv := sc.script()
					srv.Ext = append(append([]string{}, mode.ext...), sc.ext...)
					q := &recQueue{memQueue: newMemQueue(), openErr: set(sc.openErr), readErr: set(sc.readErr)}
					run := runReversed(t, sc.msgs, srv, q, mode, tcp)
					if sc.check != nil {
						sc.check(t, run)
					}
					if !mode.pipelined {
						lockstep = run
						continue
					}
					assert.Equal(t, sortedLines(lockstep.outcome), sortedLines(run.outcome), "%s, %s: outcomes differ from lock-step", transport, mode.name)
					assert.Equal(t, lockstep.delivered, run.delivered, "%s, %s: the customer got other mail", transport, mode.name)
				}
			}
		})
	}
}

func set(ids []string) map[string]bool {
	m := make(map[string]bool)
	for _, id := range ids {
		m[id] = true
	}
	return m
}

func sortedLines(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+" => "+v)
	}
	sort.Strings(out)
	return out
}

func TestPipelinedPathSendsGroupsAndOverlapsMessages(t *testing.T) {
	// The customer holds back its reply to each final dot but the last
	// until the provider has sent the next message's MAIL.
	var msgs []plMsg
	for i := 1; i <= 4; i++ {
		msgs = append(msgs, plMsg{"s@x.test", fmt.Sprintf("body %d\r\n", i), []string{fmt.Sprintf("a%d@example.org", i), fmt.Sprintf("b%d@example.org", i)}})
	}
	var ahead []bool
	n := 0
	srv := &pipetest.Server{Ext: []string{"PIPELINING", "8BITMIME"}, Hold: func(br *bufio.Reader, conn net.Conn) {
		if n++; n < len(msgs) {
			ahead = append(ahead, pipetest.SentAhead(br, conn, "MAIL FROM"))
		}
	}}
	q := &recQueue{memQueue: newMemQueue()}
	run := runReversed(t, msgs, srv, q, plModes[1], false)
	require.NoError(t, run.err)
	assert.Equal(t, []bool{true, true, true}, ahead)
	assert.Contains(t, srv.Reads(), "MAIL FROM:<s@x.test> BODY=8BITMIME\r\nRCPT TO:<a1@example.org>\r\nRCPT TO:<b1@example.org>\r\nDATA\r\n")
	assert.Len(t, run.delivered, 4)
	assert.Equal(t, 0, q.Len())
}

func TestPlainCustomerGetsLockstepSMTP(t *testing.T) {
	// Without PIPELINING in the EHLO reply the provider waits for every
	// reply (RFC 2920 section 3.1 leaves it no choice).
	srv := &pipetest.Server{Ext: []string{"8BITMIME"}}
	q := &recQueue{memQueue: newMemQueue()}
	run := runReversed(t, []plMsg{{"s@x.test", "hi\r\n", []string{"a@example.org", "b@example.org"}}}, srv, q, plModes[0], false)
	require.NoError(t, run.err)
	for _, r := range srv.Reads() {
		if !strings.HasSuffix(r, "\r\n.\r\n") {
			assert.Equal(t, 1, strings.Count(r, "\r\n"), "one command per write: %q", r)
		}
	}
	assert.Equal(t, 0, q.Len())
}

func TestHELOOnlyCustomerGetsLockstepSMTP(t *testing.T) {
	// A customer that refuses EHLO (an RFC 821 server) gets HELO, and
	// the mail in lock-step with no MAIL parameter it did not offer.
	srv := &pipetest.Server{HELOOnly: true, Rcpt: rcptBy}
	q := &recQueue{memQueue: newMemQueue()}
	run := runReversed(t, []plMsg{
		{"s@x.test", "hi\r\n", []string{"a@example.org", "perm@example.org"}},
		{"s@x.test", "again\r\n", []string{"b@example.org"}},
	}, srv, q, plModes[0], false)
	require.NoError(t, run.err)
	assert.Equal(t, []string{
		"EHLO provider.test", "HELO provider.test",
		"MAIL FROM:<s@x.test>", "RCPT TO:<a@example.org>", "RCPT TO:<perm@example.org>", "DATA",
		"MAIL FROM:<s@x.test>", "RCPT TO:<b@example.org>", "DATA", "QUIT",
	}, run.commands)
	assert.Len(t, run.delivered, 2)
	for k, v := range run.outcome {
		if strings.Contains(k, "perm@") {
			assert.Equal(t, "550 5.1.1 no such user", v)
		} else {
			assert.Equal(t, "delivered", v, k)
		}
	}
	for _, r := range srv.Reads() {
		if !strings.HasSuffix(r, "\r\n.\r\n") {
			assert.Equal(t, 1, strings.Count(r, "\r\n"), "one command per write: %q", r)
		}
	}
}

func TestPipelinedPathWithDebugTranscript(t *testing.T) {
	// The debug transcript is written from the reply reader's goroutine
	// and the writer's; the race detector watches.
	var buf syncBuffer
	srv := &pipetest.Server{Ext: []string{"PIPELINING"}, Rcpt: rcptBy}
	q := &recQueue{memQueue: newMemQueue()}
	for i := range 3 {
		_, err := q.Enqueue(Envelope{From: "s@x.test", To: []string{fmt.Sprintf("a%d@example.org", i), "perm@example.org"}}, strings.NewReader("hi\r\n"))
		require.NoError(t, err)
	}
	pc, cc := net.Pipe()
	go srv.Serve(cc)
	p := &Provider{Hostname: "provider.test", Queue: q, Logger: slog.New(slog.DiscardHandler), Debug: &buf}
	s := newSession(p, pc)
	require.NoError(t, s.deliver(context.Background(), pc, []string{"example.org"}))
	pc.Close()
	assert.Contains(t, buf.String(), "C: 550 5.1.1 no such user")
	assert.Contains(t, buf.String(), "P: QUIT")
}

func TestPipelinedAgainstGoSMTPServer(t *testing.T) {
	// go-smtp's server offers PIPELINING and CHUNKING; the plain run
	// hides both from the provider.
	var msgs []plMsg
	for i := range 30 {
		m := plMsg{fmt.Sprintf("s%d@x.test", i), fmt.Sprintf("Subject: %d\r\n\r\n.dot\r\ncaf\xc3\xa9\r\n", i), []string{fmt.Sprintf("ok%d@example.org", i)}}
		switch i % 6 {
		case 1:
			m.to = append(m.to, fmt.Sprintf("temp%d@example.org", i), fmt.Sprintf("perm%d@example.org", i))
		case 2:
			m.to = []string{fmt.Sprintf("perm%d@example.org", i)}
		case 3:
			m.body += "a virus\r\n"
		}
		msgs = append(msgs, m)
	}
	for _, tcp := range []bool{false, true} {
		var plain plRun
		var plainGot []smtptest.Message
		for _, mode := range plModes {
			b := &smtptest.Refusing{}
			srv := smtp.NewServer(b)
			srv.Domain = "customer.test"
			srv.ErrorLog = silentLog{}
			pc := smtptest.Dial(t, srv, tcp)
			var hide [][]byte
			if !mode.pipelined {
				hide = [][]byte{[]byte("-PIPELINING"), []byte("-CHUNKING")}
			} else if !mode.chunking {
				hide = [][]byte{[]byte("-CHUNKING")}
			}
			q := &recQueue{memQueue: newMemQueue()}
			var ids []string
			for _, m := range msgs {
				id, err := q.Enqueue(Envelope{From: m.from, To: m.to}, strings.NewReader(m.body))
				require.NoError(t, err)
				ids = append(ids, id)
			}
			rc := hideConn{pc, hide}
			p := &Provider{Hostname: "provider.test", Queue: q, Logger: slog.New(slog.DiscardHandler), DisableChunking: !mode.chunking}
			err := newSession(p, rc).deliver(context.Background(), rc, []string{"example.org"})
			require.NoError(t, err)
			pc.Close()
			smtptest.Shutdown(t, srv)
			run := plRun{outcome: map[string]string{}}
			for _, id := range ids {
				for _, r := range q.results[id] {
					run.outcome[id+" "+r.Recipient] = plClass(r.Err)
				}
			}
			got := b.Messages()
			if !mode.pipelined {
				plain, plainGot = run, got
				assert.Len(t, got, 20)
				continue
			}
			assert.Equal(t, sortedLines(plain.outcome), sortedLines(run.outcome), "tcp=%v %s", tcp, mode.name)
			assert.Equal(t, plainGot, got, "tcp=%v %s", tcp, mode.name)
		}
	}
}
