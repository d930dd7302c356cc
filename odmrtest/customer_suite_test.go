package odmrtest_test

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtest"
)

// The customer suite must catch broken customers, not only pass a good
// one. These tests run checks against this library's customer with a
// knob turned the wrong way, against adapters that misreport, and against
// rawCustomer, a hand-written customer with one fault at a time.

func findCustomerCheck(t *testing.T, id string) odmrtest.Check {
	t.Helper()
	for _, c := range odmrtest.CustomerChecks() {
		if c.ID() == id {
			return c
		}
	}
	t.Fatalf("no customer check %s", id)
	return odmrtest.Check{}
}

// mapOutcome wraps cfg's Fetch so that f rewrites each outcome.
func mapOutcome(cfg odmrtest.CustomerConfig, f func(*odmrtest.CustomerOutcome)) odmrtest.CustomerConfig {
	fetch := cfg.Fetch
	cfg.Fetch = func(ctx context.Context, addr string) odmrtest.CustomerOutcome {
		out := fetch(ctx, addr)
		f(&out)
		return out
	}
	return cfg
}

// TestCustomerSuiteCatchesBrokenCustomers runs each check over pipes in a
// synctest bubble: the suite's ATRN delay and timeouts, and the
// customer's, run on the bubble's clock, so a customer that gives up
// after 100 ms does so 100 ms into the suite's 3 s delay however loaded
// the machine.
func TestCustomerSuiteCatchesBrokenCustomers(t *testing.T) {
	lib := func(opts ...func(*odmr.Customer)) odmrtest.CustomerConfig {
		return odmrtest.NewCustomer(append(opts, func(c *odmr.Customer) { c.Dial = pipes.dialNet })...)
	}
	tests := []struct {
		check string
		why   string
		cfg   odmrtest.CustomerConfig
	}{
		{"4/connects-and-reads-greeting", "EHLO before the greeting", raw(rawCustomer{speakFirst: true})},
		{"5.1.1/sends-EHLO", "HELO", raw(rawCustomer{helo: true})},
		{"5.1.1/refuses-provider-without-ATRN", "AUTH without ATRN offered", raw(rawCustomer{ignoreNoATRN: true})},
		{"5.1.2/CRAM-MD5", "a wrong secret", lib(func(c *odmr.Customer) { c.Secret = "not-the-secret" })},
		{"5.1.2/CRAM-MD5", "upper-case hex", raw(rawCustomer{upperHex: true})},
		{"5.1.2/no-PLAIN-in-clear", "PLAIN allowed in clear text", lib(func(c *odmr.Customer) { c.AllowInsecureAuth = true })},
		{"5.1.2/no-ATRN-after-535", "ATRN after 535", raw(rawCustomer{atrnAfter535: true})},
		{"5.2.1/sends-ATRN-with-its-domains", "one domain of two", lib(func(c *odmr.Customer) { c.Domains = c.Domains[:1] })},
		{"5.2.1/sends-ATRN-with-its-domains", "a space after the comma", raw(rawCustomer{atrnSpaces: true})},
		// The check ends when the customer gives up, 100 ms into the
		// suite's delay of 3 s.
		{"5.2.1/waits-for-ATRN-reply", "an ATRN timeout shorter than the delay",
			lib(func(c *odmr.Customer) { c.ATRNTimeout = 100 * time.Millisecond })},
		{"5.2.1/453-is-no-mail", "no mail reported as a failure", mapOutcome(lib(), func(o *odmrtest.CustomerOutcome) {
			if o.Kind == odmrtest.OutcomeNoMail {
				o.Kind = odmrtest.OutcomeFailed
			}
		})},
		{"5.2.1/450-refused", "a refusal reported as success", mapOutcome(lib(), func(o *odmrtest.CustomerOutcome) {
			if o.Kind == odmrtest.OutcomeRefused {
				o.Kind = odmrtest.OutcomeOK
			}
		})},
		{"5.2.1/450-refused", "a greeting after 450", raw(rawCustomer{greetAfterRefusal: true})},
		{"5.3/sends-220-after-250", "a 554 greeting", raw(rawCustomer{greeting: "554 not now"})},
		{"5.3/receives-mail", "the sink loses the message", mapOutcome(lib(), func(o *odmrtest.CustomerOutcome) { o.Messages = nil })},
		{"5.3/receives-mail", "dot-stuffing not undone", mapOutcome(lib(), func(o *odmrtest.CustomerOutcome) {
			for i := range o.Messages {
				o.Messages[i].Body = strings.Replace(o.Messages[i].Body, "\r\n.leading dot", "\r\n..leading dot", 1)
			}
		})},
		{"5.3/per-recipient-refusal", "every recipient accepted", raw(rawCustomer{})},
		{"5.3/QUIT-221", "no close after 221", raw(rawCustomer{stayAfterQuit: true})},
		{"5.3/provider-cuts-mid-DATA", "the partial message delivered", raw(rawCustomer{deliverPartial: true})},
	}
	for _, tt := range tests {
		t.Run(tt.check+"/"+tt.why, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tt.cfg.Timeout = 5 * time.Second
				tt.cfg.Listen = pipes.listen
				res := findCustomerCheck(t, tt.check).RunCustomer(t.Context(), tt.cfg)
				if res.Status != odmrtest.Fail {
					t.Fatalf("%s with %s: %s, want FAIL", tt.check, tt.why, res)
				}
				t.Logf("%s", res)
			})
		})
	}
}

