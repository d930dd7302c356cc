package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/quickack"
	"github.com/go-odmr/odmr/smtpsink"
)

// peers relays *peersN messages of *msgSize bytes from the provider
// through the customers people run into a local MTA: fetchmail, the
// library's relay (what odmr-customer -relay runs) and its SMTP sink
// (odmr-customer -smtp). The local MTAs are those of -peers-mta:
// Postfix's smtp-sink, which sets no TCP_NODELAY and offers no CHUNKING,
// run once with PIPELINING offered and once with it hidden (smtp-sink
// -p), and Exim and a private Postfix smtpd, which offer PIPELINING and
// CHUNKING (see eximConfig and postfixMain).
// The baseline is go-smtp's client sending the same messages straight to
// the same MTA, in the same run. Into an MTA that offers CHUNKING the
// provider delivers once with BDAT and once with DATA (-peers-body);
// with -peers-before, each customer runs once more without the quick
// ACKs of package internal/quickack, to show what they are worth. Every
// run checks that the MTA counted every message.
func peers() ([]row, error) {
	fetchmail, fmErr := exec.LookPath("fetchmail")
	bodies := make([][]byte, *peersN)
	for i := range bodies {
		bodies[i] = messageBody(*msgSize, i)
	}
	sides := []peerSide{
		{"go-smtp client", func(sink string) (time.Duration, int, error) { d, err := peerGoSMTP(sink, bodies); return d, 0, err }},
		{"odmr-customer -relay", func(sink string) (time.Duration, int, error) {
			if *customerBin != "" {
				return peerProgram(*customerBin, bodies, "-relay", sink)
			}
			return peerCustomer(sink, bodies, func(c *odmr.Customer) { c.Handler = odmr.Relay(sink) })
		}},
		{"odmr-customer -smtp", func(sink string) (time.Duration, int, error) {
			if *customerBin != "" {
				return peerProgram(*customerBin, bodies, "-smtp", sink)
			}
			return peerCustomer(sink, bodies, func(c *odmr.Customer) { c.Sink = smtpsink.New(sink) })
		}},
	}
	if fmErr == nil {
		sides = append(sides, peerSide{"fetchmail", func(sink string) (time.Duration, int, error) { return peerFetchmail(fetchmail, sink, bodies) }})
	} else {
		fmt.Fprintln(os.Stderr, "odmr-bench: peers: fetchmail not installed, skipped:", fmErr)
	}
	if *peersOnly != "" {
		keep := sides[:1]
		for _, s := range sides[1:] {
			for _, name := range strings.Split(*peersOnly, ",") {
				if strings.HasSuffix(s.name, strings.TrimSpace(name)) {
					keep = append(keep, s)
				}
			}
		}
		sides = keep
	}
	var bdat []bool
	for _, b := range strings.Split(*peersBody, ",") {
		switch strings.TrimSpace(b) {
		case "bdat":
			bdat = append(bdat, true)
		case "data":
			bdat = append(bdat, false)
		default:
			return nil, fmt.Errorf("-peers-body: %q is neither bdat nor data", b)
		}
	}
	var rows []row
	for _, name := range strings.Split(*peersMTA, ",") {
		err := startMTAs(strings.TrimSpace(name), func(m *localMTA) error {
			more, err := peersInto(m, sides, bodies, bdat)
			rows = append(rows, more...)
			return err
		})
		if err != nil {
			return rows, err
		}
	}
	return rows, nil
}

// peerSide is one way to the local MTA: run delivers every message to
// the MTA at sink and returns the time it took and the stalls counted.
// The first side is the baseline.
type peerSide struct {
	name string
	run  func(sink string) (time.Duration, int, error)
}

// peersInto measures each side into the local MTA m, the customers with
// the provider sending BDAT and DATA as bdat says, when m offers
// CHUNKING and PIPELINING (else DATA only, as the provider then falls
// back to it).
func peersInto(m *localMTA, sides []peerSide, bodies [][]byte, bdat []bool) ([]row, error) {
	if !m.chunking || !m.pipelining {
		bdat = []bool{false}
	}
	defer func() { chunking = false }()
	run := func(s peerSide) (time.Duration, int, error) {
		before, err := m.received()
		if err != nil {
			return 0, 0, err
		}
		d, stalls, err := s.run(m.addr)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", s.name, err)
		}
		n, err := m.waitReceived(before + len(bodies))
		if err != nil {
			return 0, 0, fmt.Errorf("%s: counting what %s received: %w", s.name, m.name, err)
		}
		if n-before != len(bodies) {
			return 0, 0, fmt.Errorf("%s: %s received %d messages of %d", s.name, m.name, n-before, len(bodies))
		}
		return d, stalls, nil
	}
	d, _, err := run(sides[0])
	if err != nil {
		return nil, err
	}
	base := float64(len(bodies)) / d.Seconds()
	var rows []row
	for _, b := range bdat {
		chunking = b
		body := "DATA"
		if b {
			body = "BDAT"
		}
		// rates[i][0] and stalls[i][0] with quick ACKs, [1] without.
		rates := make([][2]float64, len(sides))
		stalls := make([][2]int, len(sides))
		for i, s := range sides[1:] {
			for j, off := range []bool{false, true} {
				if off && !*peersBefore {
					continue
				}
				quickack.Off.Store(off || *noQuickAck)
				d, n, err := run(s)
				quickack.Off.Store(*noQuickAck)
				if err != nil {
					return rows, err
				}
				rates[i+1][j] = float64(len(bodies)) / d.Seconds()
				stalls[i+1][j] = n
			}
		}
		var fm float64
		if last := sides[len(sides)-1]; last.name == "fetchmail" {
			fm = rates[len(rates)-1][0]
		}
		figure := fmt.Sprintf("%d × %d B into %s (%s), %s: ", len(bodies), *msgSize, m.name, m.offers(), body)
		for i, s := range sides[1:] {
			r := rates[i+1]
			note := fmt.Sprintf("all received; %d stalls", stalls[i+1][0])
			if fm > 0 && s.name != "fetchmail" {
				note += fmt.Sprintf("; %.2fx fetchmail", r[0]/fm)
			}
			rows = append(rows, row{
				figure:   figure + s.name,
				odmr:     fmt.Sprintf("%.1f msg/s", r[0]),
				baseline: fmt.Sprintf("%.1f msg/s", base),
				ratio:    r[0] / base,
				note:     note,
			})
			if r[1] > 0 {
				rows = append(rows, row{
					figure:   figure + s.name + ", no quick ACKs",
					odmr:     fmt.Sprintf("%.1f msg/s", r[1]),
					baseline: fmt.Sprintf("%.1f msg/s", base),
					ratio:    r[1] / base,
					note:     fmt.Sprintf("all received; %d stalls; quick ACKs: %.2fx", stalls[i+1][1], r[0]/r[1]),
				})
			}
		}
	}
	return rows, nil
}

