// Package eximtest runs Exim 4.99, the one other implementation of both
// ODMR roles, for the interop tests of this module: its daemon as the
// provider and "exim -atrn" as the customer, through the scripts that
// ../shared/peers/exim/build.sh installs beside the binary.
//
// The scripts keep their state in fixed directories of the build (one
// spool, one pid file per role), so two tests cannot run Exim at the same
// time: [Open] takes an exclusive lock on the build for the rest of the
// test, across test processes too (go test runs packages in parallel), and
// the test's cleanup stops every Exim it started and clears the queues.
package eximtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DefaultDir is where build.sh installs Exim when TMPDIR is unset; the
// environment variable ODMR_EXIM_DIR overrides it.
const DefaultDir = "/tmp/exim"

// The accounts of Exim's provider (the accounts file of build.sh).
const (
	// User pulls Domains.
	User   = "customer1"
	Secret = "s3cret"
	// ForeignUser pulls ForeignDomain.
	ForeignUser   = "customer2"
	ForeignSecret = "other"
	ForeignDomain = "example.net"
)

// Domains are the domains of User on Exim's provider.
var Domains = []string{"example.org", "example.com"}

// intakeDomains are the domains Exim's provider takes mail for over SMTP
// (odmr_domains in provider.conf); other recipients are queued by local
// submission.
var intakeDomains = []string{"example.org", "example.com", "example.net"}

// Exim is the Exim build a test holds the lock of.
type Exim struct {
	// Dir is the build: inst/bin/exim, the configurations and scripts.
	Dir string
	t   testing.TB
}

// Dir returns the directory of the Exim build, ODMR_EXIM_DIR or
// DefaultDir.
func Dir() string {
	if d := os.Getenv("ODMR_EXIM_DIR"); d != "" {
		return d
	}
	return DefaultDir
}

// unavailable skips the test outside CI and fails it under CI (CI set to
// anything), whose .ci/run must build Exim.
func unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("eximtest: %s, and CI is set: .ci/run must build Exim (../shared/peers/exim/build.sh, ODMR_EXIM_DIR)", why)
	}
	t.Skipf("eximtest: %s; skipping the Exim interop test outside CI (build it with ../shared/peers/exim/build.sh as root)", why)
}

// Open finds the Exim build and locks it for the rest of the test. When
// Exim is not built, or the test does not run as root (Exim's scripts
// start Exim as root, and it drops to its own user), the test is skipped
// outside CI and fails under CI. When the test ends, every Exim it
// started is stopped and both queues are cleared.
func Open(t testing.TB) *Exim {
	t.Helper()
	dir := Dir()
	for _, f := range []string{"inst/bin/exim", "run-provider.sh", "run-customer.sh", "stop.sh", "clear-queue.sh", "provider.conf", "customer.conf"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			unavailable(t, fmt.Sprintf("no Exim build in %s (%v)", dir, err))
		}
	}
	if os.Geteuid() != 0 {
		unavailable(t, "Exim's scripts run as root, and the test does not")
	}
	unlock, err := lock(filepath.Join(dir, ".odmr-test.lock"))
	if err != nil {
		t.Fatalf("eximtest: locking the Exim build: %v", err)
	}
	e := &Exim{Dir: dir, t: t}
	// An earlier test binary that died may have left Exim running.
	if err := e.run(context.Background(), nil, "stop.sh", "all"); err != nil {
		unlock()
		t.Fatal(err)
	}
	if err := e.run(context.Background(), nil, "clear-queue.sh", "all"); err != nil {
		unlock()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer unlock()
		for _, what := range []string{"stop.sh", "clear-queue.sh"} {
			if err := e.run(context.Background(), nil, what, "all"); err != nil {
				t.Error(err)
			}
		}
	})
	return e
}

