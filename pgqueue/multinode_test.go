package pgqueue_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/pgtest"
)

// node is one odmr-provider process of the multi-node test.
type node struct {
	name       string
	cmd        *exec.Cmd
	odmr, smtp string
	exited     chan struct{}
	log        *bytes.Buffer
	logMu      *sync.Mutex
}

var addrRE = regexp.MustCompile(`addr=(\S+)`)

// startNode runs odmr-provider on the database and waits until both
// listeners are up.
func startNode(t *testing.T, bin, name, dsn string) *node {
	t.Helper()
	cmd := exec.Command(bin, "-accounts", dsn, "-queue", dsn, "-listen", "127.0.0.1:0", "-smtp", "127.0.0.1:0",
		"-hostname", name, "-lease-ttl", "5s", "-atrn-interval", "-1s", "-max-sessions-per-network", "1000",
		"-stop-timeout", "10s")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, cmd: cmd, exited: make(chan struct{}), log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			n.logMu.Lock()
			n.log.WriteString(line + "\n")
			switch {
			case strings.Contains(line, "ODMR listening"):
				n.odmr = addrRE.FindStringSubmatch(line)[1]
			case strings.Contains(line, "SMTP intake listening"):
				n.smtp = addrRE.FindStringSubmatch(line)[1]
				close(ready)
			}
			n.logMu.Unlock()
		}
	}()
	go func() {
		cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-n.exited
	})
	select {
	case <-ready:
	case <-n.exited:
		t.Fatalf("%s exited while starting:\n%s", name, n.output())
	case <-time.After(time.Minute):
		t.Fatalf("%s did not start in a minute:\n%s", name, n.output())
	}
	n.logMu.Lock()
	defer n.logMu.Unlock()
	return n
}

func (n *node) output() string {
	n.logMu.Lock()
	defer n.logMu.Unlock()
	return n.log.String()
}

// send queues one message through the intake at addr, in clear text.
func send(addr string, to []string, body string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail("s@sender.example", to, strings.NewReader(body)); err != nil {
		return err
	}
	return c.Quit()
}

