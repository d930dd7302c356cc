package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

// localMTA is a local MTA the peers figure delivers into: Postfix's
// smtp-sink or Exim's daemon, on a loopback port.
type localMTA struct {
	name string // how the figure names it, with its variant
	addr string
	// pipelining and chunking say whether its EHLO reply lists
	// PIPELINING and CHUNKING (read off the wire, not assumed).
	pipelining, chunking bool
	// received returns how many messages it has taken since it started.
	received func() (int, error)
	stop     func()
}

// offers describes the extensions of m's EHLO reply that matter here.
func (m *localMTA) offers() string {
	var s []string
	for _, e := range []struct {
		name string
		on   bool
	}{{"PIPELINING", m.pipelining}, {"CHUNKING", m.chunking}} {
		if e.on {
			s = append(s, e.name)
		} else {
			s = append(s, "no "+e.name)
		}
	}
	return strings.Join(s, ", ")
}

// startMTAs starts the local MTA called name, once per variant it is
// measured in, calling f with each; each is stopped after f.
func startMTAs(name string, f func(*localMTA) error) error {
	switch name {
	case "smtp-sink":
		bin, err := exec.LookPath(*smtpSinkBin)
		if err != nil {
			return fmt.Errorf("smtp-sink not found (apt-get install postfix): %w", err)
		}
		for _, hide := range []bool{false, true} {
			m, err := startSMTPSink(bin, hide)
			if err != nil {
				return err
			}
			err = f(m)
			m.stop()
			if err != nil {
				return err
			}
		}
		return nil
	case "exim", "postfix":
		start := startExim
		if name == "postfix" {
			start = startPostfix
		}
		m, err := start()
		if err != nil {
			return err
		}
		defer m.stop()
		return f(m)
	}
	return fmt.Errorf("unknown local MTA %q (smtp-sink, exim or postfix)", name)
}

// freeLoopbackAddr returns a loopback address whose port was free a
// moment ago, for a program that binds it itself.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitListening waits until something accepts connections at addr, for
// at most 10 seconds, or until exited is closed.
func waitListening(addr string, exited <-chan struct{}) error {
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s: %w", addr, err)
		}
		select {
		case <-exited:
			return errors.New("exited before it listened")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ready waits until m accepts connections (see waitListening) and
// reads its EHLO reply; on failure it stops m.
func (m *localMTA) ready(exited <-chan struct{}) error {
	if err := waitListening(m.addr, exited); err != nil {
		m.stop()
		return err
	}
	if err := m.readEHLO(); err != nil {
		m.stop()
		return fmt.Errorf("EHLO: %w", err)
	}
	return nil
}

// readEHLO reads which of PIPELINING and CHUNKING the MTA at m.addr
// offers, with go-smtp's client.
func (m *localMTA) readEHLO() error {
	c, err := smtp.Dial(m.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("probe.bench"); err != nil {
		return err
	}
	m.pipelining, _ = c.Extension("PIPELINING")
	m.chunking, _ = c.Extension("CHUNKING")
	return c.Quit()
}

// startSMTPSink runs smtp-sink on a free loopback port, without
// PIPELINING when hide is set, and waits until it accepts connections.
// It counts messages with smtp-sink's -c counters.
func startSMTPSink(bin string, hide bool) (*localMTA, error) {
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"-c"}
	if os.Geteuid() == 0 {
		// smtp-sink refuses to run as root without dropping privileges.
		args = append(args, "-u", "nobody")
	}
	if hide {
		args = append(args, "-p")
	}
	cmd := exec.Command(bin, append(args, addr, "1000")...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	counter := &sinkCounter{}
	exited := make(chan struct{})
	go func() {
		counter.read(out)
		cmd.Wait()
		close(exited)
	}()
	name := "smtp-sink"
	if hide {
		name = "smtp-sink -p"
	}
	m := &localMTA{name: name, addr: addr, received: counter.messages,
		stop: func() { cmd.Process.Kill(); <-exited }}
	if err := m.ready(exited); err != nil {
		return nil, fmt.Errorf("smtp-sink: %w", err)
	}
	return m, nil
}

// sinkCounter reads smtp-sink -c's running counters ("sess=1 quit=1
// mesg=3", each ended by a CR) and keeps the last message count.
type sinkCounter struct {
	mu  sync.Mutex
	msg int
	err error
}

func (s *sinkCounter) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		for _, f := range strings.Fields(sc.Text()) {
			if v, ok := strings.CutPrefix(f, "mesg="); ok {
				n, err := strconv.Atoi(v)
				s.mu.Lock()
				s.msg, s.err = n, err
				s.mu.Unlock()
			}
		}
	}
}

// messages returns the last count smtp-sink printed.
func (s *sinkCounter) messages() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msg, s.err
}

// eximConfig is the configuration of Exim as local MTA: it offers
// PIPELINING and CHUNKING (Exim's defaults), takes every recipient, and
// throws every message away once received (discard in the DATA ACL, which
// Exim also runs for BDAT LAST), logging it with "<=" in its main log. No
// TCP_NODELAY, as in the target, and no limit on messages per
// connection (Exim's default of 1000 would end the session).
const eximConfig = `primary_hostname = mta.bench
spool_directory = DIR/spool
log_file_path = DIR/log/%slog
pid_file_path = DIR/exim.pid
notifier_socket = DIR/spool/notify
keep_environment =
exim_user = nobody
exim_group = nogroup
never_users = root
local_interfaces = 127.0.0.1
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
tcp_nodelay = false
smtp_accept_max_per_connection = 0
smtp_accept_queue_per_connection = 0
acl_smtp_rcpt = acl_rcpt
acl_smtp_data = acl_data

begin acl
acl_rcpt:
  accept
acl_data:
  discard

begin routers
begin transports
`

