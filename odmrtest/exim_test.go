package odmrtest_test

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-odmr/odmr/internal/eximtest"
	"github.com/go-odmr/odmr/odmrtest"
)

// Exim 4.99.1 is the one other implementation of both ODMR roles. These
// tests run the provider suite against Exim's provider and the customer
// suite against Exim's customer, and hold Exim to the results that
// CONFORMANCE.md lists: a check whose result differs from the tables
// below fails the test, so that the tables and CONFORMANCE.md follow
// Exim's behaviour. Outside CI they skip when Exim is not built
// (../shared/peers/exim/build.sh, ODMR_EXIM_DIR) or the test does not run
// as root; under CI (CI set) that fails them.

// eximResult is a known result of Exim against a check: the statuses it
// may have, and for a failure the pattern its detail matches. Exim's
// queue runner takes queued messages in random order, and some of its
// faults show only when a message is not the first of a run: against
// those checks it fails nearly always, and passes when the order happens
// to hide the fault, so both are allowed, but a failure must be the known
// one.
type eximResult struct {
	status []odmrtest.Status
	fail   *regexp.Regexp
}

var (
	eximFails = func(why string) eximResult {
		return eximResult{[]odmrtest.Status{odmrtest.Fail}, regexp.MustCompile(why)}
	}
	eximSkips   = eximResult{status: []odmrtest.Status{odmrtest.Skip}}
	eximByOrder = func(why string) eximResult {
		return eximResult{[]odmrtest.Status{odmrtest.Fail, odmrtest.Pass}, regexp.MustCompile(why)}
	}
	eximLeaks = "outside the domains the ATRN asked for"
)

// eximProviderExpected is how Exim 4.99.1's provider fares against each
// check that it does not pass, and why; CONFORMANCE.md lists the same,
// with what was seen on the wire and where it comes from in Exim's
// source.
var eximProviderExpected = map[string]eximResult{
	// Only the first message of a run has its recipients filtered by
	// the ATRN's domains (deliver.c clears atrn_domains after it), and
	// its other recipients are dropped: later messages come with every
	// recipient, another customer's included. Both checks deliver runs
	// with a message for two customers after the first.
	"5.2.1/every-message-of-a-run-filtered":   eximFails(eximLeaks),
	"5.2.1/other-customers-mail-stays-queued": eximFails(eximLeaks),
	// The run for example.org also selects the message for
	// example.org.evil.test (atrn.c's selection regex is unanchored):
	// as the run's first message it is dropped undelivered, which the
	// check cannot see; later in the run it is sent.
	"5.2.1/look-alike-domains-not-delivered": eximByOrder(eximLeaks),
	// A message that ends in a temporary failure ends the run, which
	// the checks allow; the messages after it wait for another ATRN and
	// Exim's retry time, which the suite does not wait out.
	"5.3/4xx-keeps-mail-queued": eximSkips, // RetryHeld
	// In clear text Exim does not read the customer's EHLO reply.
	"RFC6152/8BITMIME-respected":        eximFails("sent 8-bit text to a customer that did not offer 8BITMIME"),
	"RFC1870/SIZE-respected":            eximFails("to a customer that declared SIZE"),
	"RFC3030/BDAT-counts-octets":        eximSkips, // so it never uses BDAT
	"RFC4954/PLAIN-when-offered":        eximSkips, // PLAIN only under TLS
	"5.3/cut-connection-keeps-mail":     eximSkips, // RetryHeld
	"5.3/QUIT-after-554-greeting":       eximSkips, // RetryHeld
	"5.3/4xx-to-MAIL-keeps-mail-queued": eximSkips, // RetryHeld
	"5.3/greeting-pipelined-with-ATRN":  eximSkips, // not ReplaysPipelined
}

// eximCustomerExpected is the same for Exim's customer.
var eximCustomerExpected = map[string]eximResult{
	// Exim never looks for ATRN in the EHLO reply.
	"5.1.1/refuses-provider-without-ATRN": eximFails("lacks ATRN"),
	// The QUIT that came with the 250 is lost at the role swap (it was
	// read into the client's buffer); Exim's server then reads the end
	// of the connection, answers 421 and exits 1.
	"5.3/250-then-QUIT-is-no-mail": eximFails("no mail is not a failure"),
	// customer.conf takes every recipient.
	"5.3/per-recipient-refusal": eximSkips,
}

