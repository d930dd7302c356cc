package odmrtest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/fetchmailtest"
	"github.com/go-odmr/odmr/internal/smtprecorder"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/odmrtest"
)

// fetchmail is the ODMR customer people actually run. These tests run the
// customer suite against it: fetchmail relays the reversed session to a
// go-smtp server standing in for its local MTA, and its exit status is the
// outcome. Outside CI they skip when fetchmail is missing; under CI (CI
// set to anything) a missing fetchmail fails them.

// fetchmailOutcome maps fetchmail's exit status (man fetchmail, EXIT
// CODES, as ../shared/peers/fetchmail_odmr.sh observed them with ODMR) to
// an outcome.
func fetchmailOutcome(code int) odmrtest.OutcomeKind {
	switch code {
	case 0:
		// Mail relayed, and also a 453 (fetchmail's ODMR driver maps
		// no mail to success).
		return odmrtest.OutcomeOK
	case 1:
		return odmrtest.OutcomeNoMail
	case 3, 128:
		// 3: AUTH not answered 334, or ATRN answered 530; 128: AUTH
		// answered 535 or 454 (fetchmail's internal SM_ERROR leaks out).
		return odmrtest.OutcomeAuthFailed
	case 8:
		// "Exclusion": ATRN answered 451 (or another fetchmail holds the
		// lock, which a fresh FETCHMAILHOME rules out).
		return odmrtest.OutcomeTryLater
	}
	// 4 is any protocol error: ATRN 450, 502 or another code, no ATRN in
	// the EHLO reply; fetchmail does not tell a 450 apart.
	return odmrtest.OutcomeFailed
}

// fetchmailConfig is the CustomerConfig that runs fetchmail once per
// check, polling the suite's provider with ODMR and relaying to a fresh
// smtprecorder.Recorder, the local MTA, which refuses
// odmrtest.FixtureRefusedRecipient.
func fetchmailConfig(t *testing.T, bin string) odmrtest.CustomerConfig {
	return odmrtest.CustomerConfig{
		Fetch: func(ctx context.Context, addr string) odmrtest.CustomerOutcome {
			fail := func(err error) odmrtest.CustomerOutcome {
				return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeFailed, Detail: "the test could not run fetchmail: " + err.Error()}
			}
			sink := &smtprecorder.Recorder{Refuse: odmrtest.FixtureRefusedRecipient}
			srv := smtp.NewServer(sink)
			srv.Domain = "sink.test"
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return fail(err)
			}
			go srv.Serve(smtprecorder.StrictEOFListener{Listener: l})
			defer smtptest.Shutdown(t, srv)

			poll := fetchmailtest.Poll{Addr: addr, User: odmrtest.FixtureUser, Secret: odmrtest.FixtureSecret,
				Domains: odmrtest.FixtureDomains, Sink: l.Addr().String(), Timeout: 30 * time.Second}
			log, err := poll.Run(ctx, bin)
			out := odmrtest.CustomerOutcome{Log: string(log)}
			var ee *exec.ExitError
			switch {
			case ctx.Err() != nil:
				out.Kind, out.Detail = odmrtest.OutcomeFailed, "killed: "+ctx.Err().Error()
			case errors.As(err, &ee):
				out.Kind, out.Detail = fetchmailOutcome(ee.ExitCode()), fmt.Sprintf("exit status %d", ee.ExitCode())
			case err != nil:
				return fail(err)
			default:
				out.Kind, out.Detail = odmrtest.OutcomeOK, "exit status 0"
			}
			// fetchmail relays the sink's 250 only once the sink has
			// the message, so the sink is complete when fetchmail exits.
			out.Messages = sink.Messages()
			return out
		},
		User:             odmrtest.FixtureUser,
		Secret:           odmrtest.FixtureSecret,
		Domains:          odmrtest.FixtureDomains,
		RefusedRecipient: odmrtest.FixtureRefusedRecipient,
		Timeout:          20 * time.Second,
	}
}

// fetchmailExpected is how fetchmail 6.4 fares against each check that
// it does not pass, and why; CONFORMANCE.md lists the same. A check whose
// result differs from this table fails the test, so that the table and
// CONFORMANCE.md follow fetchmail's behaviour.
var fetchmailExpected = map[string]odmrtest.Status{
	// fetchmail relays line by line: a chunk that ends in the middle of a
	// line stays in its buffer until the line's end comes, so the local
	// MTA never has the whole chunk and the provider waits for its reply
	// forever (fetchmail's relay has no idle timeout either). Providers
	// that pipeline their chunks, as this library's does, are not hit.
	"RFC3030/replies-to-each-chunk": odmrtest.Fail,
}

func TestFetchmailCustomer(t *testing.T) {
	bin := fetchmailtest.Binary(t)
	results := runCustomerSuite(t, fetchmailConfig(t, bin))
	for _, c := range odmrtest.CustomerChecks() {
		r := results[c.ID()]
		want, ok := fetchmailExpected[c.ID()]
		if !ok {
			want = odmrtest.Pass
		}
		if r.Status != want {
			t.Errorf("%s: %s, want %s", c.ID(), r, want)
		}
	}
}

// runCustomerSuite runs the customer suite with cfg, logging each result,
// and returns the results by check ID. The transcripts of the sessions
// are logged at the end when the test failed, or always with
// ODMRTEST_TRANSCRIPTS set.
func runCustomerSuite(t *testing.T, cfg odmrtest.CustomerConfig) map[string]odmrtest.Result {
	t.Helper()
	var mu sync.Mutex
	var transcripts strings.Builder
	cfg.Debug = writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return transcripts.Write(p)
	})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("ODMRTEST_TRANSCRIPTS") != "" {
			mu.Lock()
			defer mu.Unlock()
			t.Logf("transcripts:\n%s", transcripts.String())
		}
	})
	results := map[string]odmrtest.Result{}
	_, err := odmrtest.RunCustomer(t.Context(), cfg, odmrtest.ReporterFunc(func(r odmrtest.Result) {
		results[r.Check.ID()] = r
		t.Log(r)
	}))
	if err != nil {
		t.Fatal(err)
	}
	return results
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
