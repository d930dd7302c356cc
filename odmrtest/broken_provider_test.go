package odmrtest_test

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtest"
)

// Providers with the bugs that independent implementations were found to
// have, built from this library's provider with a queue, an authorizer
// or a proxy that carries the bug. Each new check must fail against its
// broken provider.

// queueBugs are the bugs a fakeQueue can have.
type queueBugs struct {
	// unfilteredAfterFirst: only the first message of a batch is
	// filtered to the batch's domains; later ones carry every recipient.
	unfilteredAfterFirst bool
	// dropOthers: completing a message deletes it whole, the recipients
	// in other domains included.
	dropOthers bool
	// substring: a domain matches any recipient domain that contains it.
	substring bool
	// carryFailed: recipients that failed temporarily join later
	// deliveries of the message, whatever their domain.
	carryFailed bool
	// bounceAllTemp: a message whose every recipient failed temporarily
	// at once (a 4xx to MAIL) is bounced, that is dropped.
	bounceAllTemp bool
	// stopAfterTemp: a batch ends after a message that failed
	// temporarily, leaving the rest queued for the next ATRN (no bug:
	// Exim does so).
	stopAfterTemp bool
	// loseRest: a batch ends after its second message and deletes the
	// messages it did not get to.
	loseRest bool
}

// fakeQueue is a small queue with bugs.
type fakeQueue struct {
	bugs queueBugs
	mu   sync.Mutex
	next int
	msgs []*fakeMsg
}

type fakeMsg struct {
	id     string
	from   string
	body   []byte
	rcpts  []string // still queued
	failed []string // failed temporarily
	leased bool
}

func (q *fakeQueue) enqueue(from string, to []string, body string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.next++
	q.msgs = append(q.msgs, &fakeMsg{id: strconv.Itoa(q.next), from: from, body: []byte(body), rcpts: append([]string(nil), to...)})
	return nil
}

func (q *fakeQueue) match(rcpt string, domains []string) bool {
	_, d, _ := strings.Cut(strings.ToLower(rcpt), "@")
	for _, x := range domains {
		x = strings.ToLower(x)
		if d == x || q.bugs.substring && strings.Contains(d, x) {
			return true
		}
	}
	return false
}

func (q *fakeQueue) matching(m *fakeMsg, domains []string) []string {
	var out []string
	for _, r := range m.rcpts {
		if q.match(r, domains) {
			out = append(out, r)
		}
	}
	return out
}

func (q *fakeQueue) HasMail(_ context.Context, domains []string) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, m := range q.msgs {
		if !m.leased && len(q.matching(m, domains)) > 0 {
			return true, nil
		}
	}
	return false, nil
}

func (q *fakeQueue) Claim(_ context.Context, domains []string) (odmr.Batch, error) {
	return &fakeBatch{q: q, domains: domains, seen: map[*fakeMsg]bool{}}, nil
}

type fakeBatch struct {
	q       *fakeQueue
	domains []string
	seen    map[*fakeMsg]bool
	n       int
	leases  []*fakeLease
	stopped bool // the batch ends (stopAfterTemp, loseRest)
}

func (b *fakeBatch) Next(context.Context) (odmr.Message, error) {
	q := b.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.bugs.loseRest && b.n >= 2 {
		b.stopped = true
	}
	if b.stopped {
		if q.bugs.loseRest {
			q.msgs = slices.DeleteFunc(q.msgs, func(m *fakeMsg) bool {
				return !m.leased && !b.seen[m] && len(q.matching(m, b.domains)) > 0
			})
		}
		return nil, io.EOF
	}
	for _, m := range q.msgs {
		to := q.matching(m, b.domains)
		if m.leased || b.seen[m] || len(to) == 0 {
			continue
		}
		if q.bugs.unfilteredAfterFirst && b.n > 0 {
			to = append([]string(nil), m.rcpts...)
		}
		if q.bugs.carryFailed {
			for _, f := range m.failed {
				if !contains(to, f) && contains(m.rcpts, f) {
					to = append(to, f)
				}
			}
		}
		b.seen[m], m.leased = true, true
		b.n++
		env := odmr.Envelope{ID: m.id, From: m.from, To: to, Size: int64(len(m.body))}
		for _, c := range m.body {
			if c >= 0x80 {
				env.Body = odmr.Body8BitMIME
			}
		}
		l := &fakeLease{q: q, b: b, m: m, env: env}
		b.leases = append(b.leases, l)
		return l, nil
	}
	return nil, io.EOF
}

