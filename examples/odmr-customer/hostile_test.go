package main

import (
	"bytes"
	"encoding/base64"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hostileProvider listens on loopback and, to the first customer that
// connects, plays a provider that accepts any login and ATRN, then tries
// to relay through the customer: one message to rcpts. It reports the
// ATRN line and the code of each RCPT's reply.
type hostileProvider struct {
	addr  string
	done  chan struct{}
	atrn  string
	codes []int
}

func startHostileProvider(t *testing.T, rcpts []string) *hostileProvider {
	t.Helper()
	h := &hostileProvider{done: make(chan struct{})}
	h.addr, _ = smtptest.Script(t, func(c *textproto.Conn, conn net.Conn) {
		defer close(h.done)
		step := func(reply string, code int) bool {
			if reply != "" {
				c.PrintfLine("%s", reply)
			}
			_, _, err := c.ReadResponse(code)
			return err == nil
		}
		evilLogin(c, conn)
		h.atrn, _ = c.ReadLine()
		c.PrintfLine("250 OK now reversing the connection")
		if _, _, err := c.ReadResponse(220); err != nil {
			return
		}
		if !step("EHLO evil.test", 250) || !step("MAIL FROM:<spam@evil.test>", 250) {
			return
		}
		accepted := false
		for _, r := range rcpts {
			c.PrintfLine("RCPT TO:<%s>", r)
			code, _, _ := c.ReadResponse(0)
			h.codes = append(h.codes, code)
			accepted = accepted || code == 250
		}
		if accepted && step("DATA", 354) {
			io.WriteString(conn, "Subject: relay me\r\n\r\nspam\r\n.\r\n")
			c.ReadResponse(250)
		}
		step("QUIT", 221)
	})
	return h
}

// evilLogin plays a provider up to ATRN: the greeting, EHLO offering
// CRAM-MD5 and ATRN, and a CRAM-MD5 exchange that takes any answer.
func evilLogin(c *textproto.Conn, conn net.Conn) {
	c.PrintfLine("220 evil.test ODMR")
	c.ReadLine() // EHLO
	io.WriteString(conn, "250-evil.test\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n")
	c.ReadLine() // AUTH CRAM-MD5
	c.PrintfLine("334 %s", base64.StdEncoding.EncodeToString([]byte("<1@evil.test>")))
	c.ReadLine()
	c.PrintfLine("235 2.7.0 ok")
}

// buildCustomer builds the program once for the tests that run it.
var buildCustomer = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "odmr-customer-test")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "odmr-customer")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", &exec.ExitError{Stderr: out}
	}
	return bin, nil
})

// runCustomer runs the built program with args and returns its exit code
// and stderr.
func runCustomer(t *testing.T, args ...string) (int, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the program")
	}
	bin, err := buildCustomer()
	require.NoError(t, err)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "ODMR_SECRET=s3cret")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return code, stderr.String()
}

// relayRcpts are what a hostile provider sends: two foreign domains,
// then one of the customer's own.
var relayRcpts = []string{"x@evil.test", "y@example.net", "u@example.org"}

func TestProgramRefusesRelayIntoMaildir(t *testing.T) {
	h := startHostileProvider(t, relayRcpts)
	md := filepath.Join(t.TempDir(), "Maildir")
	code, stderr := runCustomer(t, "-provider", h.addr, "-user", "alice", "-domains", "example.org",
		"-maildir", md, "-hostname", "customer.test")
	<-h.done
	assert.Equal(t, exitMail, code, stderr)
	assert.Equal(t, "ATRN example.org", h.atrn)
	assert.Equal(t, []int{550, 550, 250}, h.codes, "550 5.7.1 to the foreign recipients")
	entries, err := os.ReadDir(filepath.Join(md, "new"))
	require.NoError(t, err)
	require.Len(t, entries, 1)
	b, err := os.ReadFile(filepath.Join(md, "new", entries[0].Name()))
	require.NoError(t, err)
	assert.Contains(t, string(b), "Delivered-To: u@example.org\n")
	assert.NotContains(t, string(b), "x@evil.test")
	assert.NotContains(t, string(b), "example.net")
}

// recordingBackend is a local MTA that records the recipients it is
// given.
type recordingBackend struct {
	sessions atomic.Int64 // connections served

	mu     sync.Mutex
	rcpts  []string
	refuse string // a recipient refused with 450
}

func (b *recordingBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	b.sessions.Add(1)
	return &recordingSession{b}, nil
}

type recordingSession struct{ b *recordingBackend }

func (s *recordingSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *recordingSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if to == s.b.refuse {
		return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "Mailbox unavailable"}
	}
	s.b.rcpts = append(s.b.rcpts, to)
	return nil
}
func (s *recordingSession) Data(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err }
func (s *recordingSession) Reset()                 {}
func (s *recordingSession) Logout() error          { return nil }

func startLocalMTA(t *testing.T) (string, *recordingBackend) {
	t.Helper()
	be := &recordingBackend{}
	srv := smtp.NewServer(be)
	srv.Domain = "mta.test"
	return smtptest.Serve(t, srv), be
}

func TestProgramRefusesRelayToTheLocalMTA(t *testing.T) {
	// With a bare ATRN, -accept-domains says which recipients are ours.
	mta, be := startLocalMTA(t)
	h := startHostileProvider(t, relayRcpts)
	code, stderr := runCustomer(t, "-provider", h.addr, "-user", "alice", "-accept-domains", "EXAMPLE.org",
		"-smtp", mta, "-hostname", "customer.test")
	<-h.done
	assert.Equal(t, exitMail, code, stderr)
	assert.Equal(t, "ATRN", h.atrn)
	assert.Equal(t, []int{550, 550, 250}, h.codes)
	be.mu.Lock()
	defer be.mu.Unlock()
	// (The sink asks the MTA about each recipient at RCPT, then delivers.)
	assert.Contains(t, be.rcpts, "u@example.org")
	assert.NotContains(t, be.rcpts, "x@evil.test", "the local MTA never sees a foreign recipient")
	assert.NotContains(t, be.rcpts, "y@example.net")
}

func TestProgramBareATRNNeedsAcceptDomains(t *testing.T) {
	code, stderr := runCustomer(t, "-provider", "127.0.0.1:1", "-user", "alice", "-maildir", t.TempDir())
	assert.Equal(t, exitUsage, code)
	assert.True(t, strings.Contains(stderr, "AcceptDomains"), stderr)
}

func TestProgramRefusesRelayThroughRelay(t *testing.T) {
	// -relay passes the session on command by command and refuses the
	// foreign recipients itself.
	mta, be := startLocalMTA(t)
	h := startHostileProvider(t, relayRcpts)
	code, stderr := runCustomer(t, "-provider", h.addr, "-user", "alice", "-domains", "example.org",
		"-relay", mta, "-hostname", "customer.test")
	<-h.done
	assert.Equal(t, exitMail, code, stderr)
	assert.Equal(t, []int{550, 550, 250}, h.codes)
	be.mu.Lock()
	defer be.mu.Unlock()
	assert.Equal(t, []string{"u@example.org"}, be.rcpts)
}
