package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/eximtest"
	"github.com/go-odmr/odmr/internal/fetchmailtest"
	"github.com/go-odmr/odmr/odmrtest"
)

// fetchmailExitCodes is what fetchmail's exit statuses mean, for
// -exit-codes: 4 is any protocol error, a 450 included, so it is left to
// mean failed.
const fetchmailExitCodes = "0=ok,1=no-mail,3=auth-failed,8=try-later,128=auth-failed"

// runCustomerMode runs the checker with -customer against the customer
// that the shell command template cmd starts (see -customer-cmd), as
// odmrtest's fixture account (odmrtest.FixtureUser, FixtureSecret and
// FixtureDomains), with exitCodes as -exit-codes and extra flags after
// those. It returns the exit status and the output. A test of another
// customer program needs only its command template and its exit codes.
func runCustomerMode(t *testing.T, cmd, exitCodes string, extra ...string) (int, string) {
	t.Helper()
	args := append([]string{"-customer", "-user", odmrtest.FixtureUser,
		"-secret-file", secretFile(t, odmrtest.FixtureSecret),
		"-domains", strings.Join(odmrtest.FixtureDomains, ","),
		"-customer-cmd", cmd, "-exit-codes", exitCodes, "-timeout", "20s"}, extra...)
	return runChecker(t, args...)
}

// wantCustomerLines checks that out has one line per customer check, with
// the status of want (PASS for a check not in want), and the summary.
func wantCustomerLines(t *testing.T, out string, want map[string]odmrtest.Status) {
	t.Helper()
	for _, c := range odmrtest.CustomerChecks() {
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, c.ID()+" ") {
				lines = append(lines, l)
			}
		}
		st, ok := want[c.ID()]
		if !ok {
			st = odmrtest.Pass
		}
		if assert.Len(t, lines, 1, "lines for %s", c.ID()) {
			assert.Contains(t, lines[0], fmt.Sprintf(" %-6s %s", c.Level, st), "%s", c.ID())
		}
	}
	failed := 0
	for _, st := range want {
		if st == odmrtest.Fail {
			failed++
		}
	}
	assert.Contains(t, out, fmt.Sprintf("%d checks: ", len(odmrtest.CustomerChecks())))
	assert.Contains(t, out, fmt.Sprintf(", %d failed,", failed))
}

// buildCustomer builds examples/odmr-customer.
func buildCustomer(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs odmr-customer")
	}
	bin := filepath.Join(t.TempDir(), "odmr-customer")
	out, err := exec.Command("go", "build", "-o", bin, "../odmr-customer").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// odmrCustomerCmd is the -customer-cmd that runs odmr-customer, relaying
// to the checker's sink with its envelope.
func odmrCustomerCmd(bin string) string {
	return bin + " -provider {host}:{port} -user {user} -secret-file {secret-file} -domains {domains}" +
		" -smtp {sink-host}:{sink-port} -no-tls -hostname customer.example"
}

// TestCustomerModeOdmrCustomer runs the checker as an operator would
// against examples/odmr-customer, run once per check by -customer-cmd:
// every check passes, one line each.
func TestCustomerModeOdmrCustomer(t *testing.T) {
	bin := buildCustomer(t)
	code, out := runCustomerMode(t, odmrCustomerCmd(bin), defaultExitCodes)
	assert.Equal(t, exitOK, code)
	wantCustomerLines(t, out, nil)
}

// fetchmailExpected is how fetchmail 6.4 fares where it does not pass,
// as CONFORMANCE.md has it (odmrtest's TestFetchmailCustomer asserts the
// same through the Go API).
var fetchmailExpected = map[string]odmrtest.Status{
	// fetchmail relays line by line and holds a chunk's last partial
	// line, so a provider that waits for each chunk's reply waits forever.
	"RFC3030/replies-to-each-chunk": odmrtest.Fail,
}

// TestCustomerModeFetchmail runs the checker against the real fetchmail,
// through fetchmail-customer.sh as CONFORMANCE.md documents it. It skips
// when fetchmail is missing, unless CI is set.
func TestCustomerModeFetchmail(t *testing.T) {
	bin := fetchmailtest.Binary(t)
	t.Setenv("FETCHMAIL", bin)
	code, out := runCustomerMode(t,
		"sh fetchmail-customer.sh {host} {port} {user} {secret-file} {domains} {sink-host} {sink-port}",
		fetchmailExitCodes)
	assert.Equal(t, exitFail, code)
	wantCustomerLines(t, out, fetchmailExpected)
}

