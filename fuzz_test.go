package odmr

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-odmr/odmr/internal/saslmech"
	"github.com/go-odmr/odmr/internal/wire"
)

// Native fuzz targets. Their committed seed corpora live in
// testdata/fuzz/FuzzX; the seeds below repeat the most important ones so
// that they run even when the corpus directory is missing.

const (
	fuzzUser      = "alice"
	fuzzSecret    = "s3cret"
	fuzzChallenge = "<1896.697170952@provider.test>"
)

// fuzzHang bounds how long any step of a fuzz input may take before it is
// reported as a hang. It is never reached by a correct implementation. In
// the synctest bubbles of FuzzProviderSession and FuzzCustomerReplies it
// is on the bubble's clock, which moves only once every goroutine of the
// session waits: reaching it there means a deadlock, found at once.
const fuzzHang = 10 * time.Second

// abnfDomainRE is the domain of the ATRN ABNF of RFC 2645 section 5.2.1,
// with single labels allowed, in lower case.
var abnfDomainRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)

// parseATRNSeeds are ATRN arguments: what peers send, and each way to be
// wrong.
func parseATRNSeeds() []string {
	return []string{
		"", "example.org", "example.org,example.com", "example.org, example.com",
		"EXAMPLE.ORG.", "vm", "a-b.c-d.e", "-bad.org", "bad-.org", "a..b", ".", ",",
		"example.org,", "exa_mple.org", "ex ample.org", "exämple.org", "a@b.org",
		"example.org\r\n", "example.org\x00", strings.Repeat("a", 64) + ".org",
		strings.Repeat("a.", 130) + "org", strings.Repeat("x,", 300),
	}
}

func FuzzParseATRN(f *testing.F) {
	for _, s := range parseATRNSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		domains, err := ParseATRN(arg)
		if err != nil {
			if domains != nil {
				t.Fatalf("ParseATRN(%q) returned domains %q with error %v", arg, domains, err)
			}
			if !strings.HasPrefix(err.Error(), "odmr: ") {
				t.Fatalf("error %q lacks the odmr: prefix", err)
			}
			return
		}
		if strings.ContainsAny(strings.TrimSpace(arg), "\r\n\x00") {
			t.Fatalf("ParseATRN(%q) accepted a CR, LF or NUL inside the argument: %q", arg, domains)
		}
		seen := make(map[string]bool)
		for _, d := range domains {
			if d != strings.ToLower(d) {
				t.Fatalf("ParseATRN(%q): domain %q is not lower case", arg, d)
			}
			if !abnfDomainRE.MatchString(d) {
				t.Fatalf("ParseATRN(%q): domain %q does not match the ABNF", arg, d)
			}
			if len(d) > 253 {
				t.Fatalf("ParseATRN(%q): domain %q is longer than 253", arg, d)
			}
			for _, l := range strings.Split(d, ".") {
				if len(l) > 63 {
					t.Fatalf("ParseATRN(%q): label %q is longer than 63", arg, l)
				}
			}
			if seen[d] {
				t.Fatalf("ParseATRN(%q): domain %q twice", arg, d)
			}
			seen[d] = true
			again, err := ParseATRN(d)
			if err != nil || len(again) != 1 || again[0] != d {
				t.Fatalf("domain %q from %q re-parses as %q, %v", d, arg, again, err)
			}
		}
		line := FormatATRN(domains)
		rest, ok := strings.CutPrefix(line, "ATRN")
		if !ok {
			t.Fatalf("FormatATRN(%q) = %q", domains, line)
		}
		again, err := ParseATRN(rest)
		if err != nil || !slices.Equal(again, domains) || (len(domains) == 0) != (again == nil) {
			t.Fatalf("FormatATRN(%q) = %q re-parses as %q, %v", domains, line, again, err)
		}
		// Domain names are case-insensitive: the upper-case argument means
		// the same domains.
		upper, err := ParseATRN(strings.ToUpper(arg))
		if err != nil || !slices.Equal(upper, domains) {
			t.Fatalf("ParseATRN(%q) = %q, but the upper-case form gives %q, %v", arg, domains, upper, err)
		}
	})
}

