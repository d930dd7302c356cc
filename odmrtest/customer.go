package odmrtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// DefaultATRNDelay is how long the suite waits before it answers ATRN in
// the check 5.2.1/waits-for-ATRN-reply, when [CustomerConfig].ATRNDelay
// is 0.
const DefaultATRNDelay = 3 * time.Second

// OutcomeKind says how one run of a customer ended, as the customer itself
// reports it: its adapter reads an error value, an exit status or a log
// and picks the kind that fits. RFC 2645 does not say what a customer
// reports; the suite checks that it does not report a refusal as success,
// or success as a failure.
type OutcomeKind int

const (
	// OutcomeOK: the session ran to its end. The customer does not say
	// whether mail came (fetchmail exits 0 for both).
	OutcomeOK OutcomeKind = iota
	// OutcomeNoMail: the session ran to its end and there was nothing to
	// collect (a 453, or a 250 followed by QUIT before any message).
	OutcomeNoMail
	// OutcomeRefused: the provider refused the ATRN (450).
	OutcomeRefused
	// OutcomeTryLater: the provider could not process the ATRN now (451).
	OutcomeTryLater
	// OutcomeAuthFailed: authentication failed (535), or the provider
	// said the session was not authenticated (530).
	OutcomeAuthFailed
	// OutcomeFailed: any other failure, or a failure the customer does not
	// tell apart from the others (a protocol error, a lost connection, a
	// provider without ATRN).
	OutcomeFailed
	// OutcomeUnknown: the customer's own report is not known, as for a
	// customer an operator runs by hand while the suite waits. The checks
	// then judge only what the customer did on the wire and what its
	// sink received, and note that the report went unseen.
	OutcomeUnknown
)

// String returns "ok", "no mail", "refused", "try later", "auth failed",
// "failed" or "unknown".
func (k OutcomeKind) String() string {
	switch k {
	case OutcomeOK:
		return "ok"
	case OutcomeNoMail:
		return "no mail"
	case OutcomeRefused:
		return "refused"
	case OutcomeTryLater:
		return "try later"
	case OutcomeAuthFailed:
		return "auth failed"
	case OutcomeFailed:
		return "failed"
	}
	return "unknown"
}

// failure reports whether k is one of the failure kinds.
func (k OutcomeKind) failure() bool { return k >= OutcomeRefused && k <= OutcomeFailed }

// Message is one message a customer received and handed to its sink (its
// local mail server, a mailbox), as the sink got it.
type Message struct {
	// From is the envelope sender and To the envelope recipients the sink
	// accepted, without angle brackets.
	From string
	To   []string
	// Body is the message text, headers first, with CRLF line endings and
	// dot-stuffing undone.
	Body string
}

// CustomerOutcome is what one run of a customer did, as [CustomerConfig]'s
// Fetch reports it.
type CustomerOutcome struct {
	// Kind is how the run ended, in the customer's own report.
	Kind OutcomeKind
	// Detail describes the run in a few words ("exit status 4", an error
	// message); the suite quotes it in its report.
	Detail string
	// Messages are the messages the customer's sink accepted during this
	// run, in order. The checks that deliver mail compare them with what
	// the suite sent, byte for byte; a customer whose messages the adapter
	// cannot see fails them (skip them with CustomerConfig.Skip).
	Messages []Message
	// Log is anything else the run produced, such as a program's output.
	// The suite writes it to CustomerConfig.Debug and, in [TestCustomer],
	// to the test log of a failed check.
	Log string
}