// eximStrayQUIT reports whether r failed on a fault of Exim's provider
// that any check with a delivery may meet, now and then: after the session
// has ended with QUIT and the customer's 221, Exim's queue runner writes
// another bare QUIT, and closes, when it thinks the run sent nothing
// (queue.c, "ATRN: no messages; sending QUIT"). The suite then sees more
// after the 221, or its answer to that QUIT meets a reset. Seen in 3 runs
// of 6 of 5.3/5xx-not-retried and 1 of
// 5.2.1/4xx-recipient-keeps-its-domain. The same line of queue.c sends
// the QUIT straight after Exim's 250 to ATRN, before the customer's
// greeting, when the run finds the message it answered 250 for already
// gone (its delivery process had not yet taken it off the spool when
// the ATRN came, despite WaitIdle): seen once in CI, on
// 5.3/5xx-not-retried. Such a failure is logged and accepted wherever it
// occurs.
func eximStrayQUIT(r odmrtest.Result) bool {
	return r.Status == odmrtest.Fail &&
		(strings.Contains(r.Detail, "provider sent more after QUIT and the customer's 221") ||
			r.Seen == "QUIT" && strings.Contains(r.Detail, "connection reset by peer") ||
			strings.Contains(r.Detail, `sent "QUIT\r\n" before the customer's greeting`))
}

// expectResults fails t for each result that differs from expected
// (Pass when absent).
func expectResults(t *testing.T, results map[string]odmrtest.Result, checks []odmrtest.Check, expected map[string]eximResult) {
	t.Helper()
	for _, c := range checks {
		r, ok := results[c.ID()]
		if !ok {
			t.Errorf("%s: no result", c.ID())
			continue
		}
		want, ok := expected[c.ID()]
		if !ok {
			want = eximResult{status: []odmrtest.Status{odmrtest.Pass}}
		}
		if eximStrayQUIT(r) {
			t.Logf("%s: Exim's stray QUIT, a known fault: %s", c.ID(), r)
			continue
		}
		if !slices.Contains(want.status, r.Status) {
			t.Errorf("%s: %s, want %v", c.ID(), r, want.status)
		} else if r.Status == odmrtest.Fail && want.fail != nil && !want.fail.MatchString(r.Detail) {
			t.Errorf("%s: %s, not the known failure (%q)", c.ID(), r, want.fail)
		}
	}
	for id := range expected {
		if _, ok := results[id]; !ok {
			t.Errorf("the expected result of %s names no check", id)
		}
	}
}

// eximProviderConfig is the ProviderConfig of the suite against Exim's
// provider p.
func eximProviderConfig(p *eximtest.Provider) odmrtest.ProviderConfig {
	return odmrtest.ProviderConfig{
		// Each connection waits for Exim's delivery runs to end, so that
		// a check's second ATRN does not race the first one's spool
		// clean-up (eximtest.Provider.WaitIdle).
		Dial: func() (net.Conn, error) {
			p.WaitIdle()
			return net.Dial("tcp", p.ODMRAddr)
		},
		User:          eximtest.User,
		Secret:        eximtest.Secret,
		Domains:       eximtest.Domains,
		ForeignDomain: eximtest.ForeignDomain,
		ForeignUser:   eximtest.ForeignUser,
		ForeignSecret: eximtest.ForeignSecret,
		// Each check starts with Exim's retry hints cleared: Exim holds
		// all mail for a host (127.0.0.1, for every check) after a
		// temporary failure, so without this one check's 4xx would
		// decide the next check's result.
		Enqueue: func(from string, to []string, body string) error {
			p.ClearRetryHints()
			return p.Enqueue(from, to, body)
		},
		NoMail: odmrtest.NoMail453,
		// Exim's retry rule holds a message that got a 4xx for 1 s.
		RetryHeld: true,
		Timeout:   30 * time.Second,
	}
}

func TestEximProvider(t *testing.T) {
	ex := eximtest.Open(t)
	p := ex.StartProvider(true)
	cfg := eximProviderConfig(p)
	// Each check runs on its own against an empty queue: Exim leaves
	// mail behind where it fails a check (a recipient it sent to the
	// wrong customer and bounced, a message for two customers half
	// delivered), and that mail would arrive in the next checks' runs
	// and fail them too.
	results := map[string]odmrtest.Result{}
	for _, c := range odmrtest.ProviderChecks() {
		p.ClearQueue()
		r := c.Run(t.Context(), cfg)
		results[c.ID()] = r
		t.Log(r)
	}
	expectResults(t, results, odmrtest.ProviderChecks(), eximProviderExpected)
}