// cramResponseFor computes the CRAM-MD5 response to challenge, base64ed.
func cramResponseFor(user, secret, challenge string) string {
	m := hmac.New(md5.New, []byte(secret))
	m.Write([]byte(challenge))
	return base64.StdEncoding.EncodeToString([]byte(user + " " + hex.EncodeToString(m.Sum(nil))))
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// seed is a named fuzz input; the name is that of its file in
// testdata/fuzz.
type seed struct{ name, input string }

// providerSessionSeeds are customer byte streams: complete sessions,
// peers seen in the wild, and abuse.
func providerSessionSeeds() []seed {
	cram := cramResponseFor(fuzzUser, fuzzSecret, fuzzChallenge)
	plain := b64("\x00" + fuzzUser + "\x00" + fuzzSecret)
	reversed := "220 example.org ready to receive email\r\n" +
		"250-example.org\r\n250 SIZE\r\n" +
		"250 OK\r\n250 OK, recipient accepted\r\n354 go ahead\r\n250 OK\r\n" +
		"250 OK\r\n250 OK\r\n354 go ahead\r\n250 OK\r\n" +
		"221 example.org closing connection\r\n"
	return []seed{
		// RFC 2645 section 6.
		{"rfc2645-section6", "EHLO example.org\r\nAUTH CRAM-MD5\r\n" + cram + "\r\nATRN example.org,example.com\r\n" + reversed},
		// fetchmail: single-label EHLO, one domain, no QUIT of its own.
		{"fetchmail", "EHLO vm\r\nAUTH CRAM-MD5\r\n" + cram + "\r\nATRN example.org\r\n" + reversed},
		// fetchmail with esmtpname: a second AUTH.
		{"fetchmail-esmtpname", "EHLO vm\r\nAUTH CRAM-MD5\r\n" + cram + "\r\nAUTH CRAM-MD5\r\n" + cram + "\r\nATRN example.org\r\n"},
		// PLAIN with an initial response, bare ATRN, temporary failures.
		{"plain-bare-atrn-failures", "EHLO x\r\nAUTH PLAIN " + plain + "\r\nATRN\r\n220 x\r\n250 x\r\n451 later\r\n250 reset\r\n550 no\r\n250 reset\r\n221 bye\r\n"},
		// PLAIN without an initial response, LOGIN.
		{"plain-no-initial-response", "EHLO x\r\nAUTH PLAIN\r\n" + plain + "\r\nQUIT\r\n"},
		{"login", "EHLO x\r\nAUTH LOGIN\r\n" + b64(fuzzUser) + "\r\n" + b64(fuzzSecret) + "\r\nATRN example.com\r\n220 x\r\n"},
		{"login-initial-response", "EHLO x\r\nAUTH LOGIN " + b64(fuzzUser) + "\r\n" + b64(fuzzSecret) + "\r\nQUIT\r\n"},
		// SCRAM client-first message (RFC 7677 example).
		{"scram-first", "EHLO x\r\nAUTH SCRAM-SHA-256 " + b64("n,,n=alice,r=rOprNGfwEbeRWgbNEkqO") + "\r\n*\r\n"},
		// Pipelined commands in one packet, greeting pipelined after ATRN.
		{"pipelined", "EHLO a\r\nNOOP\r\nRSET\r\nHELO b\r\nAUTH CRAM-MD5\r\n" + cram + "\r\nATRN example.org\r\n220 pipelined\r\n"},
		// Errors: before AUTH, foreign domain, bad syntax, second EHLO.
		{"atrn-errors", "ATRN example.org\r\nEHLO x\r\nATRN\r\nAUTH CRAM-MD5\r\n" + cram + "\r\nATRN example.net\r\nATRN exa_mple.org\r\nATRN example.org,,\r\nEHLO y\r\nQUIT\r\n"},
		// Other commands.
		{"other-commands", "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@example.org>\r\nDATA\r\nVRFY x\r\nEXPN x\r\nTURN\r\nETRN example.org\r\nSTARTTLS\r\nHELP\r\nXYZZY\r\n\r\n"},
		// Long lines.
		{"long-ehlo", "EHLO " + strings.Repeat("x", 5000) + "\r\nEHLO x\r\n"},
		{"long-auth", "AUTH CRAM-MD5 " + strings.Repeat("A", 13000) + "\r\n"},
		// A line without end: RFC 5321 section 3.8 allows closing only
		// with 421.
		{"endless-line", strings.Repeat("y", 70000)},
		// Invalid base64, cancel, wrong secret, unknown mechanism.
		{"auth-errors", "EHLO x\r\nAUTH CRAM-MD5\r\n!!!notbase64\r\nAUTH CRAM-MD5\r\n*\r\nAUTH CRAM-MD5\r\n" + b64("alice 00000000000000000000000000000000") + "\r\nAUTH X-UNKNOWN\r\nAUTH PLAIN *\r\nAUTH PLAIN =\r\n"},
		// Cross-protocol: an HTTP request.
		{"http-get", "GET / HTTP/1.1\r\nHost: provider.test\r\n\r\n"},
		// Bare LF, bare CR and NUL.
		{"bare-lf", "EHLO x\nAUTH PLAIN " + plain + "\nATRN\n220 x\n"},
		{"bare-cr-nul", "EHLO x\rNOOP\r\nNOOP\x00\r\nQUIT\r\n"},
		// A broken customer after the role swap.
		{"broken-customer", "EHLO x\r\nAUTH PLAIN " + plain + "\r\nATRN example.org\r\n220 x\r\n250-x\r\nbogus\r\n"},
		{"refusing-customer", "EHLO x\r\nAUTH PLAIN " + plain + "\r\nATRN example.org\r\n554 go away\r\n"},
		// Too many errors.
		{"too-many-errors", strings.Repeat("MAIL FROM:<a@b>\r\n", 12)},
	}
}

// Flag bits of FuzzProviderSession.
const (
	fuzzLineByLine   = 1 << iota // write the input one line at a time
	fuzzInsecureAuth             // set AllowInsecureAuth
	fuzzCloseEarly               // close as soon as the input is written
)

func FuzzProviderSession(f *testing.F) {
	for _, s := range providerSessionSeeds() {
		f.Add([]byte(s.input), uint8(fuzzInsecureAuth))
		f.Add([]byte(s.input), uint8(fuzzLineByLine))
	}
	f.Fuzz(func(t *testing.T, input []byte, flags uint8) {
		// The bubble lets the customer wait for the provider to go quiet
		// (synctest.Wait) instead of polling, and synctest.Test returns
		// only once every goroutine the session started has ended: it
		// fails if one is stuck, which is the goroutine-leak check.
		synctest.Test(t, func(t *testing.T) { fuzzSession(t, input, flags) })
	})
}

// watchQueue notes when the provider has mail to send, which is when its
// next reply is the 250 that reverses the roles.
type watchQueue struct {
	memQueue
	reversing atomic.Bool
}

func (w *watchQueue) HasMail(ctx context.Context, domains []string) (bool, error) {
	ok, err := w.memQueue.HasMail(ctx, domains)
	if ok && err == nil {
		w.reversing.Store(true)
	}
	return ok, err
}

// quietConn watches the provider's reads, so the fuzz customer can tell
// when the provider has taken every byte sent and waits for more.
type quietConn struct {
	net.Conn
	seq      atomic.Int64 // numbers the reads
	current  atomic.Int64 // the read under way, 0 if none
	lastData atomic.Int64 // the last read that returned bytes
	consumed atomic.Int64 // bytes returned by reads
}

func (c *quietConn) Read(p []byte) (int, error) {
	seq := c.seq.Add(1)
	c.current.Store(seq)
	n, err := c.Conn.Read(p)
	c.consumed.Add(int64(n))
	if n > 0 {
		c.lastData.Store(seq)
	}
	c.current.Store(0)
	return n, err
}

// waiting reports whether the provider has read all sent bytes and is
// blocked in a later read.
func (c *quietConn) waiting(sent int64) bool {
	cur := c.current.Load()
	return c.consumed.Load() == sent && cur != 0 && cur > c.lastData.Load()
}

func newFuzzProvider(insecure bool) (*Provider, *watchQueue) {
	q := &watchQueue{memQueue: newMemQueue()}
	body := "Subject: fuzz\r\n\r\n.\r\n..dots\r\nbody\r\n"
	q.Enqueue(Envelope{From: "s@x.test", To: []string{"u@example.org", "v@example.net"}}, strings.NewReader(body))
	q.Enqueue(Envelope{From: "", To: []string{"w@example.com"}}, strings.NewReader(body))
	accts := testAccounts{
		fuzzUser: {Name: fuzzUser, Secret: fuzzSecret, Domains: []string{"example.org", "example.com"}},
		"bob":    {Name: "bob", Secret: "bobs-secret", Domains: []string{"example.net"}},
	}
	p := &Provider{
		Hostname:          "provider.test",
		Authenticator:     accts,
		Authorizer:        accts,
		Queue:             q,
		AllowInsecureAuth: insecure,
		Logger:            slog.New(slog.DiscardHandler),
		challenge:         func(string) []byte { return []byte(fuzzChallenge) },
	}
	return p, q
}

// fuzzSession feeds input to Provider.Serve as the customer over
// net.Pipe and checks every byte the provider writes. It runs in a
// synctest bubble.
func fuzzSession(t *testing.T, input []byte, flags uint8) {
	p, q := newFuzzProvider(flags&fuzzInsecureAuth != 0)
	cli, srv := net.Pipe()
	qc := &quietConn{Conn: srv}

	served := make(chan error, 1)
	go func() { served <- p.Serve(qc) }()

	// The reader checks the provider's output as it comes.
	checked := make(chan error, 1)
	oc := &outputChecker{}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			reversing := q.reversing.Load()
			n, err := cli.Read(buf)
			if e := oc.feed(buf[:n], reversing); e != nil {
				checked <- e
				io.Copy(io.Discard, cli)
				return
			}
			if err != nil {
				checked <- oc.end()
				return
			}
		}
	}()

	// The writer sends the input, then waits until the provider has read
	// it all and waits for more, or has ended the session.
	wrote := make(chan struct{})
	var sent int64
	go func() {
		defer close(wrote)
		chunks := [][]byte{input}
		if flags&fuzzLineByLine != 0 {
			chunks = bytes.SplitAfter(input, []byte("\n"))
		}
		for _, c := range chunks {
			if len(c) == 0 {
				continue
			}
			n, err := cli.Write(c)
			sent += int64(n)
			if err != nil {
				return
			}
		}
	}()
	providerClosed := false
	select {
	case <-wrote:
	case err := <-served:
		// The provider ended the session before taking all the input.
		served <- err
		providerClosed = true
		<-wrote
	case <-time.After(fuzzHang):
		t.Fatalf("provider neither read the input nor ended the session within %v", fuzzHang)
	}
	if flags&fuzzCloseEarly == 0 && !providerClosed {
		providerClosed = waitQuiet(t, qc, sent, served)
	}
	cli.Close()

	select {
	case err := <-served:
		if err != nil && strings.Contains(err.Error(), "panic") {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(fuzzHang):
		t.Fatalf("Serve did not return within %v of the customer closing the connection", fuzzHang)
	}
	if err := <-checked; err != nil {
		t.Fatalf("input %s: %v", short(input), err)
	}
	// RFC 5321 section 3.8: a server closes the connection only after
	// its 221 to QUIT, or with a 421 reply.
	if providerClosed && !oc.reversed && !oc.closed {
		t.Fatalf("input %s: the provider closed the connection after %q, without a 221 or 421 reply (RFC 5321 section 3.8)", short(input), oc.last)
	}
}