func (b *fakeBatch) Close() error {
	b.q.mu.Lock()
	defer b.q.mu.Unlock()
	for _, l := range b.leases {
		if !l.done {
			l.done, l.m.leased = true, false
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

type fakeLease struct {
	q    *fakeQueue
	b    *fakeBatch
	m    *fakeMsg
	env  odmr.Envelope
	done bool
}

func (l *fakeLease) Envelope() odmr.Envelope { return l.env }

func (l *fakeLease) Open() (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(string(l.m.body))), nil
}

func (l *fakeLease) Complete(_ context.Context, results []odmr.RecipientResult) error {
	q := l.q
	q.mu.Lock()
	defer q.mu.Unlock()
	l.done, l.m.leased = true, false
	allTemp := len(results) > 0
	for _, r := range results {
		switch {
		case r.Err == nil || odmr.Permanent(r.Err):
			l.m.rcpts = remove(l.m.rcpts, r.Recipient)
			allTemp = false
		default:
			l.m.failed = append(l.m.failed, r.Recipient)
			l.b.stopped = l.b.stopped || q.bugs.stopAfterTemp
		}
	}
	if q.bugs.dropOthers || q.bugs.bounceAllTemp && allTemp {
		l.m.rcpts = nil
	}
	if len(l.m.rcpts) == 0 {
		for i, m := range q.msgs {
			if m == l.m {
				q.msgs = append(q.msgs[:i], q.msgs[i+1:]...)
				break
			}
		}
	}
	return nil
}

func remove(list []string, s string) []string {
	out := list[:0]
	for _, x := range list {
		if !strings.EqualFold(x, s) {
			out = append(out, x)
		}
	}
	return out
}

// proxyDial returns a Dial function that connects to cfg's provider
// through a proxy: down copies what the provider sends to the suite, up
// what the suite sends to the provider; nil copies unchanged.
func proxyDial(t *testing.T, cfg odmrtest.ProviderConfig, down, up func(br *bufio.Reader, w io.Writer) error) func() (net.Conn, error) {
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	copyAll := func(br *bufio.Reader, w io.Writer) error { _, err := io.Copy(w, br); return err }
	if down == nil {
		down = copyAll
	}
	if up == nil {
		up = copyAll
	}
	return func() (net.Conn, error) {
		prov, err := cfg.Dial()
		if err != nil {
			return nil, err
		}
		near, far := net.Pipe()
		wg.Go(func() {
			defer prov.Close()
			up(bufio.NewReader(far), prov)
		})
		wg.Go(func() {
			defer far.Close()
			down(bufio.NewReader(prov), far)
		})
		return near, nil
	}
}

// charCountingBDAT passes the provider's bytes on, rewriting the size of
// each BDAT chunk to its count of UTF-8 characters, not octets.
func charCountingBDAT(br *bufio.Reader, w io.Writer) error {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		f := strings.Fields(line)
		if len(f) < 2 || !strings.EqualFold(f[0], "BDAT") {
			if _, err := io.WriteString(w, line); err != nil {
				return err
			}
			continue
		}
		n, _ := strconv.Atoi(f[1])
		chunk := make([]byte, n)
		if _, err := io.ReadFull(br, chunk); err != nil {
			return err
		}
		f[1] = strconv.Itoa(utf8.RuneCount(chunk))
		if _, err := io.WriteString(w, strings.Join(f, " ")+"\r\n"+string(chunk)); err != nil {
			return err
		}
	}
}

// prefixDigest returns proxies that make the provider accept a CRAM-MD5
// digest that is a prefix of the right one, as a provider that compares
// by prefix does: the suite's short digest is replaced by the full one.
func prefixDigest(secret string) (down, up func(*bufio.Reader, io.Writer) error) {
	var mu sync.Mutex
	var chal []byte
	down = func(br *bufio.Reader, w io.Writer) error {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return err
			}
			if c, ok := strings.CutPrefix(strings.TrimSpace(line), "334 "); ok {
				b, _ := base64.StdEncoding.DecodeString(c)
				mu.Lock()
				chal = b
				mu.Unlock()
			}
			if _, err := io.WriteString(w, line); err != nil {
				return err
			}
		}
	}
	up = func(br *bufio.Reader, w io.Writer) error {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return err
			}
			if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(line)); err == nil {
				if user, digest, ok := strings.Cut(string(b), " "); ok {
					mu.Lock()
					m := hmac.New(md5.New, []byte(secret))
					m.Write(chal)
					mu.Unlock()
					full := hex.EncodeToString(m.Sum(nil))
					if digest != full && strings.HasPrefix(full, digest) {
						line = base64.StdEncoding.EncodeToString([]byte(user+" "+full)) + "\r\n"
					}
				}
			}
			if _, err := io.WriteString(w, line); err != nil {
				return err
			}
		}
	}
	return down, up
}