// CustomerConfig tells the suite how to run a customer, which account and
// domains the customer uses, and what it is known to do where the RFC lets
// it choose. Fetch, User, Secret and Domains are required; every other
// field has a documented zero value.
type CustomerConfig struct {
	// Fetch runs the customer once against the provider the suite plays
	// at addr ("host:port"; the customer connects there with TCP unless
	// Listen says otherwise) and returns when the customer has finished.
	// ctx ends when the check's time is up: Fetch must then return soon,
	// stopping the customer (exec.CommandContext does this for a program).
	// Each check calls Fetch once, one check after the other.
	Fetch func(ctx context.Context, addr string) CustomerOutcome

	// User and Secret are the credentials the customer authenticates with.
	// The suite's provider checks the customer's CRAM-MD5 response against
	// them (RFC 2195).
	User, Secret string
	// Domains are the domains the customer asks for with ATRN; at least
	// one. The suite's messages have one recipient in each.
	Domains []string
	// RefusedRecipient is an address in one of Domains that the customer
	// (its sink or local mail server) refuses at RCPT. "" means it has
	// none, and the check 5.3/per-recipient-refusal is skipped.
	RefusedRecipient string
	// InsecureAuth says that the customer was configured to use PLAIN or
	// LOGIN without TLS. False means the suite checks that it does not
	// (5.1.2/no-PLAIN-in-clear).
	InsecureAuth bool

	// Listen opens the listener on which the suite's provider accepts the
	// customer's connection, once per check. nil means TCP on 127.0.0.1
	// with a port the system picks. A listener of in-memory pipes lets a
	// Go customer with a Dial hook run without sockets.
	Listen func() (net.Listener, error)

	// ATRNDelay is how long the suite waits before it answers ATRN in the
	// check 5.2.1/waits-for-ATRN-reply. RFC 2645 section 5.2.1 makes the
	// customer wait at least 10 minutes; the suite cannot wait that long
	// in every run, so it checks only that the customer waits this long.
	// 0 means DefaultATRNDelay; it must stay below Timeout.
	ATRNDelay time.Duration
	// Timeout bounds each check, the customer's run included; a customer
	// that has not finished by then fails the check. 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// GreetingWait is how long the suite listens, once the customer has
	// connected and before it greets, for a customer that speaks first.
	// 0 means DefaultGreetingWait; negative turns that probe off. It
	// cannot make a correct customer fail.
	GreetingWait time.Duration
	// Hostname is the name of the suite's provider, in its greeting and
	// EHLO. "" means "provider.example".
	Hostname string
	// Sender is the envelope sender of the messages the suite delivers.
	// "" means "odmrtest@" followed by Hostname.
	Sender string

	// Debug, if set, receives the transcript of each check in the RFC's
	// notation ("P: " for what the suite, as provider, sent, "C: " for
	// what the customer sent), SASL responses redacted, followed by the
	// customer's outcome and Log.
	Debug io.Writer

	// Skip lists the IDs of checks not to run (see [Check.ID]); they are
	// reported as skipped.
	Skip []string
}

// withDefaults returns cfg with its zero fields set.
func (cfg CustomerConfig) withDefaults() CustomerConfig {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.ATRNDelay <= 0 {
		cfg.ATRNDelay = DefaultATRNDelay
	}
	if cfg.GreetingWait == 0 {
		cfg.GreetingWait = DefaultGreetingWait
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "provider.example"
	}
	if cfg.Sender == "" {
		cfg.Sender = "odmrtest@" + cfg.Hostname
	}
	if cfg.Listen == nil {
		cfg.Listen = func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
	}
	return cfg
}

// validate reports what is missing from cfg.
func (cfg CustomerConfig) validate() error {
	var missing []string
	if cfg.Fetch == nil {
		missing = append(missing, "Fetch")
	}
	if cfg.User == "" {
		missing = append(missing, "User")
	}
	if cfg.Secret == "" {
		missing = append(missing, "Secret")
	}
	if len(cfg.Domains) == 0 {
		missing = append(missing, "Domains")
	}
	if len(missing) > 0 {
		return errors.New("odmrtest: CustomerConfig needs " + strings.Join(missing, ", "))
	}
	if cfg.RefusedRecipient != "" && !inDomains(cfg.RefusedRecipient, cfg.Domains) {
		return errors.New("odmrtest: RefusedRecipient " + cfg.RefusedRecipient + " is not in one of Domains")
	}
	if cfg.ATRNDelay > 0 && cfg.Timeout > 0 && cfg.ATRNDelay >= cfg.Timeout {
		return errors.New("odmrtest: ATRNDelay must be shorter than Timeout")
	}
	return nil
}