// TestCustomerSuiteRedactsSecrets checks that neither the results nor
// the transcripts show the customer's secret or its SASL responses, also
// when a broken customer sends the secret with PLAIN.
func TestCustomerSuiteRedactsSecrets(t *testing.T) {
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + odmrtest.FixtureUser + "\x00" + odmrtest.FixtureSecret))
	for _, tt := range []struct {
		check string
		cfg   odmrtest.CustomerConfig
	}{
		{"5.1.2/no-PLAIN-in-clear", odmrtest.NewCustomer(func(c *odmr.Customer) { c.AllowInsecureAuth = true })},
		{"5.1.2/CRAM-MD5", odmrtest.NewCustomer()},
	} {
		var transcript strings.Builder
		tt.cfg.Debug = &transcript
		res := findCustomerCheck(t, tt.check).RunCustomer(t.Context(), tt.cfg)
		for _, s := range []string{res.String(), transcript.String()} {
			if strings.Contains(s, odmrtest.FixtureSecret) || strings.Contains(s, plain) {
				t.Errorf("%s shows the secret:\n%s", tt.check, s)
			}
		}
		if !strings.Contains(transcript.String(), "<redacted>") {
			t.Errorf("%s: no redacted line in the transcript:\n%s", tt.check, transcript.String())
		}
	}
}

// TestRawCustomerPasses makes sure that rawCustomer without a fault
// passes the checks the tests above expect it to fail, so that each
// failure above comes from its fault.
func TestRawCustomerPasses(t *testing.T) {
	cfg := raw(rawCustomer{})
	cfg.RefusedRecipient = ""
	cfg.Timeout = 5 * time.Second
	odmrtest.TestCustomer(t, cfg)
}

// TestCustomerSuiteFailsSilentCustomerWithoutHanging runs every check
// against a customer that connects and never speaks, and one that never
// connects: each check must fail once its timeout passes, never hang.
// Over pipes in a synctest bubble the timeouts run on the bubble's clock.
func TestCustomerSuiteFailsSilentCustomerWithoutHanging(t *testing.T) {
	customers := map[string]func(ctx context.Context, addr string) odmrtest.CustomerOutcome{
		"silent": func(ctx context.Context, addr string) odmrtest.CustomerOutcome {
			c, err := pipes.dialNet(ctx, "tcp", addr)
			if err != nil {
				return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeFailed, Detail: err.Error()}
			}
			defer c.Close()
			<-ctx.Done()
			return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeFailed, Detail: "gave up"}
		},
		"absent": func(ctx context.Context, addr string) odmrtest.CustomerOutcome {
			return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeFailed, Detail: "configuration error"}
		},
	}
	for name, fetch := range customers {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { runSilentCustomer(t, name, fetch) })
		})
	}
}