// eximCustomerExpected is how Exim 4.99.1's customer fares where it does
// not pass, as CONFORMANCE.md has it; odmrtest's TestEximCustomer holds
// Exim to the same through the Go API (its eximCustomerExpected).
var eximCustomerExpected = map[string]odmrtest.Status{
	// Exim never looks for ATRN in the EHLO reply.
	"5.1.1/refuses-provider-without-ATRN": odmrtest.Fail,
	// The QUIT that came with the 250 is lost at the role swap.
	"5.3/250-then-QUIT-is-no-mail": odmrtest.Fail,
	// Exim takes every recipient and bounces later: -refused-recipient
	// none.
	"5.3/per-recipient-refusal": odmrtest.Skip,
}

// TestCustomerModeExim runs the checker against Exim's customer, through
// exim-customer.sh as CONFORMANCE.md documents it: "exim -atrn" with a
// copy of the build's customer.conf that delivers to the checker's sink.
// It holds eximtest's lock on the build, and skips when Exim is not
// built or the test does not run as root, unless CI is set.
func TestCustomerModeExim(t *testing.T) {
	ex := eximtest.Open(t)
	t.Setenv("ODMR_EXIM_DIR", ex.Dir)
	code, out := runCustomerMode(t, eximCustomerCmd, defaultExitCodes, "-refused-recipient", "none")
	assert.Equal(t, exitFail, code)
	wantCustomerLines(t, out, eximCustomerExpected)
}

// eximCustomerCmd is the -customer-cmd that runs Exim's customer.
const eximCustomerCmd = "sh exim-customer.sh {host} {port} {user} {secret-file} {domains} {sink-host} {sink-port}"

// TestCustomerModeByHand runs the checker without -customer-cmd, as an
// operator does who starts the customer by hand: the test reads the
// checker's output and runs odmr-customer once each time the checker
// says it is waiting. The checks cannot see the customer's exit status,
// so they judge the wire and the sink only, and pass.
func TestCustomerModeByHand(t *testing.T) {
	bin := buildCustomer(t)
	secret := secretFile(t, odmrtest.FixtureSecret)
	pr, pw := io.Pipe()
	var out strings.Builder
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		var prov, sink string
		for sc.Scan() {
			l := sc.Text()
			out.WriteString(l + "\n")
			if rest, ok := strings.CutPrefix(l, "provider listening on "); ok {
				fmt.Sscanf(strings.ReplaceAll(rest, ";", " "), "%s SMTP sink (the customer's local mail server) on %s", &prov, &sink)
			}
			if strings.HasPrefix(l, "waiting for the customer") {
				// The customer's own result does not matter here: the
				// checker judges what it did.
				exec.Command(bin, "-provider", prov, "-user", odmrtest.FixtureUser, "-secret-file", secret,
					"-domains", strings.Join(odmrtest.FixtureDomains, ","), "-smtp", sink, "-no-tls",
					"-hostname", "customer.example").Run()
			}
		}
	}()
	var errs strings.Builder
	code := run(context.Background(), []string{"-customer", "-user", odmrtest.FixtureUser, "-secret-file", secret,
		"-domains", strings.Join(odmrtest.FixtureDomains, ","), "-timeout", "20s"}, pw, &errs)
	pw.Close()
	wg.Wait()
	t.Logf("exit %d\n%s%s", code, out.String(), errs.String())
	assert.Equal(t, exitOK, code)
	wantCustomerLines(t, out.String(), nil)
	assert.Contains(t, out.String(), "the customer's own report is unknown")
}

// allCustomerChecksBut returns the -skip list that leaves only the
// customer check id to run.
func allCustomerChecksBut(id string) string {
	var skip []string
	for _, c := range odmrtest.CustomerChecks() {
		if c.ID() != id {
			skip = append(skip, c.ID())
		}
	}
	return strings.Join(skip, ",")
}

// TestCustomerCommandKilledAtTimeout runs a customer command that never
// connects: the check fails at its timeout, the command is killed with
// its children, and the checker goes on.
func TestCustomerCommandKilledAtTimeout(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	code, out := runCustomerMode(t, "sh -c 'echo $$ >"+pidFile+"; exec sleep 600'", defaultExitCodes,
		"-timeout", "1s", "-skip", allCustomerChecksBut("5.2.1/453-is-no-mail"))
	assert.Equal(t, exitFail, code)
	assert.Contains(t, lineOf(out, "5.2.1/453-is-no-mail"), " FAIL")
	assert.Contains(t, lineOf(out, "5.2.1/453-is-no-mail"), "did not connect")
	pid, err := os.ReadFile(pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		// On a loaded machine sh may not have run before the kill.
		t.Log("the command was killed before it wrote its pid")
		return
	}
	require.NoError(t, err)
	// The grandchild, sleep, dies: SIGKILL went to the process group. It
	// may linger as a zombie of a parent that was killed too, until init
	// reaps it; a zombie runs no more.
	stat := filepath.Join("/proc", strings.TrimSpace(string(pid)), "stat")
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc to watch the process in")
	}
	assert.Eventually(t, func() bool {
		b, err := os.ReadFile(stat)
		if err != nil {
			return true
		}
		_, rest, _ := strings.Cut(string(b), ") ")
		return strings.HasPrefix(rest, "Z")
	}, time.Minute, 10*time.Millisecond, "the customer command's child still runs")
}