// run runs one of the build's scripts; its error carries the script's
// output.
func (e *Exim) run(ctx context.Context, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(e.Dir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("eximtest: %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// script runs one of the build's scripts; a failure fails the test.
func (e *Exim) script(ctx context.Context, env []string, name string, args ...string) {
	e.t.Helper()
	if err := e.run(ctx, env, name, args...); err != nil {
		e.t.Fatal(err)
	}
}

// CertFile is the PEM certificate (self-signed, CN=localhost, SAN
// localhost and 127.0.0.1) that Exim's provider presents and Exim's
// customer trusts; KeyFile is its key.
func (e *Exim) CertFile() string { return filepath.Join(e.Dir, "tls", "cert.pem") }

// KeyFile is the key of CertFile.
func (e *Exim) KeyFile() string { return filepath.Join(e.Dir, "tls", "key.pem") }

// Provider is Exim's daemon running as ODMR provider.
type Provider struct {
	e *Exim
	// logStart is the size of the main log when the daemon started.
	logStart int64
	// SMTPAddr takes mail for example.org, example.com and example.net;
	// ODMRAddr is the ODMR port (EHLO, AUTH, ATRN).
	SMTPAddr, ODMRAddr string
}

// StartProvider starts Exim's daemon as the provider on two free loopback
// ports, offering STARTTLS when tls is set. It is stopped when the test
// ends.
func (e *Exim) StartProvider(tls bool) *Provider {
	e.t.Helper()
	var logStart int64
	if fi, err := os.Stat(e.providerLog()); err == nil {
		logStart = fi.Size()
	}
	var env []string
	if !tls {
		env = append(env, "NO_TLS=1")
	}
	e.t.Cleanup(func() {
		if err := e.run(context.Background(), nil, "stop.sh", "provider"); err != nil {
			e.t.Error(err)
		}
	})
	// A port found free can be taken before Exim binds it: then try
	// other ports.
	var ports []int
	for attempt := 1; ; attempt++ {
		ports = freePorts(e.t, 2)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := e.run(ctx, env, "run-provider.sh", strconv.Itoa(ports[0]), strconv.Itoa(ports[1]))
		cancel()
		if err == nil {
			break
		}
		if attempt == 3 {
			e.t.Fatal(err)
		}
		e.t.Logf("eximtest: provider did not start, trying other ports: %v", err)
	}
	return &Provider{e: e, logStart: logStart,
		SMTPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		ODMRAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))}
}

// freePorts returns n loopback ports that were free a moment ago. Exim
// binds them itself, so there is a small window in which another process
// could take one; run-provider.sh then fails, and so does the test.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("eximtest: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// Enqueue queues a message on the provider, from the envelope sender from
// to the recipients in to, with body as its text (CRLF line endings). When
// every recipient is in one of the domains the provider takes mail for, it
// arrives over SMTP on SMTPAddr, with BODY=8BITMIME as net/smtp sends it;
// Exim then puts one Received: field in front of the header ("from
// [127.0.0.1] (port=N) by provider.exim.test with esmtp"). Otherwise (a
// look-alike domain such as example.org.evil.test, which the intake
// refuses as relaying) it is submitted locally with "exim -odq", which
// puts a Received: field of its own in front ("from root by
// provider.exim.test with local"), and adds nothing else as long as the
// text has From:, Date: and Message-ID: fields. It returns once Exim has
// queued the message.
func (p *Provider) Enqueue(from string, to []string, body string) error {
	local := slices.ContainsFunc(to, func(rcpt string) bool {
		_, d, _ := strings.Cut(rcpt, "@")
		return !slices.Contains(intakeDomains, strings.ToLower(d))
	})
	if local {
		return p.submit(from, to, body)
	}
	return p.intake(from, to, body)
}

func (p *Provider) intake(from string, to []string, body string) error {
	c, err := smtp.Dial(p.SMTPAddr)
	if err != nil {
		return fmt.Errorf("eximtest: intake: %w", err)
	}
	defer c.Close()
	if err := c.Hello("intake.test"); err != nil {
		return fmt.Errorf("eximtest: intake: %w", err)
	}
	if err := c.Mail(from); err != nil {
		return fmt.Errorf("eximtest: intake MAIL: %w", err)
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt); err != nil {
			return fmt.Errorf("eximtest: intake RCPT %s: %w", rcpt, err)
		}
	}
	// DATA by hand, for the reply to the final dot: it names the queue
	// ID ("250 OK id=1xaYP5-000000004ex-0Ond").
	id, err := c.Text.Cmd("DATA")
	if err != nil {
		return fmt.Errorf("eximtest: intake DATA: %w", err)
	}
	c.Text.StartResponse(id)
	_, _, err = c.Text.ReadResponse(354)
	c.Text.EndResponse(id)
	if err != nil {
		return fmt.Errorf("eximtest: intake DATA: %w", err)
	}
	// The dot writer turns LF into CRLF and leaves a CRLF alone.
	w := c.Text.DotWriter()
	if _, err := w.Write([]byte(body)); err != nil {
		return fmt.Errorf("eximtest: intake data: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("eximtest: intake end of data: %w", err)
	}
	_, msg, err := c.Text.ReadResponse(250)
	if err != nil {
		return fmt.Errorf("eximtest: intake end of data: %w", err)
	}
	if err := c.Quit(); err != nil {
		return fmt.Errorf("eximtest: intake QUIT: %w", err)
	}
	_, queueID, ok := strings.Cut(msg, "id=")
	if !ok {
		return fmt.Errorf("eximtest: intake: no queue ID in %q", msg)
	}
	return p.waitReceived(strings.TrimSpace(queueID))
}

// waitReceived waits, for at most 15 s, until the delivery process that
// Exim's intake starts for each message it receives is done with message
// id. For the customers' domains (queue_domains) that process only
// routes, logs "routing defer ... domain is in queue_domains" and exits,
// but while it runs it holds the message's lock, and an ATRN's queue run
// in that moment passes over the message ("Spool file ... is locked"),
// answers 250 and delivers nothing. It waits for that log line, then for
// the lock on the message's data file to be gone.
func (p *Provider) waitReceived(id string) error {
	data := filepath.Join(p.e.Dir, "provider", "spool", "input", id+"-D")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if p.routed(id) && !locked(data) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("eximtest: intake: message %s still being handled by Exim after 15 s", id)
		}
		time.Sleep(10 * time.Millisecond) // polling Exim's log and lock for the event
	}
}

