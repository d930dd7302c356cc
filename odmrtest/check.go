package odmrtest

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

// Level is the strength of a requirement, in the words of RFC 2119.
type Level int

const (
	// Must is an absolute requirement (MUST, MUST NOT, or the RFC's
	// normative reply codes).
	Must Level = iota
	// Should is a recommendation (SHOULD), or what real peers need to
	// interoperate where the RFC leaves the choice open.
	Should
	// May is an option (MAY): the check is only run when the
	// configuration says the provider implements it.
	May
)

// String returns "MUST", "SHOULD" or "MAY".
func (l Level) String() string {
	switch l {
	case Must:
		return "MUST"
	case Should:
		return "SHOULD"
	case May:
		return "MAY"
	}
	return "unknown"
}

// Status is the outcome of a check.
type Status int

const (
	// Pass: the provider did what the requirement asks.
	Pass Status = iota
	// Fail: it did not, or did not answer in time.
	Fail
	// Skip: the check could not run (no Enqueue hook, too few domains,
	// configured off, or the provider holds mail the suite did not queue).
	Skip
)

// String returns "PASS", "FAIL" or "SKIP".
func (s Status) String() string {
	switch s {
	case Pass:
		return "PASS"
	case Fail:
		return "FAIL"
	case Skip:
		return "SKIP"
	}
	return "unknown"
}

// A Check is one requirement of RFC 2645, or of the RFCs its profile
// builds on (SMTP, SMTP AUTH, CRAM-MD5), and the probe that tests it.
type Check struct {
	// Section is where the requirement comes from: an RFC 2645 section
	// number such as "5.2.1", or another RFC such as "RFC4954".
	Section string
	// Name says in a few words what is checked, as in "no-mail-453".
	Name string
	// Level is the strength of the requirement.
	Level Level
	// Requirement states the requirement in a sentence.
	Requirement string
	// NeedsEnqueue is set for checks that queue mail; they are skipped
	// when ProviderConfig.Enqueue is nil.
	NeedsEnqueue bool

	run func(*probe) error
}

// ID returns Section and Name joined by a slash, as in
// "5.2.1/no-mail-453"; it is the name of the subtest in [TestProvider].
func (c Check) ID() string { return c.Section + "/" + c.Name }

// Result is the outcome of one check.
type Result struct {
	Check  Check
	Status Status
	// Seen is the provider's reply (or, after the role swap, command) that
	// decided the outcome, as "CODE TEXT" with the lines of a multi-line
	// reply joined by " | "; "" when the check saw none.
	Seen string
	// Detail says why the check failed or was skipped, or notes something
	// the check allowed; "" when there is nothing to say.
	Detail string
}

// String formats the result as one line: ID, status, the reply seen and
// the detail.
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-50s %s", r.Check.ID(), r.Status)
	if r.Seen != "" {
		fmt.Fprintf(&b, "  %q", r.Seen)
	}
	if r.Detail != "" {
		fmt.Fprintf(&b, "  (%s)", r.Detail)
	}
	return b.String()
}

// Reporter receives the result of each check as soon as it is known.
type Reporter interface {
	Report(Result)
}

// ReporterFunc adapts a function to [Reporter].
type ReporterFunc func(Result)

// Report calls f.
func (f ReporterFunc) Report(r Result) { f(r) }

var _ Reporter = ReporterFunc(nil)

// TestProvider runs every check of [ProviderChecks] against the provider
// cfg describes, each as a subtest named after [Check.ID], one after the
// other (the checks share the provider's queue). A failed check fails its
// subtest with the reply seen; a skipped check skips it.
func TestProvider(t *testing.T, cfg ProviderConfig) {
	t.Helper()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	run := newRunID()
	for _, c := range ProviderChecks() {
		t.Run(c.ID(), func(t *testing.T) {
			reportTo(t, c.run1(t.Context(), cfg, run), "")
		})
	}
}

// RunProvider runs every check of [ProviderChecks] against the provider
// cfg describes, one after the other, hands each result to r, and returns
// the number of checks that failed. It stops early, reporting the checks
// not run as skipped, when ctx ends. A cfg that lacks a required field is
// an error and nothing runs.
func RunProvider(ctx context.Context, cfg ProviderConfig, r Reporter) (failed int, err error) {
	if err := cfg.validate(); err != nil {
		return 0, err
	}
	run := newRunID()
	for _, c := range ProviderChecks() {
		res := c.run1(ctx, cfg, run)
		if res.Status == Fail {
			failed++
		}
		r.Report(res)
	}
	return failed, nil
}

