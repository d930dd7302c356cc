package odmrtest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/fetchmailtest"
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

// relaySink is the local MTA behind fetchmail: a go-smtp server that
// keeps what it receives and refuses odmrtest.FixtureRefusedRecipient.
type relaySink struct {
	mu   sync.Mutex
	msgs []odmrtest.Message
}

func (s *relaySink) NewSession(*smtp.Conn) (smtp.Session, error) { return &relaySession{sink: s}, nil }

func (s *relaySink) received() []odmrtest.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]odmrtest.Message(nil), s.msgs...)
}

type relaySession struct {
	sink *relaySink
	cur  odmrtest.Message
}

func (rs *relaySession) Mail(from string, _ *smtp.MailOptions) error {
	rs.cur = odmrtest.Message{From: from}
	return nil
}

func (rs *relaySession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if strings.EqualFold(to, odmrtest.FixtureRefusedRecipient) {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	}
	rs.cur.To = append(rs.cur.To, to)
	return nil
}

func (rs *relaySession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	rs.cur.Body = string(b)
	rs.sink.mu.Lock()
	rs.sink.msgs = append(rs.sink.msgs, rs.cur)
	rs.sink.mu.Unlock()
	return nil
}

func (rs *relaySession) Reset()        { rs.cur = odmrtest.Message{} }
func (rs *relaySession) Logout() error { return nil }

// fetchmailConfig is the CustomerConfig that runs fetchmail once per
// check, polling the suite's provider with ODMR and relaying to a fresh
// relaySink.
func fetchmailConfig(t *testing.T, bin string) odmrtest.CustomerConfig {
	return odmrtest.CustomerConfig{
		Fetch: func(ctx context.Context, addr string) odmrtest.CustomerOutcome {
			fail := func(err error) odmrtest.CustomerOutcome {
				return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeFailed, Detail: "the test could not run fetchmail: " + err.Error()}
			}
			sink := &relaySink{}
			srv := smtp.NewServer(sink)
			srv.Domain = "sink.test"
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return fail(err)
			}
			go srv.Serve(strictEOFListener{l})
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
			out.Messages = sink.received()
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

// strictEOFListener hands the local MTA connections whose end reads as an
// error instead of io.EOF. go-smtp v0.25.1 copies a BDAT chunk with
// io.Copy, which takes io.EOF for the chunk's end: without this the MTA
// would store a message cut inside its last chunk as if it were whole, and
// RFC3030/provider-cuts-mid-BDAT would fail on the MTA behind fetchmail
// rather than on fetchmail. odmr.Customer does the same for itself.
type strictEOFListener struct{ net.Listener }

func (l strictEOFListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return strictEOFConn{c}, nil
}

type strictEOFConn struct{ net.Conn }

func (c strictEOFConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		err = net.ErrClosed
	}
	return n, err
}

func TestFetchmailCustomer(t *testing.T) {
	bin := fetchmailtest.Binary(t)
	cfg := fetchmailConfig(t, bin)
	var mu sync.Mutex
	var transcripts strings.Builder
	cfg.Debug = writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return transcripts.Write(p)
	})
	results := map[string]odmrtest.Result{}
	_, err := odmrtest.RunCustomer(t.Context(), cfg, odmrtest.ReporterFunc(func(r odmrtest.Result) {
		results[r.Check.ID()] = r
		t.Log(r)
	}))
	if err != nil {
		t.Fatal(err)
	}
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
	if t.Failed() || os.Getenv("ODMRTEST_TRANSCRIPTS") != "" {
		t.Logf("transcripts:\n%s", transcripts.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