// TestMultiNode runs three odmr-provider processes on one database: mail
// goes in through all three intakes, customers fetch through all three at
// once, and one node is killed with SIGKILL in the middle and started
// again. Every message accepted with a 250 must be delivered at least
// once, none twice but those that a session the kill cut short had
// received, and nothing may be left queued.
func TestMultiNode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs three provider processes")
	}
	dsn := pgtest.DSN(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "odmr-provider")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/go-odmr/odmr/examples/odmr-provider").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	const customers, messages = 8, 240
	var file strings.Builder
	for i := range customers {
		fmt.Fprintf(&file, "cust%d secret%d d%d.example\n", i, i, i)
	}
	acctFile := filepath.Join(dir, "accounts")
	if err := os.WriteFile(acctFile, []byte(file.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-accounts", dsn, "-load-accounts", acctFile).CombinedOutput(); err != nil {
		t.Fatalf("-load-accounts: %v\n%s", err, out)
	}

	var nodesMu sync.Mutex
	nodes := make([]*node, 3)
	for i := range nodes {
		nodes[i] = startNode(t, bin, fmt.Sprintf("node%d", i), dsn)
	}
	live := func() []*node {
		nodesMu.Lock()
		defer nodesMu.Unlock()
		var out []*node
		for _, n := range nodes {
			if n != nil {
				out = append(out, n)
			}
		}
		return out
	}

	// The intakes know the accounts' domains from the database.
	var se *smtp.SMTPError
	if err := send(nodes[0].smtp, []string{"x@nowhere.example"}, "Subject: x\r\n\r\nx\r\n"); !errors.As(err, &se) || se.Code != 550 {
		t.Errorf("mail for a domain no account owns: %v, want a 550", err)
	}

	// The mail: each message to one customer's domain, every fifth to
	// two, sent through the three intakes in turn.
	type key struct {
		n    int
		rcpt string
	}
	want := map[key]bool{}
	var wantMu sync.Mutex
	var sendWG sync.WaitGroup
	sendErrs := make(chan error, messages)
	for w := range 4 {
		sendWG.Go(func() {
			for i := w; i < messages; i += 4 {
				to := []string{fmt.Sprintf("u%d@d%d.example", i, i%customers)}
				if i%5 == 0 {
					to = append(to, fmt.Sprintf("v%d@d%d.example", i, (i+3)%customers))
				}
				ns := live()
				n := ns[i%len(ns)]
				body := fmt.Sprintf("From: s@sender.example\r\nMessage-ID: <%d@test>\r\nX-N: %d\r\nSubject: m%d\r\n\r\nbody %d\r\n", i, i, i, i)
				if err := send(n.smtp, to, body); err != nil {
					sendErrs <- fmt.Errorf("message %d through %s: %w", i, n.name, err)
					continue
				}
				wantMu.Lock()
				for _, r := range to {
					want[key{i, r}] = true
				}
				wantMu.Unlock()
			}
		})
	}

	// The customers, fetching through any live node until everything
	// accepted is delivered.
	var (
		gotMu     sync.Mutex
		got       = map[key]int{}
		delivered atomic.Int64
		fetches   atomic.Int64
		killed    atomic.Pointer[node] // set just before the SIGKILL
		cutShort  atomic.Int64         // sessions on the killed node that ended after it
		cutKeys   = map[key]bool{}     // what those sessions received
	)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	allDone := func() bool {
		wantMu.Lock()
		defer wantMu.Unlock()
		gotMu.Lock()
		defer gotMu.Unlock()
		for k := range want {
			if got[k] == 0 {
				return false
			}
		}
		return true
	}
	db, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// queueEmpty: mail committed by an intake killed before its 250 is
	// delivered too.
	queueEmpty := func() bool {
		var n int
		return db.QueryRow(ctx, "SELECT count(*) FROM odmr_pending").Scan(&n) == nil && n == 0
	}
	sendingDone := make(chan struct{})
	var custWG sync.WaitGroup
	for c := range customers {
		custWG.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				select {
				case <-sendingDone:
					if allDone() && queueEmpty() {
						return
					}
				default:
				}
				ns := live()
				idx := (c + i) % len(ns)
				n := ns[idx]
				var mine []key // what this session received
				cust := &odmr.Customer{
					Addr: n.odmr, Username: fmt.Sprintf("cust%d", c), Secret: fmt.Sprintf("secret%d", c),
					Domains:  []string{fmt.Sprintf("d%d.example", c)},
					Hostname: "customer.test",
					Logger:   slog.New(slog.DiscardHandler),
					Sink: odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
						msg, err := mail.ReadMessage(body)
						if err != nil {
							return err
						}
						io.Copy(io.Discard, msg.Body)
						var num int
						fmt.Sscan(msg.Header.Get("X-N"), &num)
						gotMu.Lock()
						for _, r := range env.To {
							got[key{num, r}]++
							mine = append(mine, key{num, r})
						}
						gotMu.Unlock()
						delivered.Add(1)
						return nil
					}),
				}
				fetches.Add(1)
				res, err := cust.Fetch(ctx)
				if killed.Load() == n {
					// Under way at the kill: what it received may not have
					// been completed, and may be delivered again.
					cutShort.Add(1)
					gotMu.Lock()
					for _, k := range mine {
						cutKeys[k] = true
					}
					gotMu.Unlock()
				}
				if err != nil || res.NoMail {
					// A node killed under us, or nothing yet: try the
					// next node after a moment.
					select {
					case <-ctx.Done():
					case <-time.After(time.Duration(20+rand.IntN(40)) * time.Millisecond):
					}
				}
			}
		})
	}

	// Kill node 1 while it delivers, once a third of the mail is out.
	var inFlight int64
	go func() {
		sendWG.Wait()
		close(sendingDone)
	}()
	for delivered.Load() < messages/3 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	nodesMu.Lock()
	victim := nodes[1]
	nodes[1] = nil
	nodesMu.Unlock()
	killed.Store(victim)
	victim.cmd.Process.Signal(syscall.SIGKILL)
	<-victim.exited
	t.Logf("node1 killed with SIGKILL after %d deliveries", delivered.Load())
	restarted := startNode(t, bin, "node1", dsn)
	nodesMu.Lock()
	nodes[1] = restarted
	nodesMu.Unlock()

	custWG.Wait()
	inFlight = cutShort.Load()
	close(sendErrs)
	refused := 0
	for err := range sendErrs {
		refused++
		t.Logf("not accepted (the sender retries): %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("not everything was delivered in time")
	}

	// Stop the nodes cleanly; nothing may be left queued.
	for _, n := range live() {
		n.cmd.Process.Signal(syscall.SIGTERM)
		<-n.exited
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var left, pending int
	conn.QueryRow(context.Background(), "SELECT count(*) FROM odmr_messages").Scan(&left)
	conn.QueryRow(context.Background(), "SELECT count(*) FROM odmr_pending").Scan(&pending)

	if out, err := exec.Command(bin, "-queue", dsn, "-list").CombinedOutput(); err != nil || !strings.Contains(string(out), "0 domains; 0 messages") {
		t.Errorf("-list -queue: %v\n%s", err, out)
	}

	var lost, twice, extra, unacked, unexplained int
	for k := range got {
		if !want[k] {
			unacked++
		}
	}
	for k := range want {
		switch c := got[k]; {
		case c == 0:
			lost++
		case c > 1:
			twice++
			extra += c - 1
			if !cutKeys[k] {
				unexplained++
			}
		}
	}
	t.Logf("accepted %d messages for %d recipients (%d not accepted); %d fetches, %d messages received: %d recipients lost, %d delivered twice or more (%d extra copies), %d sessions in flight at the kill, which had received %d; %d recipients of messages not accepted delivered all the same; %d messages and %d pending rows left",
		messages-refused, len(want), refused, fetches.Load(), delivered.Load(), lost, twice, extra, inFlight, len(cutKeys), unacked, left, pending)
	if lost > 0 {
		t.Errorf("%d accepted recipients were never delivered", lost)
	}
	if unexplained > 0 {
		t.Errorf("%d recipients delivered twice, though no session cut short by the kill had received them", unexplained)
	}
	if left != 0 || pending != 0 {
		t.Errorf("%d messages and %d pending rows left queued", left, pending)
	}
}