// Run runs this one check against the provider cfg describes.
func (c Check) Run(ctx context.Context, cfg ProviderConfig) Result {
	if err := cfg.validate(); err != nil {
		return Result{Check: c, Status: Fail, Detail: err.Error()}
	}
	return c.run1(ctx, cfg, newRunID())
}

func (c Check) run1(ctx context.Context, cfg ProviderConfig, run *runState) Result {
	cfg = cfg.withDefaults()
	res := Result{Check: c}
	switch {
	case slices.Contains(cfg.Skip, c.ID()):
		res.Status, res.Detail = Skip, "skipped by configuration"
		return res
	case c.NeedsEnqueue && cfg.Enqueue == nil:
		res.Status, res.Detail = Skip, "needs a queued message and the configuration has no Enqueue hook"
		return res
	case ctx.Err() != nil:
		res.Status, res.Detail = Skip, "not run: "+ctx.Err().Error()
		return res
	}
	p := &probe{ctx: ctx, cfg: &cfg, run: run}
	err := func() (err error) {
		defer p.closeAll()
		return c.run(p)
	}()
	p.settle(&res, err)
	return res
}

// runState is shared by the checks of one run: it numbers the messages.
type runState struct {
	id  string
	seq atomic.Int64
}

func newRunID() *runState {
	var b [5]byte
	rand.Read(b[:])
	return &runState{id: strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))}
}

// checkError ends a check with a failure or a skip.
type checkError struct {
	skip bool
	msg  string
}

func (e *checkError) Error() string { return e.msg }

// probe is the state of one running check.
type probe struct {
	ctx context.Context
	cfg *ProviderConfig
	run *runState
	// seen is the last reply or command read from the provider;
	// decisive, when set, is the one that decided the outcome.
	seen, decisive string
	// reads counts saw calls; decisiveAt is the count when decisive was
	// set, so a failure after it shows what was read last instead.
	reads, decisiveAt int
	notes             []string
	conns             []net.Conn
	stops             []func() bool
}

func (p *probe) failf(format string, args ...any) error {
	return &checkError{msg: fmt.Sprintf(format, args...)}
}

func (p *probe) skipf(format string, args ...any) error {
	return &checkError{skip: true, msg: fmt.Sprintf(format, args...)}
}

// note records something a passing check allowed.
func (p *probe) note(format string, args ...any) {
	p.notes = append(p.notes, fmt.Sprintf(format, args...))
}

// decide marks r as the reply that decides the outcome.
func (p *probe) decide(r *reply) { p.decideText(r.String()) }

// decideText marks s as what decides the outcome.
func (p *probe) decideText(s string) {
	p.decisive, p.decisiveAt = s, p.reads
}

// saw records s as the last thing read from the provider.
func (p *probe) saw(s string) {
	p.seen = s
	p.reads++
}

func (p *probe) closeAll() {
	for _, stop := range p.stops {
		stop()
	}
	for _, c := range p.conns {
		c.Close()
	}
}

// reportTo reports res as the outcome of the subtest t: an error for a
// failure, with transcript when there is one, a skip, or a log line.
func reportTo(t *testing.T, res Result, transcript string) {
	t.Helper()
	switch res.Status {
	case Fail:
		msg := fmt.Sprintf("%s %s: %s\n\tseen: %q", res.Check.Level, res.Check.Requirement, res.Detail, res.Seen)
		if transcript != "" {
			msg += "\n" + indent(transcript)
		}
		t.Error(msg)
	case Skip:
		t.Skip(res.Detail)
	default:
		if res.Detail != "" {
			t.Logf("seen %q; %s", res.Seen, res.Detail)
		} else {
			t.Logf("seen %q", res.Seen)
		}
	}
}

// settle fills in res from what the check saw and the error it returned:
// the decisive line when there is one, and the status with its detail.
func (p *probe) settle(res *Result, err error) {
	res.Seen = p.seen
	if p.decisive != "" && (err == nil || p.decisiveAt == p.reads) {
		res.Seen = p.decisive
	}
	var ce *checkError
	switch {
	case err == nil:
		res.Status = Pass
		res.Detail = strings.Join(p.notes, "; ")
	case errors.As(err, &ce) && ce.skip:
		res.Status, res.Detail = Skip, ce.msg
	case errors.As(err, &ce):
		res.Status, res.Detail = Fail, ce.msg
	default:
		res.Status, res.Detail = Fail, err.Error()
	}
}