// customerCheck is a check of the customer suite and the probe that runs
// it.
type customerCheck struct {
	Check
	run func(*cprobe) error
}

// CustomerChecks returns the checks of the customer suite in the order
// they run. Each plays a provider against one run of the customer.
// [Check.Run] does not run them (it reaches a provider); use
// [Check.RunCustomer], [RunCustomer] or [TestCustomer].
func CustomerChecks() []Check {
	ccs := customerChecks()
	out := make([]Check, len(ccs))
	for i, cc := range ccs {
		out[i] = cc.Check
	}
	return out
}

// asCustomerCheck gives a customer check a provider probe that says
// where it belongs.
func asCustomerCheck(c Check) Check {
	id := c.ID()
	c.run = func(p *probe) error {
		return p.failf("%s is a check of a customer: run it with RunCustomer, TestCustomer or Check.RunCustomer", id)
	}
	return c
}

// TestCustomer runs every check of [CustomerChecks] against the customer
// cfg describes, each as a subtest named after [Check.ID], one after the
// other: in each the suite plays a provider, and cfg.Fetch runs the
// customer against it once. A failed check fails its subtest with what
// the customer sent and the check's transcript; a skipped check skips it.
func TestCustomer(t *testing.T, cfg CustomerConfig) {
	t.Helper()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	run := newRunID()
	for _, cc := range customerChecks() {
		t.Run(cc.ID(), func(t *testing.T) {
			res, transcript := cc.run1(t.Context(), cfg, run)
			reportTo(t, res, transcript)
		})
	}
}

// RunCustomer runs every check of [CustomerChecks] against the customer
// cfg describes, one after the other, hands each result to r, and returns
// the number of checks that failed. It stops early, reporting the checks
// not run as skipped, when ctx ends. A cfg that lacks a required field is
// an error and nothing runs.
func RunCustomer(ctx context.Context, cfg CustomerConfig, r Reporter) (failed int, err error) {
	if err := cfg.validate(); err != nil {
		return 0, err
	}
	run := newRunID()
	for _, cc := range customerChecks() {
		res, _ := cc.run1(ctx, cfg, run)
		if res.Status == Fail {
			failed++
		}
		r.Report(res)
	}
	return failed, nil
}

// RunCustomer runs this one check, which must be one of
// [CustomerChecks], against the customer cfg describes.
func (c Check) RunCustomer(ctx context.Context, cfg CustomerConfig) Result {
	if err := cfg.validate(); err != nil {
		return Result{Check: c, Status: Fail, Detail: err.Error()}
	}
	for _, cc := range customerChecks() {
		if cc.ID() == c.ID() {
			res, _ := cc.run1(ctx, cfg, newRunID())
			return res
		}
	}
	return Result{Check: c, Status: Fail, Detail: c.ID() + " is not a check of the customer suite"}
}

// run1 runs the check and returns its result and transcript.
func (cc customerCheck) run1(ctx context.Context, cfg CustomerConfig, run *runState) (Result, string) {
	cfg = cfg.withDefaults()
	res := Result{Check: cc.Check}
	switch {
	case slices.Contains(cfg.Skip, cc.ID()):
		res.Status, res.Detail = Skip, "skipped by configuration"
		return res, ""
	case ctx.Err() != nil:
		res.Status, res.Detail = Skip, "not run: "+ctx.Err().Error()
		return res, ""
	}
	p := newCProbe(ctx, &cfg, run)
	err := func() error {
		defer p.cleanup()
		return cc.run(p)
	}()
	p.settle(&res, err)
	transcript := p.transcriptText()
	if cfg.Debug != nil {
		fmt.Fprintf(cfg.Debug, "=== %s: %s\n%s", cc.ID(), res.Status, transcript)
	}
	return res, transcript
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "\t" + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n\t")
}