// looseAuthorizer wraps an authorizer with extra domains: all calls get
// extra, and calls after the first also get later.
func looseAuthorizer(inner odmr.DomainAuthorizer, extra, later []string) odmr.DomainAuthorizer {
	var mu sync.Mutex
	calls := map[string]int{}
	return odmr.DomainAuthorizerFunc(func(ctx context.Context, id string) ([]string, error) {
		d, err := inner.Domains(ctx, id)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		calls[id]++
		n := calls[id]
		mu.Unlock()
		d = append(append([]string(nil), d...), extra...)
		if n > 1 {
			d = append(d, later...)
		}
		return d, nil
	})
}

func TestSuiteCatchesBrokenTenantProviders(t *testing.T) {
	withQueue := func(b queueBugs) func(*odmr.Provider) {
		return func(p *odmr.Provider) { p.Queue = &fakeQueue{bugs: b} }
	}
	tests := []struct {
		check, why string
		prov       func(*odmr.Provider)
		conf       func(*testing.T, *odmrtest.ProviderConfig)
		// fake runs the check against a fakeProvider with these bugs:
		// this library's provider filters each message's recipients to
		// the session's domains again before it sends them, which hides
		// these queue bugs.
		fake *queueBugs
	}{
		{"5.2.1/every-message-of-a-run-filtered", "only the first message of a run filtered",
			nil, nil, &queueBugs{unfilteredAfterFirst: true}},
		{"5.2.1/look-alike-domains-not-delivered", "domains matched as substrings",
			nil, nil, &queueBugs{substring: true}},
		{"5.2.1/4xx-recipient-keeps-its-domain", "a 4xx recipient carried into another customer's ATRN",
			nil, nil, &queueBugs{carryFailed: true}},
		{"5.2.1/other-customers-mail-stays-queued", "a mixed message deleted whole",
			withQueue(queueBugs{dropOthers: true}), nil, nil},
		{"5.2.1/every-message-of-a-run-filtered", "a mixed message deleted whole",
			withQueue(queueBugs{dropOthers: true}), nil, nil},
		{"5.2.1/look-alike-ATRN-450", "look-alike domains authorized",
			func(p *odmr.Provider) {
				p.Authorizer = looseAuthorizer(p.Authorizer, []string{"example.org.invalid", "xexample.org", "example.org.evil.test"}, nil)
			}, nil, nil},
		{"5.2.1/4xx-recipient-keeps-its-domain", "a 4xx recipient carried into another domain's ATRN, no second account",
			nil, func(t *testing.T, cfg *odmrtest.ProviderConfig) { cfg.ForeignUser = "" }, &queueBugs{carryFailed: true}},
		{"5.2.1/ATRN-after-450-still-refused", "the foreign domain allowed after a 450",
			func(p *odmr.Provider) {
				p.Authorizer = looseAuthorizer(p.Authorizer, nil, []string{odmrtest.FixtureForeignDomain})
			}, nil, nil},
		{"5.3/4xx-to-MAIL-keeps-mail-queued", "a 4xx to MAIL bounced",
			withQueue(queueBugs{bounceAllTemp: true}), nil, nil},
		{"RFC3030/BDAT-counts-octets", "BDAT sizes in characters", nil,
			func(t *testing.T, cfg *odmrtest.ProviderConfig) {
				cfg.Dial = proxyDial(t, *cfg, charCountingBDAT, nil)
			}, nil},
		{"RFC2195/short-digest-535", "digests compared by prefix", nil,
			func(t *testing.T, cfg *odmrtest.ProviderConfig) {
				down, up := prefixDigest(cfg.Secret)
				cfg.Dial = proxyDial(t, *cfg, down, up)
			}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.check+"/"+tt.why, func(t *testing.T) {
			if tt.fake != nil {
				cfg := newFakeProvider(t, &fakeQueue{bugs: *tt.fake})
				if tt.conf != nil {
					tt.conf(t, &cfg)
				}
				res := findCheck(t, tt.check).Run(context.Background(), cfg)
				if res.Status != odmrtest.Fail {
					t.Fatalf("%s with %s: %s, want FAIL", tt.check, tt.why, res)
				}
				t.Logf("%s", res)
				// Without the bug, the fake passes.
				cfg = newFakeProvider(t, &fakeQueue{})
				if tt.conf != nil {
					tt.conf(t, &cfg)
				}
				if res := findCheck(t, tt.check).Run(context.Background(), cfg); res.Status != odmrtest.Pass {
					t.Errorf("against the fake without the bug: %s, want PASS", res)
				}
				return
			}
			var opts []func(*odmr.Provider)
			if tt.prov != nil {
				opts = append(opts, tt.prov)
			}
			p, cfg := odmrtest.NewProvider(t, opts...)
			if q, ok := p.Queue.(*fakeQueue); ok {
				cfg.Enqueue = q.enqueue
			}
			if tt.conf != nil {
				tt.conf(t, &cfg)
			}
			cfg.Timeout = 5 * time.Second
			c := findCheck(t, tt.check)
			res := c.Run(context.Background(), cfg)
			if res.Status != odmrtest.Fail {
				t.Fatalf("%s with %s: %s, want FAIL", tt.check, tt.why, res)
			}
			t.Logf("%s", res)
			// The same check passes against the provider without the bug.
			_, good := odmrtest.NewProvider(t)
			if res := c.Run(context.Background(), good); res.Status != odmrtest.Pass {
				t.Errorf("against the correct provider: %s, want PASS", res)
			}
		})
	}
}

