// Command demo runs an ODMR provider and customer (RFC 2645) in one
// process and prints the session between them in the RFC's notation.
//
//	go run ./examples/demo
//
// The provider listens on a loopback port with a few messages queued in
// memory for example.org and example.com, the customer's two domains,
// and one for example.net, another customer's. The customer connects,
// authenticates, pulls its domains with ATRN and, once the roles have
// reversed, receives the mail as an SMTP server and stores it in a
// Maildir. Flags: -maildir DIR keeps the Maildir (a temporary one is
// removed otherwise), -v shows the library's logs.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/maildir"
	"github.com/go-odmr/odmr/memqueue"
)

func main() {
	maildirFlag := flag.String("maildir", "", "store the mail in the Maildir `DIR` and keep it (default: a temporary one)")
	verbose := flag.Bool("v", false, "show the provider's and the customer's logs on stderr")
	flag.Parse()
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if err := run(os.Stdout, *maildirFlag, logger); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// The queued mail: three messages for the customer, one (the last) for
// somebody else.
var queued = []struct {
	from string
	to   []string
	body string
}{
	{"Lester.Tester@dot.foo.bar", []string{"l.eva.msg@example.com"},
		"From: Lester Tester <Lester.Tester@dot.foo.bar>\r\nTo: l.eva.msg@example.com\r\nSubject: test\r\n\r\n" +
			"Hello from the provider's queue.\r\n.A line that starts with a dot arrives as it was sent.\r\n"},
	{"newsletter@lists.example", []string{"info@example.org", "sales@example.com"},
		"From: newsletter@lists.example\r\nSubject: One copy for two domains\r\n\r\nOne message, two recipients, one transaction.\r\n"},
	{"", []string{"postmaster@example.org"},
		"From: MAILER-DAEMON@provider.example.net\r\nSubject: A bounce, with the null sender\r\n\r\nDelivery report.\r\n"},
	{"someone@elsewhere.example", []string{"bob@example.net"},
		"Subject: For another customer\r\n\r\nThis one stays queued.\r\n"},
}

func run(out io.Writer, maildirPath string, logger *slog.Logger) error {
	fmt.Fprintln(out, "On-Demand Mail Relay (RFC 2645): a provider and a customer in one process.")
	fmt.Fprintln(out)

	// The provider: two accounts, a queue in memory, a loopback port.
	accts := accounts.Map{
		"alice": {Name: "alice", Secret: "tanstaaftanstaaf", Domains: []string{"example.org", "example.com"}},
		"bob":   {Name: "bob", Secret: "another-secret", Domains: []string{"example.net"}},
	}
	queue := &memqueue.Queue{}
	for _, m := range queued {
		if _, err := queue.Enqueue(odmr.Envelope{From: m.from, To: m.to}, strings.NewReader(m.body)); err != nil {
			return err
		}
	}
	provider := &odmr.Provider{
		Hostname:      "provider.example.net",
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         queue,
		Logger:        logger,
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- provider.ServeListener(l) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		provider.Shutdown(ctx)
		<-served
	}()

	fmt.Fprintf(out, "Provider  provider.example.net, listening on %s\n", l.Addr())
	fmt.Fprintf(out, "          accounts: alice (example.org, example.com), bob (example.net)\n")
	fmt.Fprintf(out, "          queue: %d messages\n", queue.Len())
	for _, env := range queue.Messages() {
		fmt.Fprintf(out, "            %-28s -> %s\n", "<"+env.From+">", strings.Join(env.To, ", "))
	}

	// The customer's mailbox.
	dir := maildirPath
	if dir == "" {
		tmp, err := os.MkdirTemp("", "odmr-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = filepath.Join(tmp, "Maildir")
	}
	sink, err := maildir.New(dir)
	if err != nil {
		return err
	}

	// The customer, with its connection wrapped to print the transcript.
	tr := &transcript{w: out}
	customer := &odmr.Customer{
		Addr:     l.Addr().String(),
		Username: "alice",
		Secret:   "tanstaaftanstaaf",
		Domains:  []string{"example.org", "example.com"},
		Hostname: "customer.example.org",
		Sink:     sink,
		Logger:   logger,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &transcriptConn{Conn: c, t: tr}, nil
		},
	}
	fmt.Fprintf(out, "Customer  alice, for example.org and example.com, into the Maildir %s\n", dir)
	fmt.Fprintln(out)
	fmt.Fprintln(out, "The session, as the customer saw it (P: provider, C: customer):")
	fmt.Fprintln(out)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := customer.Fetch(ctx)
	tr.flush()
	fmt.Fprintln(out)
	if err != nil {
		return err
	}

	fmt.Fprintf(out, "Result: %d messages for %d recipients, %d bytes, authenticated with %s, in %v.\n",
		res.Messages, res.Recipients, res.Bytes, res.Mechanism, res.Duration.Round(time.Millisecond))
	entries, err := os.ReadDir(filepath.Join(dir, "new"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "The Maildir's new/ holds %d files:\n", len(entries))
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, "new", e.Name()))
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "  %s  (%d bytes)\n", shorten(e.Name(), 40), len(b))
		for _, line := range strings.SplitAfter(string(b), "\n") {
			// The trace the delivery added, and the subject; of the
			// customer's Received: field, its first line.
			if strings.HasPrefix(line, "Return-Path:") || strings.HasPrefix(line, "Delivered-To:") ||
				strings.HasPrefix(line, "Received:") || strings.HasPrefix(line, "Subject:") {
				fmt.Fprintf(out, "      %s", line)
			}
		}
	}
	left := queue.Messages()
	fmt.Fprintf(out, "Still queued at the provider: %d message", len(left))
	if len(left) != 1 {
		fmt.Fprint(out, "s")
	}
	for _, env := range left {
		fmt.Fprintf(out, " (for %s, bob's domain: alice may not pull it)", strings.Join(env.To, ", "))
	}
	fmt.Fprintln(out, ".")
	if maildirPath != "" {
		fmt.Fprintf(out, "The Maildir is kept at %s.\n", dir)
	}
	return nil
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// transcript prints the lines that cross the customer's connection in the
// RFC's notation, and hides the AUTH exchange.
type transcript struct {
	w io.Writer

	mu      sync.Mutex
	in, out []byte // partial lines read and written
	inAUTH  bool   // between AUTH and its final reply
	inData  bool   // between 354 and the final dot
	inBDAT  int    // bytes of a BDAT chunk still to come
}