// routed reports whether Exim's main log says that the delivery process
// started at reception has routed message id, or is done with it.
func (p *Provider) routed(id string) bool {
	text, ok := p.log()
	return ok && (strings.Contains(text, id+" == ") || strings.Contains(text, id+" Completed") ||
		strings.Contains(text, id+" => "))
}

// providerLog is the path of the provider's main log.
func (e *Exim) providerLog() string {
	return filepath.Join(e.Dir, "provider", "log", "mainlog")
}

// log returns what the provider's main log says since the daemon
// started, read from there on; false if it cannot be read.
func (p *Provider) log() (string, bool) {
	f, err := os.Open(p.e.providerLog())
	if err != nil {
		return "", false
	}
	defer f.Close()
	if _, err := f.Seek(p.logStart, io.SeekStart); err != nil {
		return "", false
	}
	b, err := io.ReadAll(f)
	return string(b), err == nil
}

// locked reports whether a process holds a lock on the file at path,
// without taking one (F_GETLK): Exim locks a message's data file while it
// handles the message. A file that is gone is not locked.
func locked(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
		return false
	}
	return lk.Type != syscall.F_UNLCK
}

func (p *Provider) submit(from string, to []string, body string) error {
	e := p.e
	args := append([]string{"-C", filepath.Join(e.Dir, "provider.conf"), "-odq", "-oi", "-f", from, "--"}, to...)
	cmd := exec.Command(filepath.Join(e.Dir, "inst", "bin", "exim"), args...)
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("eximtest: exim -odq: %v: %s", err, out)
	}
	return nil
}

// WaitIdle waits until every ATRN delivery run the provider started has
// ended, as its main log says ("Start ODMR queue run", "End queue run"),
// for at most 15 s. Exim logs a delivery, and the customer gets its QUIT,
// before the delivery process has taken the message off its spool: an
// ATRN in that moment finds the message still queued, is answered 250,
// and then gets a QUIT at once, before the greeting, with nothing to
// deliver (see CONFORMANCE.md). A test that pulls twice in a row and means
// to judge the second pull calls WaitIdle between them.
func (p *Provider) WaitIdle() {
	deadline := time.Now().Add(15 * time.Second)
	for {
		text, ok := p.log()
		if !ok {
			return
		}
		started := strings.Count(text, "Start ODMR queue run")
		ended := strings.Count(text, "End queue run: pid=")
		if ended >= started || time.Now().After(deadline) {
			return
		}
		time.Sleep(10 * time.Millisecond) // polling Exim's log for the event
	}
}

// ClearQueue waits for the provider's delivery runs to end (WaitIdle),
// then removes every message queued on it, and its retry hints.
func (p *Provider) ClearQueue() {
	p.e.t.Helper()
	p.WaitIdle()
	p.e.script(context.Background(), nil, "clear-queue.sh", "provider")
}