// short quotes b, shortened to 300 bytes.
func short(b []byte) string {
	if len(b) > 300 {
		return fmt.Sprintf("%q... (%d bytes)", b[:300], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// waitQuiet returns once the provider has read every byte sent and waits
// for more, or has ended the session; it reports which. It runs in a
// synctest bubble: once every goroutine of the bubble is blocked, the
// provider is either done or in a read with nothing left to read.
func waitQuiet(t *testing.T, qc *quietConn, sent int64, served chan error) (ended bool) {
	synctest.Wait()
	select {
	case err := <-served:
		served <- err
		return true
	default:
	}
	if !qc.waiting(sent) {
		t.Fatalf("provider neither waited for input nor ended the session")
	}
	return false
}

// outputChecker checks that what the provider writes before the role
// swap is a sequence of well-formed SMTP replies (RFC 5321 section 4.2),
// that nothing follows a reply that closes the session, and that no line
// it ever writes ends in a bare LF. Its fields are read once the reader
// is done.
type outputChecker struct {
	pending  []byte
	reversed bool
	multi    int    // code of an unfinished multi-line reply
	closed   bool   // a 221 or 421 reply was sent
	last     string // the last reply line
	all      []byte
}

func (oc *outputChecker) feed(chunk []byte, reversing bool) error {
	oc.all = append(oc.all, chunk...)
	if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
		// A bare LF anywhere, including at a chunk boundary.
		prev := oc.pending
		for j := 0; j < len(chunk); j++ {
			if chunk[j] != '\n' {
				continue
			}
			var before byte
			switch {
			case j > 0:
				before = chunk[j-1]
			case len(prev) > 0:
				before = prev[len(prev)-1]
			}
			if before != '\r' {
				return fmt.Errorf("provider wrote a bare LF: output so far %s", short(oc.all))
			}
		}
	}
	if oc.reversed {
		if len(chunk) > 0 {
			oc.pending = chunk[len(chunk)-1:]
		}
		return nil
	}
	if reversing && len(oc.pending) == 0 {
		// The provider's 250 to ATRN was written after this read began:
		// check it if this chunk holds it, then stop checking replies.
		oc.reversed = true
		if line, _, ok := bytes.Cut(chunk, []byte("\r\n")); ok && bytes.HasPrefix(chunk, []byte("250")) {
			if !bytes.HasPrefix(line, []byte("250 ")) {
				return fmt.Errorf("the 250 to ATRN is not a single line: %q", line)
			}
		}
		if len(chunk) > 0 {
			oc.pending = chunk[len(chunk)-1:]
		}
		return nil
	}
	oc.pending = append(oc.pending, chunk...)
	for {
		i := bytes.Index(oc.pending, []byte("\r\n"))
		if i < 0 {
			break
		}
		line := oc.pending[:i]
		oc.pending = oc.pending[i+2:]
		if err := oc.line(line); err != nil {
			return err
		}
	}
	return nil
}

func (oc *outputChecker) line(line []byte) error {
	if oc.closed {
		return fmt.Errorf("provider wrote %q after closing the session; output %s", line, short(oc.all))
	}
	if len(line) < 4 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' || line[2] < '0' || line[2] > '9' || (line[3] != ' ' && line[3] != '-') {
		return fmt.Errorf("malformed reply line %q; output %s", line, short(oc.all))
	}
	if bytes.ContainsAny(line, "\r\n\x00") {
		return fmt.Errorf("reply line %q holds a CR, LF or NUL", line)
	}
	oc.last = string(line)
	code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if oc.multi != 0 && code != oc.multi {
		return fmt.Errorf("multi-line reply changes its code from %d to %d; output %s", oc.multi, code, short(oc.all))
	}
	if line[3] == '-' {
		oc.multi = code
		return nil
	}
	oc.multi = 0
	if code == 221 || code == 421 {
		oc.closed = true
	}
	return nil
}

// end checks what is left when the output ends.
func (oc *outputChecker) end() error {
	if !oc.reversed && len(oc.pending) > 0 {
		return fmt.Errorf("provider output ends in an unterminated line %q", oc.pending)
	}
	if !oc.reversed && oc.multi != 0 {
		return fmt.Errorf("provider output ends inside a multi-line %d reply", oc.multi)
	}
	return nil
}

func FuzzCRAMMD5Server(f *testing.F) {
	f.Add("alice", "", []byte(nil), true)
	f.Add("alice", "0123456789abcdef0123456789abcdef", []byte(nil), false)
	f.Add("alice", "0123456789ABCDEF0123456789ABCDEF", []byte(nil), false)
	f.Add("bob", "", []byte(nil), true)
	f.Add("al ice", "", []byte(nil), true)
	f.Add("", "", []byte(nil), true)
	f.Add("alice", "zz", []byte(nil), false)
	f.Add("alice", "", []byte("initial"), true)
	f.Add("alice\x00", "", []byte(nil), true)
	f.Fuzz(func(t *testing.T, user, digest string, initial []byte, fix bool) {
		calls := 0
		lookup := func(u string) ([]byte, error) {
			calls++
			if u == fuzzUser {
				return []byte(fuzzSecret), nil
			}
			return nil, ErrUnknownUser
		}
		srv := saslmech.NewCRAMMD5Server("provider.test", lookup, ErrUnknownUser, ErrAuthFailed)
		chal, done, err := srv.Next(initial)
		if len(initial) > 0 {
			// CRAM-MD5 has no initial response.
			if err == nil || done {
				t.Fatalf("initial response %q accepted", initial)
			}
			return
		}
		if err != nil || done {
			t.Fatalf("first step: %q, %v, %v", chal, done, err)
		}
		if !regexp.MustCompile(`^<[0-9]+\.[0-9]+@provider\.test>$`).Match(chal) {
			t.Fatalf("challenge %q is not <random.timestamp@hostname> (RFC 2195 section 2)", chal)
		}
		m := hmac.New(md5.New, []byte(fuzzSecret))
		m.Write(chal)
		correct := hex.EncodeToString(m.Sum(nil))
		if fix {
			digest = correct
		}
		resp := user + " " + digest
		// RFC 2195: the user name, a space, the digest in hex; the user
		// name ends at the last space.
		i := strings.LastIndexByte(resp, ' ')
		want := resp[:i] == fuzzUser && len(resp)-i-1 == 32 && strings.EqualFold(resp[i+1:], correct)
		calls = 0
		_, done, err = srv.Next([]byte(resp))
		if done != want || (err == nil) != want {
			t.Fatalf("response %q: done %v, err %v; want success %v", resp, done, err, want)
		}
		if calls > 1 {
			t.Fatalf("the secret was looked up %d times", calls)
		}
		if !want && !errors.Is(err, ErrAuthFailed) && !errors.Is(err, saslmech.ErrCRAMResponse) {
			t.Fatalf("response %q failed with %v, want ErrAuthFailed or a malformed-response error", resp, err)
		}
	})
}

// authExchange runs a provider session over net.Pipe in lock step: it
// sends each line and returns the code of each reply.
func authExchange(t *testing.T, insecure bool, lines ...string) []int {
	t.Helper()
	p, _ := newFuzzProvider(insecure)
	cli, srv := net.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.Serve(srv)
	}()
	defer wg.Wait()
	defer cli.Close()
	cli.SetDeadline(time.Now().Add(fuzzHang))
	tp := textproto.NewConn(cli)
	if code, msg, err := tp.ReadResponse(220); err != nil {
		t.Fatalf("greeting: %d %q %v", code, msg, err)
	}
	var codes []int
	for _, l := range lines {
		// Write while reading: over net.Pipe a provider that answers an
		// endless line before reading all of it would otherwise deadlock
		// with a writer that is still sending (TCP buffers hide this).
		wrote := make(chan error, 1)
		go func() { wrote <- tp.PrintfLine("%s", l) }()
		code, _, err := tp.ReadResponse(0)
		var te *textproto.Error
		if err != nil && !errors.As(err, &te) {
			t.Fatalf("reply to %q: %v (codes so far %v)", l, err, codes)
		}
		codes = append(codes, code)
		if werr := <-wrote; werr != nil {
			if code == 421 {
				return codes // the provider closed on the line, as it may
			}
			t.Fatalf("writing %q: %v", l, werr)
		}
	}
	return codes
}