// transcriptConn feeds a transcript: what the customer reads is the
// provider's ("P:"), what it writes is its own ("C:").
type transcriptConn struct {
	net.Conn
	t *transcript
}

func (c *transcriptConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.t.add("P: ", &c.t.in, p[:n])
	return n, err
}

func (c *transcriptConn) Write(p []byte) (int, error) {
	c.t.add("C: ", &c.t.out, p)
	return c.Conn.Write(p)
}

func (t *transcript) add(who string, partial *[]byte, p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	*partial = append(*partial, p...)
	for {
		i := bytes.IndexByte(*partial, '\n')
		if i < 0 {
			return
		}
		line := strings.TrimSuffix(string((*partial)[:i]), "\r")
		*partial = (*partial)[i+1:]
		if who == "P: " && t.inBDAT > 0 {
			t.inBDAT -= i + 1
			line = "  " + shorten(line, 72) // the message itself, indented
		} else if f := strings.Fields(line); who == "P: " && len(f) >= 2 && strings.EqualFold(f[0], "BDAT") {
			t.inBDAT, _ = strconv.Atoi(f[1])
		}
		t.print(who, line)
	}
}

// print writes one line; t.mu is held.
func (t *transcript) print(who, line string) {
	switch {
	case who == "C: " && strings.HasPrefix(strings.ToUpper(line), "AUTH "):
		t.inAUTH = true
		if f := strings.Fields(line); len(f) > 2 {
			line = f[0] + " " + f[1] + " [initial response hidden]"
		}
	case who == "C: " && t.inAUTH:
		line = "[authentication response hidden]"
	case who == "P: " && t.inAUTH && strings.HasPrefix(line, "334 "):
		line = "334 [challenge hidden]" // SCRAM's carry salt and signatures
	case who == "P: " && t.inAUTH:
		t.inAUTH = false
	case who == "P: " && t.inData && line == ".":
		t.inData = false
	case who == "P: " && t.inData:
		line = "  " + shorten(line, 72) // the message itself, indented
	case who == "C: " && strings.HasPrefix(line, "354"):
		t.inData = true
	}
	fmt.Fprintf(t.w, "%s%s\n", who, line)
}

// flush prints what is left of a line without its end.
func (t *transcript) flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.in) > 0 {
		t.print("P: ", string(t.in))
		t.in = nil
	}
	if len(t.out) > 0 {
		t.print("C: ", string(t.out))
		t.out = nil
	}
}