// peerQueue queues the bodies for benchDomain at a new provider and
// returns its address and the queue.
func peerQueue(bodies [][]byte) (*listQueue, string, error) {
	q := newListQueue()
	for i, b := range bodies {
		q.add(odmr.Envelope{
			ID:   fmt.Sprintf("m%d", i),
			From: "sender@x.bench",
			To:   []string{fmt.Sprintf("u%d@%s", i, benchDomain)},
			Size: int64(len(b)),
		}, func() io.Reader { return bytes.NewReader(b) })
	}
	addr, err := serveProvider(newProvider(q))
	return q, addr, err
}

// stallGap is the gap between two messages that counts as a stall: more
// than the time a message takes here by far, less than Linux's 40 ms
// delayed-ACK timer.
const stallGap = 25 * time.Millisecond

// checkDelivered fails unless the local MTA took every message, and
// counts the stalls: gaps of more than stallGap between the results of
// two messages, or before the first.
func checkDelivered(q *listQueue, start time.Time) (stalls int, err error) {
	prev := start
	for _, t := range q.completed {
		if t.Sub(prev) > stallGap {
			stalls++
		}
		prev = t
	}
	return stalls, checkResults(q)
}

func checkResults(q *listQueue) error {
	select {
	case <-q.done:
	default:
		return errors.New("not every message was completed")
	}
	for _, m := range q.msgs {
		for _, r := range m.res {
			if r.Err != nil {
				return fmt.Errorf("message %s: %v", m.env.ID, r.Err)
			}
		}
	}
	return nil
}

func peerCustomer(sink string, bodies [][]byte, set func(*odmr.Customer)) (time.Duration, int, error) {
	q, addr, err := peerQueue(bodies)
	if err != nil {
		return 0, 0, err
	}
	c := newCustomer(addr, nil)
	set(c)
	start := time.Now()
	if _, err := c.Fetch(context.Background()); err != nil {
		return 0, 0, err
	}
	d := time.Since(start)
	stalls, err := checkDelivered(q, start)
	return d, stalls, err
}

// peerProgram runs the odmr-customer program at bin once, delivering
// with how ("-relay" or "-smtp") to the local MTA at sink.
func peerProgram(bin string, bodies [][]byte, how, sink string) (time.Duration, int, error) {
	q, addr, err := peerQueue(bodies)
	if err != nil {
		return 0, 0, err
	}
	cmd := exec.Command(bin, "-provider", addr, "-user", benchUser, "-domains", benchDomain,
		"-no-tls", "-hostname", "customer.bench", "-progress", "0", how, sink)
	cmd.Env = append(os.Environ(), "ODMR_SECRET="+benchSecret)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %v: %s", bin, err, strings.TrimSpace(string(out)))
	}
	stalls, err := checkDelivered(q, start)
	return d, stalls, err
}

func peerFetchmail(bin, sink string, bodies [][]byte) (time.Duration, int, error) {
	q, addr, err := peerQueue(bodies)
	if err != nil {
		return 0, 0, err
	}
	dir, err := os.MkdirTemp("", "odmr-bench-fetchmail-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	host, port, _ := net.SplitHostPort(addr)
	sinkHost, sinkPort, _ := net.SplitHostPort(sink)
	rc := fmt.Sprintf("set no syslog\nset no bouncemail\n"+
		"poll %q with protocol ODMR service %s timeout 300\n"+
		"    user %q password %q\n    fetchdomains %s\n    smtphost \"%s/%s\"\n",
		host, port, benchUser, benchSecret, benchDomain, sinkHost, sinkPort)
	rcPath := filepath.Join(dir, "rc")
	if err := os.WriteFile(rcPath, []byte(rc), 0o600); err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--nodetach", "--nosyslog", "-f", rcPath, "--pidfile", filepath.Join(dir, "pid"))
	cmd.Env = append(os.Environ(), "FETCHMAILHOME="+dir, "HOME="+dir)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("fetchmail: %v: %s", err, strings.TrimSpace(string(out)))
	}
	stalls, err := checkDelivered(q, start)
	return d, stalls, err
}

// peerGoSMTP sends the bodies with go-smtp's client, one session.
func peerGoSMTP(sink string, bodies [][]byte) (time.Duration, error) {
	start := time.Now()
	c, err := smtp.Dial(sink)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.Hello("client.bench"); err != nil {
		return 0, err
	}
	for i, b := range bodies {
		if err := c.SendMail("sender@x.bench", []string{fmt.Sprintf("u%d@%s", i, benchDomain)}, bytes.NewReader(b)); err != nil {
			return 0, err
		}
	}
	if err := c.Quit(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