// runSilentCustomer runs every check against fetch, the customer called
// name, and fails if any passes.
func runSilentCustomer(t *testing.T, name string, fetch func(ctx context.Context, addr string) odmrtest.CustomerOutcome) {
	cfg := odmrtest.CustomerConfig{
		Listen:    pipes.listen,
		Fetch:     fetch,
		User:      "alice",
		Secret:    "x",
		Domains:   []string{"example.org"},
		Timeout:   300 * time.Millisecond,
		ATRNDelay: 100 * time.Millisecond,
	}
	var results []odmrtest.Result
	failed, err := odmrtest.RunCustomer(t.Context(), cfg, odmrtest.ReporterFunc(func(r odmrtest.Result) {
		results = append(results, r)
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(odmrtest.CustomerChecks()) {
		t.Fatalf("%d results for %d checks", len(results), len(odmrtest.CustomerChecks()))
	}
	for _, r := range results {
		if r.Status == odmrtest.Pass {
			t.Errorf("a %s customer passed %s", name, r)
		}
	}
	if failed == 0 {
		t.Errorf("no check failed")
	}
}

// TestRunCustomerValidatesConfig checks that a config without its
// required fields runs nothing.
func TestRunCustomerValidatesConfig(t *testing.T) {
	_, err := odmrtest.RunCustomer(t.Context(), odmrtest.CustomerConfig{}, odmrtest.ReporterFunc(func(odmrtest.Result) {
		t.Error("a check ran")
	}))
	if err == nil || !strings.Contains(err.Error(), "Fetch, User, Secret, Domains") {
		t.Fatalf("err = %v", err)
	}
	cfg := odmrtest.NewCustomer()
	cfg.RefusedRecipient = "someone@example.net"
	if _, err := odmrtest.RunCustomer(t.Context(), cfg, odmrtest.ReporterFunc(func(odmrtest.Result) {})); err == nil {
		t.Error("a RefusedRecipient outside Domains was accepted")
	}
}

// TestCustomerChecksAreNotProviderChecks checks that a customer check
// handed to Check.Run, which reaches a provider, fails with a message
// instead of panicking, and the reverse.
func TestCustomerChecksAreNotProviderChecks(t *testing.T) {
	_, pcfg := odmrtest.NewProvider(t)
	res := odmrtest.CustomerChecks()[0].Run(t.Context(), pcfg)
	if res.Status != odmrtest.Fail || !strings.Contains(res.Detail, "RunCustomer") {
		t.Errorf("customer check run against a provider: %s", res)
	}
	res = odmrtest.ProviderChecks()[0].RunCustomer(t.Context(), odmrtest.NewCustomer())
	if res.Status != odmrtest.Fail || !strings.Contains(res.Detail, "not a check of the customer suite") {
		t.Errorf("provider check run against a customer: %s", res)
	}
}

// TestLibraryCustomerOverPipes runs the suite against this library's
// customer with net.Pipe connections instead of TCP: the customer's Dial
// reaches the suite's in-memory listener.
func TestLibraryCustomerOverPipes(t *testing.T) {
	cfg := odmrtest.NewCustomer(func(c *odmr.Customer) { c.Dial = pipes.dialNet })
	cfg.Listen = pipes.listen
	odmrtest.TestCustomer(t, cfg)
}

// pipes is the in-memory network of these tests: listen opens a
// pipeListener at a new address, and dialNet reaches it, or dials TCP for
// any other address.
var pipes = &pipeNet{listeners: map[string]*pipeListener{}}

type pipeNet struct {
	mu        sync.Mutex
	n         int
	listeners map[string]*pipeListener
}

func (pn *pipeNet) listen() (net.Listener, error) {
	pn.mu.Lock()
	defer pn.mu.Unlock()
	pn.n++
	l := newPipeListener(fmt.Sprintf("pipe-%d:366", pn.n))
	l.forget = func() {
		pn.mu.Lock()
		delete(pn.listeners, l.addr.s)
		pn.mu.Unlock()
	}
	pn.listeners[l.addr.s] = l
	return l, nil
}

// dialNet has the signature of odmr.Customer.Dial.
func (pn *pipeNet) dialNet(ctx context.Context, network, addr string) (net.Conn, error) {
	pn.mu.Lock()
	l := pn.listeners[addr]
	pn.mu.Unlock()
	if l == nil {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return l.dial(ctx)
}

// pipeListener hands out the server ends of net.Pipe connections that
// dial makes.
type pipeListener struct {
	addr   pipeAddr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	forget func() // called by Close; nil if none
}

type pipeAddr struct{ s string }

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return a.s }

func newPipeListener(addr string) *pipeListener {
	return &pipeListener{addr: pipeAddr{addr}, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		if l.forget != nil {
			l.forget()
		}
	})
	return nil
}

func (l *pipeListener) Addr() net.Addr { return l.addr }

func (l *pipeListener) dial(ctx context.Context) (net.Conn, error) {
	server, client := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.closed:
	case <-ctx.Done():
	}
	server.Close()
	client.Close()
	return nil, syscall.ECONNREFUSED
}

// rawCustomer is a customer written line by line for these tests, with
// faults to turn on one at a time. Without a fault it takes every
// recipient and passes the suite, but for per-recipient-refusal.
type rawCustomer struct {
	speakFirst        bool   // EHLO before the greeting
	helo              bool   // HELO instead of EHLO
	ignoreNoATRN      bool   // AUTH even without ATRN in the EHLO reply
	upperHex          bool   // CRAM-MD5 digest in upper case
	atrnAfter535      bool   // ATRN after a failed AUTH
	atrnSpaces        bool   // "ATRN a, b"
	greetAfterRefusal bool   // a greeting after a refused ATRN
	greeting          string // the greeting after the swap; "" is 220
	stayAfterQuit     bool   // no close after its 221
	deliverPartial    bool   // delivers the text of a cut message
}

func raw(rc rawCustomer) odmrtest.CustomerConfig {
	return odmrtest.CustomerConfig{
		Fetch:            rc.fetch,
		User:             odmrtest.FixtureUser,
		Secret:           odmrtest.FixtureSecret,
		Domains:          odmrtest.FixtureDomains,
		RefusedRecipient: odmrtest.FixtureRefusedRecipient,
	}
}

// rawSession is one run of a rawCustomer.
type rawSession struct {
	conn net.Conn
	br   *bufio.Reader
}

func (s *rawSession) send(line string) error {
	_, err := io.WriteString(s.conn, line+"\r\n")
	return err
}

func (s *rawSession) line() (string, error) {
	l, err := s.br.ReadString('\n')
	return strings.TrimSuffix(l, "\r\n"), err
}

// reply reads a reply and returns its code and lines.
func (s *rawSession) reply() (string, []string, error) {
	var lines []string
	for {
		l, err := s.line()
		if err != nil {
			return "", lines, err
		}
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return l[:min(3, len(l))], lines, nil
		}
	}
}