// startExim runs Exim's daemon (the build of
// ../shared/peers/exim/build.sh) as the local MTA, with eximConfig in a
// temporary directory, as root (Exim drops to nobody by itself), and
// counts the messages its main log records as received.
func startExim() (_ *localMTA, err error) {
	bin := *eximBin
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("exim: not built (../shared/peers/exim/build.sh, as root): %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("exim: the daemon must be started as root")
	}
	dir, err := mtaDir("exim", 0o750, "spool", "log")
	if err != nil {
		return nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	for _, d := range []string{"spool", "log"} {
		if err := chownTo(filepath.Join(dir, d), "nobody", "nogroup"); err != nil {
			return nil, err
		}
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "exim.conf")
	if err := os.WriteFile(conf, []byte(strings.ReplaceAll(eximConfig, "DIR", dir)), 0o644); err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "-C", conf, "-bdf", "-oX", port)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	mainlog := filepath.Join(dir, "log", "mainlog")
	m := &localMTA{name: "exim", addr: addr,
		received: func() (int, error) { return countLines(mainlog, " <= ") },
		stop: func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
			cleanup()
		}}
	if err := m.ready(exited); err != nil {
		return nil, fmt.Errorf("exim: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return m, nil
}

// waitReceived waits until m has received want messages, for at most
// 10 seconds: an MTA may count a message after its client has read the
// reply to it (smtp-sink's counter comes through a pipe). It returns the
// count.
func (m *localMTA) waitReceived(want int) (int, error) {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n, err := m.received()
		if err != nil || n >= want || time.Now().After(deadline) {
			return n, err
		}
	}
}

// mtaDir makes the temporary directory of a private instance of the MTA
// name, mode 0755 (Exim and Postfix refuse a configuration that others
// can write), with the subdirectories subs in it, mode perm.
func mtaDir(name string, perm os.FileMode, subs ...string) (string, error) {
	dir, err := os.MkdirTemp("", "odmr-bench-"+name+"-")
	if err != nil {
		return "", err
	}
	err = os.Chmod(dir, 0o755)
	for _, d := range subs {
		if err == nil {
			err = os.Mkdir(filepath.Join(dir, d), perm)
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// chownTo gives path to the user and group named.
func chownTo(path, owner, group string) error {
	u, err := user.Lookup(owner)
	if err != nil {
		return err
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return err
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return err
	}
	return os.Chown(path, uid, gid)
}

// postfixMain and postfixMaster are the configuration of a private
// Postfix instance as local MTA (Debian's postfix package, whose daemon
// is not started): smtpd on 127.0.0.1 offers PIPELINING and CHUNKING (its
// defaults since Postfix 3.4), takes mail for any domain from loopback,
// and every message is queued as usual and then delivered to the discard
// transport. Postfix logs to a file of its own (postlogd).
const postfixMain = `compatibility_level = 3.6
queue_directory = DIR/queue
data_directory = DIR/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.bench
myorigin = mta.bench
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
relay_domains = static:ALL
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
default_transport = discard
relay_transport = discard
local_transport = discard
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = DIR/maillog
maillog_file_prefixes = DIR
smtpd_tls_security_level = none
biff = no
`

const postfixMaster = `PORT      inet  n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// startPostfix starts a private Postfix instance (postfix -c DIR start,
// as root) with postfixMain and postfixMaster in a temporary directory,
// and counts the messages its cleanup daemon logs as queued.
func startPostfix() (_ *localMTA, err error) {
	bin, err := exec.LookPath("postfix")
	if err != nil {
		return nil, fmt.Errorf("postfix not found (apt-get install postfix): %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("postfix: a private instance must be started as root")
	}
	dir, err := mtaDir("postfix", 0o755, "etc", "queue", "data")
	if err != nil {
		return nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	if err := chownTo(filepath.Join(dir, "data"), "postfix", "postfix"); err != nil {
		return nil, err
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	etc := filepath.Join(dir, "etc")
	for name, text := range map[string]string{
		"main.cf":   strings.ReplaceAll(postfixMain, "DIR", dir),
		"master.cf": strings.Replace(postfixMaster, "PORT", port+strings.Repeat(" ", max(0, 10-len(port))), 1),
	} {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(text), 0o644); err != nil {
			return nil, err
		}
	}
	postfix := func(what string) error {
		out, err := exec.Command(bin, "-c", etc, what).CombinedOutput()
		if err != nil {
			b, _ := os.ReadFile(filepath.Join(dir, "maillog"))
			return fmt.Errorf("postfix %s: %v: %s%s", what, err, out, b)
		}
		return nil
	}
	// check creates the queue's directories.
	if err := postfix("check"); err != nil {
		return nil, err
	}
	if err := postfix("start"); err != nil {
		return nil, err
	}
	maillog := filepath.Join(dir, "maillog")
	m := &localMTA{name: "postfix", addr: addr,
		received: func() (int, error) { return countLines(maillog, "/cleanup[", ": message-id=") },
		stop: func() {
			postfix("stop")
			waitGone(filepath.Join(dir, "queue", "pid", "master.pid"))
			cleanup()
		}}
	if err := m.ready(nil); err != nil {
		return nil, fmt.Errorf("postfix: %w", err)
	}
	return m, nil
}

// countLines counts the lines of the file at path that hold every one
// of subs; a file not there yet holds none.
func countLines(path string, subs ...string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	n := 0
	for line := range bytes.Lines(b) {
		all := true
		for _, s := range subs {
			all = all && bytes.Contains(line, []byte(s))
		}
		if all {
			n++
		}
	}
	return n, nil
}

// waitGone waits, for at most 10 seconds, until the process whose pid
// the file at pidFile holds has exited.
func waitGone(pidFile string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
}
