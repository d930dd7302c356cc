package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/memqueue"
	"github.com/go-odmr/odmr/odmrtest"
)

// providerAddr returns the address the config dials.
func providerAddr(t *testing.T, cfg odmrtest.ProviderConfig) string {
	t.Helper()
	c, err := cfg.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.RemoteAddr().String()
}

func secretFile(t *testing.T, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// intake is an SMTP server that queues into q, as a provider's MX does.
func intake(t *testing.T, q *memqueue.Queue) string {
	t.Helper()
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &intakeSession{q: q}, nil
	}))
	s.Domain = "provider.example"
	return smtptest.Serve(t, s)
}

type intakeSession struct {
	q   *memqueue.Queue
	env odmr.Envelope
}

func (s *intakeSession) Mail(from string, _ *smtp.MailOptions) error {
	s.env = odmr.Envelope{From: from}
	return nil
}
func (s *intakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.env.To = append(s.env.To, to)
	return nil
}
func (s *intakeSession) Data(r io.Reader) error {
	_, err := s.q.Enqueue(s.env, r)
	return err
}
func (s *intakeSession) Reset()        { s.env = odmr.Envelope{} }
func (s *intakeSession) Logout() error { return nil }

func runChecker(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	t.Logf("exit %d\n%s%s", code, out.String(), errOut.String())
	return code, out.String() + errOut.String()
}

func baseArgs(t *testing.T, cfg odmrtest.ProviderConfig) []string {
	return []string{
		"-addr", providerAddr(t, cfg), "-user", cfg.User, "-secret-file", secretFile(t, cfg.Secret),
		"-domains", strings.Join(cfg.Domains, ","), "-foreign-domain", cfg.ForeignDomain,
		"-replays-pipelined", "-timeout", "10s",
		"-foreign-user", cfg.ForeignUser, "-foreign-secret-file", secretFile(t, cfg.ForeignSecret),
	}
}

func TestCheckerWithoutIntakeSkipsMailChecks(t *testing.T) {
	_, cfg := odmrtest.NewProvider(t)
	code, out := runChecker(t, baseArgs(t, cfg)...)
	if code != exitOK {
		t.Fatalf("exit %d, want 0", code)
	}
	for _, c := range odmrtest.ProviderChecks() {
		line := lineOf(out, c.ID())
		switch {
		case line == "":
			t.Errorf("no line for %s", c.ID())
		case c.NeedsEnqueue && !strings.Contains(line, " SKIP"):
			t.Errorf("%s needs mail and ran without -smtp: %s", c.ID(), line)
		}
	}
}

// TestCheckerSecondAccount checks that -foreign-user makes the checker
// pull the second account's mail: the check that needs it runs and
// passes, and without the flag it is skipped.
func TestCheckerSecondAccount(t *testing.T) {
	p, cfg := odmrtest.NewProvider(t)
	smtpAddr := intake(t, p.Queue.(*memqueue.Queue))
	args := append(baseArgs(t, cfg), "-smtp", smtpAddr, "-skip", "")
	_, out := runChecker(t, args...)
	if line := lineOf(out, "5.2.1/other-customers-mail-stays-queued"); !strings.Contains(line, " PASS") {
		t.Errorf("with -foreign-user: %q, want PASS", line)
	}
	args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "-foreign-user" || a == cfg.ForeignUser })
	_, out = runChecker(t, args...)
	if line := lineOf(out, "5.2.1/other-customers-mail-stays-queued"); !strings.Contains(line, " SKIP") {
		t.Errorf("without -foreign-user: %q, want SKIP", line)
	}
}

func TestCheckerWithIntakeRunsEverything(t *testing.T) {
	p, cfg := odmrtest.NewProvider(t)
	smtpAddr := intake(t, p.Queue.(*memqueue.Queue))
	code, out := runChecker(t, append(baseArgs(t, cfg), "-smtp", smtpAddr)...)
	// This test is about the checker, not the provider, whose conformance
	// odmrtest's own tests judge: every check runs, and the exit status
	// says whether one failed.
	failed := 0
	for _, c := range odmrtest.ProviderChecks() {
		line := lineOf(out, c.ID())
		switch {
		case c.NeedsEnqueue && strings.Contains(line, " SKIP"), line == "":
			t.Errorf("%s did not run with -smtp: %q", c.ID(), line)
		case strings.Contains(line, " FAIL"):
			failed++
		}
	}
	if want := map[bool]int{false: exitOK, true: exitFail}[failed > 0]; code != want {
		t.Errorf("exit %d with %d failed checks, want %d", code, failed, want)
	}
	if !strings.Contains(out, fmt.Sprintf(" %d failed", failed)) {
		t.Errorf("the summary does not count %d failed checks", failed)
	}
}

func TestCheckerSecretFromEnvironment(t *testing.T) {
	_, cfg := odmrtest.NewProvider(t)
	t.Setenv("ODMR_SECRET", cfg.Secret)
	args := baseArgs(t, cfg)
	for i, a := range args {
		if a == "-secret-file" {
			args = append(args[:i:i], args[i+2:]...)
			break
		}
	}
	if code, _ := runChecker(t, args...); code != exitOK {
		t.Fatalf("exit %d, want 0", code)
	}
}

func TestCheckerFailsWrongSecret(t *testing.T) {
	_, cfg := odmrtest.NewProvider(t)
	cfg.Secret = "not-the-secret"
	code, out := runChecker(t, baseArgs(t, cfg)...)
	if code != exitFail {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(lineOf(out, "5.1.2/CRAM-MD5-RFC2195"), " FAIL  535") {
		t.Errorf("the CRAM-MD5 check does not show the 535: %s", lineOf(out, "5.1.2/CRAM-MD5-RFC2195"))
	}
}

func TestCheckerUsage(t *testing.T) {
	t.Setenv("ODMR_SECRET", "")
	t.Setenv("ODMR_FOREIGN_SECRET", "")
	for _, args := range [][]string{
		{},
		{"-addr", "127.0.0.1:1", "-user", "u", "-domains", "a.example", "-foreign-domain", "b.example"},
		{"-addr", "127.0.0.1:1", "-user", "u", "-domains", "a.example", "-foreign-domain", "a.example", "-secret-file", secretFile(t, "x")},
		{"-no-mail", "maybe", "-addr", "127.0.0.1:1", "-user", "u", "-domains", "a.example", "-foreign-domain", "b.example", "-secret-file", secretFile(t, "x")},
		{"extra"},
		// A second account without its secret.
		{"-foreign-user", "bob", "-addr", "127.0.0.1:1", "-user", "u", "-domains", "a.example", "-foreign-domain", "b.example", "-secret-file", secretFile(t, "x")},
	} {
		if code, _ := runChecker(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	if code, out := runChecker(t, "-list"); code != exitOK || lineOf(out, "5.2.1/no-mail-453") == "" {
		t.Errorf("-list: exit %d", code)
	}
}

// lineOf returns the output line of check id.
func lineOf(out, id string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, id+" ") {
			return l
		}
	}
	return ""
}