// ClearRetryHints removes the provider's retry hints (spool/db/retry),
// so that every queued message is due at the next ATRN. Exim keeps a
// retry time per host as well as per message: after a temporary failure
// (a 4xx, a connection lost) it holds every message for the customer's
// address, 127.0.0.1, until then (1 s with provider.conf's retry rule),
// and answers an ATRN in that time with 250 followed by QUIT. It waits
// for the delivery runs to end first (WaitIdle), so that no Exim process
// has the hints open.
func (p *Provider) ClearRetryHints() {
	e := p.e
	e.t.Helper()
	p.WaitIdle()
	files, _ := filepath.Glob(filepath.Join(e.Dir, "provider", "spool", "db", "retry*"))
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			e.t.Errorf("eximtest: %v", err)
		}
	}
}

// Queued returns the recipients in domain of the messages queued on the
// provider and not yet delivered ("exim -bpru"); "" means every domain
// (bounces Exim generated included).
func (p *Provider) Queued(domain string) []string {
	e := p.e
	e.t.Helper()
	out, err := exec.Command(filepath.Join(e.Dir, "inst", "bin", "exim"), "-C", filepath.Join(e.Dir, "provider.conf"), "-bpru").Output()
	if err != nil {
		e.t.Fatalf("eximtest: exim -bpru: %v", err)
	}
	var rcpts []string
	for _, line := range strings.Split(string(out), "\n") {
		// "  25m  2.9K 1xaSJ3-000000005Iz-0Fzb <sender>", then one
		// indented recipient a line, then a blank line.
		f := strings.Fields(line)
		if len(f) != 1 || !strings.HasPrefix(line, " ") {
			continue
		}
		if _, d, _ := strings.Cut(f[0], "@"); domain == "" || strings.EqualFold(d, domain) {
			rcpts = append(rcpts, f[0])
		}
	}
	return rcpts
}

// Message is one message that Exim's customer received and delivered to
// a file.
type Message struct {
	// From is the envelope sender (its Return-path: field) and To the
	// envelope recipients (its Envelope-to: field).
	From string
	To   []string
	// Body is the message as Exim's customer received it, CRLF line
	// endings: the text the provider sent, with the Received: field that
	// Exim puts in front of what it receives ("from [127.0.0.1]
	// (port=P helo=...) by customer.exim.test with esmtp ..."). The
	// fields that the file delivery added (Return-path:, Envelope-to:,
	// Delivery-date:) are removed; they are From and To.
	Body string
	// File is the path of the message's file.
	File string
}

// CustomerRun is the outcome of one run of Exim's customer.
type CustomerRun struct {
	// Exit is run-customer.sh's exit status: 0 for mail and for a 453,
	// 1 for a failure or a 4xx other than 453, 124 for its timeout, -1
	// when the run was killed.
	Exit int
	// ATRNReply is the provider's reply to ATRN as Exim's -v output
	// shows it, "" when it sent no ATRN.
	ATRNReply string
	// Replies are the provider's replies as Exim's -v output shows them
	// ("SMTP<< " lines, the first line of each), in order.
	Replies []string
	// Messages are the messages received, in the order of their Exim ids.
	Messages []Message
	// Log is Exim's -v output (the dialogue up to the role swap) and the
	// script's messages.
	Log string
}

// CustomerOptions configure one run of Exim's customer.
type CustomerOptions struct {
	// Addr is the provider, "host:port".
	Addr string
	// Domains are sent with ATRN, comma-separated; none sends a bare ATRN.
	Domains []string
	// User and Secret authenticate the customer.
	User, Secret string
	// TLS makes Exim require STARTTLS and verify the provider's
	// certificate against CertFile; false turns TLS off.
	TLS bool
	// Timeout bounds the run (run-customer.sh's TIMEOUT). 0 means 60 s.
	Timeout time.Duration
}