// TestCustomerModeSecretStaysOut checks that the secret reaches the
// command through {secret-file} and $ODMR_SECRET, and never the
// checker's output, even when the command prints it.
func TestCustomerModeSecretStaysOut(t *testing.T) {
	code, out := runCustomerMode(t, `cat {secret-file}; echo "$ODMR_SECRET"; exit 1`, defaultExitCodes,
		"-timeout", "20s", "-skip", allCustomerChecksBut("5.2.1/453-is-no-mail"), "-v")
	assert.Equal(t, exitFail, code)
	assert.NotContains(t, out, odmrtest.FixtureSecret)
	assert.Contains(t, out, "<redacted>")
}

func TestExpandCommand(t *testing.T) {
	got := expandCommand("c {user} {domains} {x} {user}", map[string]string{"user": "a'b c", "domains": "d.example"})
	assert.Equal(t, `c 'a'\''b c' 'd.example' {x} 'a'\''b c'`, got)
}

func TestCustomerModeUsage(t *testing.T) {
	t.Setenv("ODMR_SECRET", "")
	s := secretFile(t, "x")
	for _, args := range [][]string{
		{"-customer"},
		{"-customer", "-user", "u", "-secret-file", s},
		{"-customer", "-user", "u", "-domains", "a.example"},
		{"-customer", "-user", "u", "-domains", "a.example", "-secret-file", s, "-exit-codes", "0=great"},
		{"-customer", "-user", "u", "-domains", "a.example", "-secret-file", s, "-exit-codes", "x=ok"},
		{"-customer", "-user", "u", "-domains", "a.example", "-secret-file", s, "-listen", "127.0.0.1:-1"},
		{"-customer", "-user", "u", "-domains", "a.example", "-secret-file", s, "-sink", "127.0.0.1:-1"},
		{"-customer", "-user", "u", "-domains", " , ", "-secret-file", s},
	} {
		if code, _ := runChecker(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	code, out := runChecker(t, "-customer", "-list")
	assert.Equal(t, exitOK, code)
	for _, c := range odmrtest.CustomerChecks() {
		assert.NotEmpty(t, lineOf(out, c.ID()), "-customer -list lacks %s", c.ID())
	}
	assert.Empty(t, lineOf(out, "5.2.1/no-mail-453"), "-customer -list lists provider checks")
}

func TestTailBufferKeepsTheEnd(t *testing.T) {
	var b tailBuffer
	b.Write([]byte("first line\n"))
	b.Write([]byte(strings.Repeat("x", maxCommandLog-4) + "end\n"))
	got := b.String()
	assert.True(t, strings.HasPrefix(got, "[output cut to its last "), "no note of the cut: %.60q", got)
	assert.True(t, strings.HasSuffix(got, "xxend\n"))
	assert.NotContains(t, got, "first line")
	assert.LessOrEqual(t, len(got), maxCommandLog+100)

	// Written in small pieces, past the point where the excess is
	// dropped, it keeps exactly the last maxCommandLog bytes.
	var small tailBuffer
	var all strings.Builder
	for i := 0; all.Len() < 5*maxCommandLog/2; i++ {
		line := fmt.Sprintf("line %d\n", i)
		small.Write([]byte(line))
		all.WriteString(line)
	}
	header, tail, _ := strings.Cut(small.String(), "\n")
	assert.True(t, strings.HasPrefix(header, "[output cut to its last "), "no note of the cut: %.60q", header)
	assert.Equal(t, all.String()[all.Len()-maxCommandLog:], tail)
}

func TestCustomerConfigRefusedRecipient(t *testing.T) {
	s := secretFile(t, "x")
	for _, tt := range []struct{ flag, want string }{
		{"", "refused@a.example"},
		{"none", ""},
		{"nobody@b.example", "nobody@b.example"},
	} {
		o, err := parseFlags([]string{"-customer", "-user", "u", "-domains", "a.example,b.example", "-secret-file", s,
			"-refused-recipient", tt.flag}, io.Discard)
		require.NoError(t, err)
		cfg, closeAll, err := o.customerConfig(io.Discard)
		require.NoError(t, err)
		closeAll()
		assert.Equal(t, tt.want, cfg.RefusedRecipient, "-refused-recipient %q", tt.flag)
	}
}