// TestEximNoMailWithOtherMailQueued runs the two checks of a 453 against
// Exim's provider with another customer's message queued, which makes
// Exim answer a second ATRN in the session with 502 (CONFORMANCE.md, note
// 5): only ATRN-again-after-453, which asks for that second ATRN, fails;
// no-mail-453 sends its bare ATRN in a session of its own and passes.
func TestEximNoMailWithOtherMailQueued(t *testing.T) {
	ex := eximtest.Open(t)
	p := ex.StartProvider(false)
	cfg := eximProviderConfig(p)
	for id, want := range map[string]odmrtest.Status{
		"5.2.1/no-mail-453":          odmrtest.Pass,
		"5.2.1/ATRN-again-after-453": odmrtest.Fail,
	} {
		p.ClearQueue()
		if err := p.Enqueue("sender@outside.test", []string{"other@" + eximtest.ForeignDomain}, "Subject: other\r\n\r\nanother customer's mail\r\n"); err != nil {
			t.Fatal(err)
		}
		var r odmrtest.Result
		for _, c := range odmrtest.ProviderChecks() {
			if c.ID() == id {
				r = c.Run(t.Context(), cfg)
			}
		}
		t.Log(r)
		if r.Status != want {
			t.Errorf("%s, want %s", r, want)
		} else if want == odmrtest.Fail && !strings.HasPrefix(r.Seen, "502") {
			t.Errorf("%s, not Exim's 502", r)
		}
	}
}

// eximOutcome is how a run of Exim's customer ended, in Exim's own
// report: run-customer.sh's exit status (0 for mail and for 453, 1 for
// a failure or another 4xx to ATRN, 124 for its timeout) and, to tell
// the failures apart, the reply to ATRN or AUTH in Exim's -v output.
func eximOutcome(run eximtest.CustomerRun) (odmrtest.OutcomeKind, string) {
	detail := fmt.Sprintf("exit status %d", run.Exit)
	if run.ATRNReply != "" {
		detail += ", ATRN answered " + run.ATRNReply
	}
	switch {
	case run.Exit == 0 && strings.HasPrefix(run.ATRNReply, "453"):
		return odmrtest.OutcomeNoMail, detail
	case run.Exit == 0:
		return odmrtest.OutcomeOK, detail
	case strings.HasPrefix(run.ATRNReply, "450"):
		return odmrtest.OutcomeRefused, detail
	case strings.HasPrefix(run.ATRNReply, "451"):
		return odmrtest.OutcomeTryLater, detail
	case strings.HasPrefix(run.ATRNReply, "530"):
		return odmrtest.OutcomeAuthFailed, detail
	}
	for _, r := range run.Replies {
		if strings.HasPrefix(r, "535") {
			return odmrtest.OutcomeAuthFailed, detail + ", AUTH answered " + r
		}
	}
	return odmrtest.OutcomeFailed, detail
}

// eximCustomerConfig is the CustomerConfig that runs Exim's customer
// ("exim -atrn", in clear text: the suite's provider offers no STARTTLS)
// once per check. Its messages are the files Exim delivered, the fields
// of the file delivery removed (see eximtest.Message).
func eximCustomerConfig(ex *eximtest.Exim) odmrtest.CustomerConfig {
	return odmrtest.CustomerConfig{
		Fetch: func(ctx context.Context, addr string) odmrtest.CustomerOutcome {
			run, err := ex.RunCustomer(ctx, eximtest.CustomerOptions{Addr: addr,
				Domains: odmrtest.FixtureDomains, User: odmrtest.FixtureUser, Secret: odmrtest.FixtureSecret,
				Timeout: 25 * time.Second})
			if err != nil {
				return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeFailed, Detail: "the test could not run Exim: " + err.Error(), Log: run.Log}
			}
			out := odmrtest.CustomerOutcome{Log: run.Log}
			out.Kind, out.Detail = eximOutcome(run)
			if ctx.Err() != nil && run.Exit == -1 {
				// killed by a signal when the check's time was up
				out.Kind, out.Detail = odmrtest.OutcomeFailed, "killed: "+ctx.Err().Error()
			}
			for _, m := range run.Messages {
				out.Messages = append(out.Messages, odmrtest.Message{From: m.From, To: m.To, Body: m.Body})
			}
			return out
		},
		User:    odmrtest.FixtureUser,
		Secret:  odmrtest.FixtureSecret,
		Domains: odmrtest.FixtureDomains,
		// Exim's customer takes every recipient (customer.conf), so
		// 5.3/per-recipient-refusal is skipped.
		Timeout: 30 * time.Second,
	}
}

func TestEximCustomer(t *testing.T) {
	ex := eximtest.Open(t)
	results := runCustomerSuite(t, eximCustomerConfig(ex))
	expectResults(t, results, odmrtest.CustomerChecks(), eximCustomerExpected)
}