// RunCustomer runs Exim once as the customer ("exim -atrn") and returns
// what it did once it has delivered what it received. ctx ending kills
// the run.
func (e *Exim) RunCustomer(ctx context.Context, o CustomerOptions) (CustomerRun, error) {
	host, port, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return CustomerRun{}, fmt.Errorf("eximtest: %w", err)
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	outDir := filepath.Join(e.Dir, "customer", "out")
	before, _ := os.ReadDir(outDir)
	env := []string{"TIMEOUT=" + strconv.Itoa(int(timeout.Seconds()))}
	if !o.TLS {
		env = append(env, "NO_TLS=1")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(e.Dir, "run-customer.sh"),
		host, port, strings.Join(o.Domains, ","), o.User, o.Secret)
	cmd.Env = append(os.Environ(), env...)
	cmd.Cancel = func() error {
		// Exim runs in a session of its own: stop it by its pid file,
		// then the script.
		exec.Command(filepath.Join(e.Dir, "stop.sh"), "customer").Run()
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	run := CustomerRun{Log: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		run.Exit = ee.ExitCode()
	default:
		return run, fmt.Errorf("eximtest: run-customer.sh: %w", err)
	}
	// The run's directory and log are the entries of out/ that are new.
	after, _ := os.ReadDir(outDir)
	for _, de := range after {
		if slices.ContainsFunc(before, func(b os.DirEntry) bool { return b.Name() == de.Name() }) {
			continue
		}
		path := filepath.Join(outDir, de.Name())
		if strings.HasSuffix(de.Name(), ".log") {
			if b, err := os.ReadFile(path); err == nil {
				run.Log = string(b) + run.Log
			}
		}
		defer os.RemoveAll(path)
	}
	run.Replies, run.ATRNReply = replies(run.Log)
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		path := strings.TrimSpace(sc.Text())
		if !strings.HasSuffix(path, ".eml") {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return run, fmt.Errorf("eximtest: %w", err)
		}
		m, err := parseFile(string(b))
		if err != nil {
			return run, fmt.Errorf("eximtest: %s: %w", path, err)
		}
		m.File = path
		run.Messages = append(run.Messages, m)
	}
	return run, nil
}

// replies finds the provider's replies in Exim's -v output: lines
// "  SMTP<< 250-first line", continued by indented lines; and the reply
// to ATRN.
func replies(log string) (all []string, atrn string) {
	sentATRN := false
	for _, line := range strings.Split(log, "\n") {
		line = strings.TrimSpace(line)
		if s, ok := strings.CutPrefix(line, "SMTP>> "); ok {
			sentATRN = strings.HasPrefix(strings.ToUpper(s), "ATRN")
			continue
		}
		if s, ok := strings.CutPrefix(line, "SMTP<< "); ok {
			all = append(all, s)
			if sentATRN && atrn == "" {
				atrn = s
			}
		}
	}
	return all, atrn
}

// parseFile splits a file of the customer's eml_file transport into the
// envelope (its Return-path:, Envelope-to: and Delivery-date: fields,
// which the transport writes first, in that order) and the message.
func parseFile(s string) (Message, error) {
	var m Message
	field := func(name string) (string, error) {
		if !strings.HasPrefix(strings.ToLower(s), strings.ToLower(name)+":") {
			return "", fmt.Errorf("no %s: field where expected", name)
		}
		// the field and its continuation lines
		end := 0
		for {
			i := strings.Index(s[end:], "\r\n")
			if i < 0 {
				return "", fmt.Errorf("%s: field not ended by CRLF", name)
			}
			end += i + 2
			if end >= len(s) || (s[end] != ' ' && s[end] != '\t') {
				break
			}
		}
		v := s[len(name)+1 : end]
		s = s[end:]
		v = strings.ReplaceAll(v, "\r\n", "")
		return strings.TrimSpace(v), nil
	}
	rp, err := field("Return-path")
	if err != nil {
		return m, err
	}
	m.From = strings.TrimSuffix(strings.TrimPrefix(rp, "<"), ">")
	et, err := field("Envelope-to")
	if err != nil {
		return m, err
	}
	for _, a := range strings.Split(et, ",") {
		if a = strings.TrimSpace(a); a != "" {
			m.To = append(m.To, a)
		}
	}
	if _, err := field("Delivery-date"); err != nil {
		return m, err
	}
	m.Body = s
	return m, nil
}

// ReceivedField splits off the Received: field that Exim put in front of
// body: it returns the field, continuation lines included, and the rest.
// ok is false when body does not start with one.
func ReceivedField(body string) (field, rest string, ok bool) {
	if !strings.HasPrefix(body, "Received: ") {
		return "", body, false
	}
	end := 0
	for {
		i := strings.Index(body[end:], "\r\n")
		if i < 0 {
			return "", body, false
		}
		end += i + 2
		if end >= len(body) || (body[end] != ' ' && body[end] != '\t') {
			return body[:end], body[end:], true
		}
	}
}