func FuzzPlain(f *testing.F) {
	for _, s := range []string{
		"\x00alice\x00s3cret", "alice\x00alice\x00s3cret", "bob\x00alice\x00s3cret",
		"\x00alice\x00wrong", "\x00bob\x00s3cret", "\x00alice\x00s3cret\x00", "alice", "",
		"\x00\x00", "\x00alice\x00s3cre\xff",
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, response []byte, initial bool) {
		parts := bytes.Split(response, []byte{0})
		want := 535
		if len(parts) == 3 && (len(parts[0]) == 0 || string(parts[0]) == fuzzUser) &&
			string(parts[1]) == fuzzUser && string(parts[2]) == fuzzSecret {
			want = 235
		}
		enc := base64.StdEncoding.EncodeToString(response)
		var codes []int
		switch {
		case initial && enc == "":
			codes = authExchange(t, true, "EHLO x", "AUTH PLAIN =")
		case initial && len("AUTH PLAIN "+enc) > maxCommandLine:
			// Too long for a command line (RFC 4954 section 4: the client
			// must then send the response after the 334).
			want = 500
			codes = authExchange(t, true, "EHLO x", "AUTH PLAIN "+enc)
		case initial:
			codes = authExchange(t, true, "EHLO x", "AUTH PLAIN "+enc)
		default:
			if len(enc) > maxSASLLine {
				want = 500
			}
			codes = authExchange(t, true, "EHLO x", "AUTH PLAIN", enc)
			if codes[1] != 334 {
				t.Fatalf("AUTH PLAIN answered %d, want 334", codes[1])
			}
		}
		if got := codes[len(codes)-1]; got != want && !(want == 500 && got == 421 && endless(len(enc))) {
			t.Fatalf("PLAIN %s: %d, want %d", short(response), got, want)
		}
	})
}

