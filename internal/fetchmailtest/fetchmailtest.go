// Package fetchmailtest runs the real fetchmail, the ODMR customer people
// use, for the interop tests of this module: one poll of a provider with
// protocol ODMR, relaying the reversed session to a local SMTP server.
package fetchmailtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Binary returns the path of fetchmail. When it is missing the test is
// skipped outside CI and fails under CI (CI set to anything), whose
// .ci/run must install it.
func Binary(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("fetchmail")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("fetchmail is not installed, and CI is set: .ci/run must install it (apt-get install fetchmail)")
		}
		t.Skip("fetchmail is not installed (apt-get install fetchmail); skipping the interop test outside CI")
	}
	return path
}

// Poll is one run of fetchmail against the provider at Addr.
type Poll struct {
	Addr         string   // the provider, host:port
	User, Secret string   // the account; the rc file has no escapes, so no quotes or backslashes
	Domains      []string // sent with ATRN
	Sink         string   // the local SMTP server fetchmail relays to, host:port
	Timeout      time.Duration
}

// Run runs fetchmail once, verbose, in a temporary home, and returns its
// combined output and the error of its run: an *exec.ExitError carries
// its exit status.
func (p Poll) Run(ctx context.Context, bin string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "fetchmail-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	host, port, _ := net.SplitHostPort(p.Addr)
	sinkHost, sinkPort, _ := net.SplitHostPort(p.Sink)
	timeout := int(p.Timeout.Seconds())
	if timeout <= 0 {
		timeout = 20
	}
	rc := fmt.Sprintf("set no syslog\nset no bouncemail\n"+
		"poll %q with protocol ODMR service %s timeout %d\n"+
		"    user %q password %q\n"+
		"    fetchdomains %s\n"+
		"    smtphost \"%s/%s\"\n",
		host, port, timeout, p.User, p.Secret, strings.Join(p.Domains, " "), sinkHost, sinkPort)
	rcPath := filepath.Join(dir, "fetchmailrc")
	if err := os.WriteFile(rcPath, []byte(rc), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "-v", "-v", "--nodetach", "--nosyslog",
		"-f", rcPath, "--pidfile", filepath.Join(dir, "pid"))
	cmd.Env = append(os.Environ(), "FETCHMAILHOME="+dir, "HOME="+dir)
	cmd.WaitDelay = 2 * time.Second
	return cmd.CombinedOutput()
}