func (s *rawSession) cmd(line string) (string, []string, error) {
	if err := s.send(line); err != nil {
		return "", nil, err
	}
	return s.reply()
}

func (rc rawCustomer) fetch(ctx context.Context, addr string) odmrtest.CustomerOutcome {
	failed := func(format string, args ...any) odmrtest.CustomerOutcome {
		return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeFailed, Detail: fmt.Sprintf(format, args...)}
	}
	conn, err := pipes.dialNet(ctx, "tcp", addr)
	if err != nil {
		return failed("%v", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	s := &rawSession{conn: conn, br: bufio.NewReader(conn)}
	if rc.speakFirst {
		s.send("EHLO customer.example")
	}
	if _, _, err := s.reply(); err != nil {
		return failed("greeting: %v", err)
	}
	hello := "EHLO customer.example"
	if rc.helo {
		hello = "HELO customer.example"
	}
	if rc.speakFirst {
		hello = "NOOP"
	}
	_, ext, err := s.cmd(hello)
	if err != nil {
		return failed("EHLO: %v", err)
	}
	if !strings.Contains(strings.Join(ext, "\n"), "ATRN") && !rc.ignoreNoATRN && !rc.helo && !rc.speakFirst {
		s.cmd("QUIT")
		return failed("no ATRN")
	}
	code, chal, err := s.cmd("AUTH CRAM-MD5")
	if err != nil || code != "334" {
		s.cmd("QUIT")
		return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeAuthFailed, Detail: "AUTH " + code}
	}
	c, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(chal[0], "334 "))
	m := hmac.New(md5.New, []byte(odmrtest.FixtureSecret))
	m.Write(c)
	digest := hex.EncodeToString(m.Sum(nil))
	if rc.upperHex {
		digest = strings.ToUpper(digest)
	}
	code, _, err = s.cmd(base64.StdEncoding.EncodeToString([]byte(odmrtest.FixtureUser + " " + digest)))
	if err != nil {
		return failed("AUTH: %v", err)
	}
	if code != "235" && !rc.atrnAfter535 {
		s.cmd("QUIT")
		return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeAuthFailed, Detail: "AUTH " + code}
	}
	atrn := "ATRN " + strings.Join(odmrtest.FixtureDomains, ",")
	if rc.atrnSpaces {
		atrn = "ATRN " + strings.Join(odmrtest.FixtureDomains, ", ")
	}
	code, _, err = s.cmd(atrn)
	switch {
	case err != nil:
		return failed("ATRN: %v", err)
	case code == "453":
		s.cmd("QUIT")
		return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeNoMail}
	case code != "250" && rc.greetAfterRefusal:
		s.send("220 customer.example ready")
		s.reply()
		return failed("ATRN %s", code)
	case code != "250":
		s.cmd("QUIT")
		return failed("ATRN %s", code)
	}
	return rc.serve(s)
}