// endless reports whether a line of n bytes may be taken for an endless
// one, which the provider answers with 421 and a close rather than 500
// (the boundary depends on how the reads fall, so a read buffer's worth of
// lengths accept either).
func endless(n int) bool { return n > wire.MaxDiscard-4096 }

func FuzzLogin(f *testing.F) {
	f.Add([]byte("alice"), []byte("s3cret"), true)
	f.Add([]byte("alice"), []byte("s3cret"), false)
	f.Add([]byte("alice"), []byte("wrong"), false)
	f.Add([]byte(""), []byte(""), true)
	f.Add([]byte("bob"), []byte("s3cret"), false)
	f.Add([]byte("alice\x00"), []byte("s3cret"), false)
	f.Fuzz(func(t *testing.T, user, pass []byte, initial bool) {
		u, pw := base64.StdEncoding.EncodeToString(user), base64.StdEncoding.EncodeToString(pass)
		// The exchange, each line with the reply it should get. A line
		// over the limit gets 500 and ends the exchange.
		lines := []string{"EHLO x"}
		codes := []int{250}
		add := func(line string, code, limit int) bool {
			lines = append(lines, line)
			if len(line) > limit {
				codes = append(codes, 500)
				return false
			}
			codes = append(codes, code)
			return true
		}
		ok := true
		if initial {
			if u == "" {
				u = "="
			}
			ok = add("AUTH LOGIN "+u, 334, maxCommandLine)
		} else {
			ok = add("AUTH LOGIN", 334, maxCommandLine) && add(u, 334, maxSASLLine)
		}
		if ok {
			want := 535
			if string(user) == fuzzUser && string(pass) == fuzzSecret {
				want = 235
			}
			add(pw, want, maxSASLLine)
		}
		got := authExchange(t, true, lines...)
		if n := len(got); n == len(codes) && codes[n-1] == 500 && got[n-1] == 421 && endless(len(lines[n-1])) {
			codes[n-1] = 421
		}
		if !slices.Equal(got, codes) {
			t.Fatalf("LOGIN %s %s: replies %v, want %v", short(user), short(pass), got, codes)
		}
	})
}