// TestOutcomesAllowRunEndingAfterTemporaryFailure runs the outcome
// checks against providers that end a delivery run at the first
// temporary failure, as Exim 4.99.1 does: one that keeps the messages it
// did not get to for the next ATRN passes (RFC 2645 does not make one
// ATRN empty the queue, and RFC 5321 section 4.5.4.1 lets a client put
// off a destination that failed). One that ends a run after its second
// message, which fails temporarily, and deletes the rest fails: the next
// run lacks them. 5.3/4xx-keeps-mail-queued allows the same end of a run.
func TestOutcomesAllowRunEndingAfterTemporaryFailure(t *testing.T) {
	type outcome struct {
		bugs queueBugs
		want odmrtest.Status
	}
	keeps := outcome{queueBugs{stopAfterTemp: true}, odmrtest.Pass}
	loses := outcome{queueBugs{loseRest: true}, odmrtest.Fail}
	for id, cases := range map[string][]outcome{
		"5.3/per-recipient-outcomes":  {keeps, loses},
		"RFC2920/PIPELINING-outcomes": {keeps, loses},
		"RFC3030/CHUNKING-outcomes":   {keeps, loses},
		// Its two messages are both tried before loseRest ends a run.
		"5.3/4xx-keeps-mail-queued": {keeps},
	} {
		t.Run(id, func(t *testing.T) {
			for _, tt := range cases {
				q := &fakeQueue{bugs: tt.bugs}
				_, cfg := odmrtest.NewProvider(t, func(p *odmr.Provider) { p.Queue = q })
				cfg.Enqueue = q.enqueue
				cfg.Timeout = 5 * time.Second
				res := findCheck(t, id).Run(context.Background(), cfg)
				if res.Status != tt.want {
					t.Errorf("%+v: %s, want %s", tt.bugs, res, tt.want)
				} else {
					t.Logf("%+v: %s", tt.bugs, res)
				}
			}
		})
	}
}