// serve is the SMTP server of the reversed state.
func (rc rawCustomer) serve(s *rawSession) odmrtest.CustomerOutcome {
	greeting := "220 customer.example ready"
	if rc.greeting != "" {
		greeting = rc.greeting
	}
	s.send(greeting)
	var msgs []odmrtest.Message
	var cur odmrtest.Message
	for {
		line, err := s.line()
		if err != nil {
			if errors.Is(err, io.EOF) && len(msgs) == 0 {
				return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeNoMail}
			}
			return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeFailed, Detail: err.Error(), Messages: msgs}
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			s.send("250-customer.example\r\n250-8BITMIME\r\n250 PIPELINING")
		case "MAIL":
			from, _, _ := strings.Cut(strings.TrimPrefix(arg, "FROM:<"), ">")
			cur = odmrtest.Message{From: from}
			s.send("250 OK")
		case "RCPT":
			to, _, _ := strings.Cut(strings.TrimPrefix(arg, "TO:<"), ">")
			cur.To = append(cur.To, to)
			s.send("250 OK")
		case "DATA":
			s.send("354 go ahead")
			var body strings.Builder
			for {
				l, err := s.line()
				if err != nil {
					if rc.deliverPartial {
						cur.Body = body.String()
						msgs = append(msgs, cur)
					}
					return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeOK, Messages: msgs}
				}
				if l == "." {
					break
				}
				body.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
			}
			cur.Body = body.String()
			msgs = append(msgs, cur)
			s.send("250 OK")
		case "QUIT":
			s.send("221 bye")
			if rc.stayAfterQuit {
				io.Copy(io.Discard, s.conn)
			}
			kind := odmrtest.OutcomeOK
			if len(msgs) == 0 {
				kind = odmrtest.OutcomeNoMail
			}
			return odmrtest.CustomerOutcome{Kind: kind, Messages: msgs}
		default:
			s.send("502 no")
		}
	}
}

// TestCustomerUnknownOutcome runs the suite against this library's
// customer as if an operator ran it by hand: its own report unseen
// (OutcomeUnknown). Every check still passes, judging the wire and the
// sink, and notes that the report went unseen; a partial message in the
// sink still fails.
func TestCustomerUnknownOutcome(t *testing.T) {
	unknown := func(out *odmrtest.CustomerOutcome) { out.Kind, out.Detail = odmrtest.OutcomeUnknown, "run by hand" }
	cfg := mapOutcome(odmrtest.NewCustomer(), unknown)
	var results []odmrtest.Result
	failed, err := odmrtest.RunCustomer(t.Context(), cfg, odmrtest.ReporterFunc(func(r odmrtest.Result) {
		results = append(results, r)
	}))
	if err != nil {
		t.Fatal(err)
	}
	if failed != 0 {
		t.Errorf("%d checks failed:\n%v", failed, results)
	}
	found := false
	for _, r := range results {
		if r.Check.ID() == "5.2.1/453-is-no-mail" {
			found = true
			if !strings.Contains(r.Detail, "own report is unknown") {
				t.Errorf("%s does not note the unknown report: %s", r.Check.ID(), r)
			}
		}
	}
	if !found {
		t.Error("no result for 5.2.1/453-is-no-mail")
	}
	// A sink that reports a message after a 453 still fails the check.
	bad := mapOutcome(odmrtest.NewCustomer(), func(out *odmrtest.CustomerOutcome) {
		unknown(out)
		out.Messages = append(out.Messages, odmrtest.Message{From: "x@example.net", To: []string{"y@example.org"}, Body: "x\r\n"})
	})
	if r := findCustomerCheck(t, "5.2.1/453-is-no-mail").RunCustomer(t.Context(), bad); r.Status != odmrtest.Fail {
		t.Errorf("a message in the sink after a 453: %s, want FAIL", r)
	}
}
