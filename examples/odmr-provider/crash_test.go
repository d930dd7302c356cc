package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/textproto"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

// crashProvider is one run of the built program on a spool.
type crashProvider struct {
	cmd                *exec.Cmd
	odmrAddr, smtpAddr string
}

func startCrashProvider(t *testing.T, bin, accts, spoolDir string) *crashProvider {
	t.Helper()
	p := &crashProvider{}
	p.cmd = exec.Command(bin, "-accounts", accts, "-spool", spoolDir, "-listen", "127.0.0.1:0", "-smtp", "127.0.0.1:0", "-hostname", "prov.test")
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	log := watchLog(stderr)
	p.odmrAddr = listenAddr(t, log.wait(t, "ODMR listening"))
	p.smtpAddr = listenAddr(t, log.wait(t, "SMTP intake listening"))
	return p
}

// crashMessage makes message n: its body carries its number and a checksum
// of its content, so a partial delivery cannot pass for a whole one.
func crashMessage(n int) string {
	payload := strings.Repeat(fmt.Sprintf("line %d of message %d, padding to make it longer\r\n", n, n), 50+n%200)
	sum := sha256.Sum256([]byte(payload))
	return fmt.Sprintf("X-Seq: %d\r\nX-Sum: %s\r\nSubject: crash test %d\r\n\r\n%s", n, hex.EncodeToString(sum[:]), n, payload)
}

// checkMessage returns the message's number, or an error if it is not whole.
func checkMessage(body []byte) (int, error) {
	head, payload, ok := strings.Cut(string(body), "\r\n\r\n")
	if !ok {
		return 0, fmt.Errorf("no header/body separator")
	}
	tp := textproto.NewReader(bufio.NewReader(strings.NewReader(head + "\r\n\r\n")))
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return 0, err
	}
	var n int
	if _, err := fmt.Sscan(h.Get("X-Seq"), &n); err != nil {
		return 0, err
	}
	sum := sha256.Sum256([]byte(payload))
	if hex.EncodeToString(sum[:]) != h.Get("X-Sum") {
		return n, fmt.Errorf("message %d is not whole (%d bytes)", n, len(payload))
	}
	return n, nil
}

// TestCrashSafety kills the provider with SIGKILL at random points while
// mail comes in over SMTP and goes out over ODMR, many times over. After a
// last restart, every message the intake acknowledged with 250 has been
// delivered (duplicates only where a kill fell between the customer's 250
// and the spool's record of it) or is delivered now; no partial message is
// ever delivered.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the program many times")
	}
	bin, accts := buildProvider(t)
	spoolDir := filepath.Join(t.TempDir(), "spool")

	var (
		mu         sync.Mutex
		acked      = map[int]bool{}
		deliveries = map[int]int{}
		partial    []error
		next       int
	)
	sink := odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
		b, err := io.ReadAll(body)
		if err != nil {
			return err
		}
		n, cerr := checkMessage(b)
		mu.Lock()
		defer mu.Unlock()
		if cerr != nil {
			partial = append(partial, cerr)
			return cerr
		}
		deliveries[n]++
		return nil
	})
	fetch := func(addr string) {
		c := &odmr.Customer{Addr: addr, Username: "alice", Secret: "s3cret", Domains: []string{"example.org"}, Sink: sink,
			Hostname: "customer.test", CommandTimeout: 5 * time.Second, ATRNTimeout: 5 * time.Second, IdleTimeout: 5 * time.Second,
			Logger: discardLog()}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.Fetch(ctx) // errors are expected when the provider dies
	}
	send := func(addr string) {
		for {
			mu.Lock()
			n := next
			next++
			mu.Unlock()
			if sendPlain(addr, n) != nil {
				return
			}
			mu.Lock()
			acked[n] = true
			mu.Unlock()
		}
	}

	rounds := 12
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	for r := 0; r < rounds; r++ {
		p := startCrashProvider(t, bin, accts, spoolDir)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); send(p.smtpAddr) }()
		go func() {
			defer wg.Done()
			for i := 0; i < 3; i++ {
				fetch(p.odmrAddr)
			}
		}()
		// The kill lands at a random moment of the work on purpose: it
		// is the crash under test, not a wait for anything. The time runs
		// from the provider listening (startCrashProvider waits for it).
		time.Sleep(time.Duration(50+rng.IntN(400)) * time.Millisecond)
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
		p.cmd.Wait()
		wg.Wait()
	}

	// A last, clean run delivers whatever is left.
	p := startCrashProvider(t, bin, accts, spoolDir)
	fetch(p.odmrAddr)
	fetch(p.odmrAddr)
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()

	mu.Lock()
	defer mu.Unlock()
	lost, dups, unacked := 0, 0, 0
	for n := range acked {
		switch deliveries[n] {
		case 0:
			lost++
			t.Errorf("message %d was acknowledged at intake but never delivered", n)
		case 1:
		default:
			dups += deliveries[n] - 1
		}
	}
	for n := range deliveries {
		if !acked[n] {
			unacked++ // the kill came between the data and the 250: allowed
		}
	}
	assert.Empty(t, partial, "partial messages delivered")
	assert.Zero(t, lost)
	// A kill repeats the messages the customer had acknowledged but whose
	// 250 the provider had not yet read. With PIPELINING and BDAT several
	// are in flight: at most pipeline.DefaultLastWindow (128 KiB) past an
	// unanswered last chunk, about 50 of this test's smallest messages.
	assert.LessOrEqual(t, dups, rounds*50, "more duplicates than messages in flight at the kills")
	t.Logf("%d kills: %d messages acknowledged at intake, %d delivered, %d lost, %d duplicate deliveries, %d delivered without an intake 250, %d partial",
		rounds, len(acked), len(deliveries), lost, dups, unacked, len(partial))
}

// sendPlain sends message n over a plain-text SMTP connection.
func sendPlain(addr string, n int) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	// SendMail returns nil once the data got its 250: that is the
	// acknowledgement; the QUIT after it may die with the provider.
	if err := c.SendMail("sender@x.test", []string{fmt.Sprintf("u%d@example.org", n%7)}, strings.NewReader(crashMessage(n))); err != nil {
		return err
	}
	c.Quit()
	return nil
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
