package odmr_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/mail"
	"strings"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/maildir"
	"github.com/go-odmr/odmr/memqueue"
)

// A provider and a customer in one process: the customer collects the
// mail queued for its domain and hands each message to its sink.
func ExampleCustomer_Fetch() {
	// The provider: one account, one message queued, a loopback port.
	accts := accounts.Map{
		"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org"}},
	}
	queue := &memqueue.Queue{}
	queue.Enqueue(odmr.Envelope{From: "bob@example.net", To: []string{"alice@example.org"}},
		strings.NewReader("Subject: hi\r\n\r\nHello.\r\n"))
	provider := &odmr.Provider{
		Hostname:      "mx.example.net",
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         queue,
		Logger:        slog.New(slog.DiscardHandler),
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go provider.ServeListener(l)
	defer provider.Shutdown(context.Background())

	// The customer: its sink prints what it receives.
	customer := &odmr.Customer{
		Addr:     l.Addr().String(),
		Username: "alice",
		Secret:   "s3cret",
		Domains:  []string{"example.org"},
		Hostname: "customer.example.org",
		Sink: odmr.MessageSinkFunc(func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
			msg, err := mail.ReadMessage(body)
			if err != nil {
				return err
			}
			text, err := io.ReadAll(msg.Body) // a sink reads the body to its end
			if err != nil {
				return err
			}
			// The customer has put a Received: field in front (RFC 5321
			// section 4.4).
			fmt.Printf("from <%s> to %v: %q, %q, %d Received: field\n", env.From, env.To,
				msg.Header.Get("Subject"), text, len(msg.Header["Received"]))
			return nil
		}),
		Logger: slog.New(slog.DiscardHandler),
	}
	res, err := customer.Fetch(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("messages:", res.Messages, "no mail:", res.NoMail)

	// The queue is empty now: the provider answers 453, which is not an
	// error.
	res, err = customer.Fetch(context.Background())
	fmt.Println("messages:", res.Messages, "no mail:", res.NoMail, "error:", err)
	// Output:
	// from <bob@example.net> to [alice@example.org]: "hi", "Hello.\r\n", 1 Received: field
	// messages: 1 no mail: false
	// messages: 0 no mail: true error: <nil>
}

// Collect the mail into a Maildir, and tell the outcomes apart.
func ExampleCustomer_Fetch_maildir() {
	sink, err := maildir.New("/var/mail/example.org")
	if err != nil {
		log.Fatal(err)
	}
	customer := &odmr.Customer{
		Addr:     "odmr.provider.example", // port 366
		Username: "example.org",
		Secret:   "tanstaaftanstaaf",
		Domains:  []string{"example.org", "example.com"},
		Sink:     sink,
	}
	res, err := customer.Fetch(context.Background())
	var reply *odmr.Error
	switch {
	case err == nil && res.NoMail:
		fmt.Println("no mail waiting")
	case err == nil:
		fmt.Printf("%d messages stored\n", res.Messages)
	case errors.Is(err, odmr.ErrAuthFailed):
		fmt.Println("wrong user name or secret")
	case errors.Is(err, odmr.ErrATRNRefused):
		fmt.Println("a domain that is not ours, or we asked too often")
	case errors.As(err, &reply) && reply.Temporary():
		fmt.Println("try again later:", reply.Message)
	default:
		fmt.Println("failed:", err)
	}
}

// Pass the session to the local MTA byte for byte, as fetchmail does: the
// MTA's replies, refusals included, go straight to the provider.
func ExampleRelay() {
	customer := &odmr.Customer{
		Addr:     "odmr.provider.example:366",
		Username: "example.org",
		Secret:   "tanstaaftanstaaf",
		Domains:  []string{"example.org"},
		Handler:  odmr.Relay("127.0.0.1:25"),
	}
	if _, err := customer.Fetch(context.Background()); err != nil {
		log.Print(err)
	}
}

// dsnPrinter is a sink that takes DSN requests on (a real one would pass
// them to a mail server that honours them) and prints what it is given.
type dsnPrinter struct{}

func (dsnPrinter) PassesDSN() bool { return true }

func (dsnPrinter) Deliver(ctx context.Context, env odmr.Envelope, body io.Reader) error {
	if _, err := io.Copy(io.Discard, body); err != nil {
		return err
	}
	session, _ := odmr.ReversedSessionFromContext(ctx)
	fmt.Printf("from %s, TLS %v: RET=%s ENVID=%s NOTIFY=%v\n", session.Provider, session.TLS != nil,
		env.DSN.Return, env.DSN.EnvID, env.DSN.Recipients["alice@example.org"].Notify)
	return nil
}

// Delivery status notification requests travel with the message to a
// sink that takes them on, and the sink learns which session the message
// came in.
func ExampleReversedSessionFromContext() {
	accts := accounts.Map{
		"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org"}},
	}
	queue := &memqueue.Queue{}
	queue.Enqueue(odmr.Envelope{
		From: "bob@example.net", To: []string{"alice@example.org"},
		DSN: &odmr.DSN{Return: odmr.ReturnHeaders, EnvID: "bob-42", Recipients: map[string]odmr.RecipientDSN{
			"alice@example.org": {Notify: []odmr.DSNNotify{odmr.NotifySuccess, odmr.NotifyFailure}},
		}},
	}, strings.NewReader("Subject: hi\r\n\r\nHello.\r\n"))
	provider := &odmr.Provider{Hostname: "mx.example.net", Authenticator: accts, Authorizer: accts,
		Queue: queue, Logger: slog.New(slog.DiscardHandler)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go provider.ServeListener(l)
	defer provider.Shutdown(context.Background())

	customer := &odmr.Customer{Addr: l.Addr().String(), Username: "alice", Secret: "s3cret",
		Domains: []string{"example.org"}, Hostname: "customer.example.org", Sink: dsnPrinter{}, Logger: slog.New(slog.DiscardHandler)}
	if _, err := customer.Fetch(context.Background()); err != nil {
		log.Fatal(err)
	}
	// Output:
	// from mx.example.net, TLS false: RET=HDRS ENVID=bob-42 NOTIFY=[SUCCESS FAILURE]
}

// Progress reports a fetch as it goes: after each message the local
// target took, the counts so far. A program logs them every so often to
// show a long fetch's rate (odmr-customer's -progress does).
func ExampleCustomer_progress() {
	accts := accounts.Map{
		"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org"}},
	}
	queue := &memqueue.Queue{}
	for _, body := range []string{"Subject: one\r\n\r\nHi.\r\n", "Subject: two\r\n\r\nHello again.\r\n"} {
		queue.Enqueue(odmr.Envelope{From: "bob@example.net", To: []string{"alice@example.org"}},
			strings.NewReader(body))
	}
	provider := &odmr.Provider{Authenticator: accts, Authorizer: accts, Queue: queue,
		Logger: slog.New(slog.DiscardHandler)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go provider.ServeListener(l)
	defer provider.Shutdown(context.Background())

	customer := &odmr.Customer{
		Addr: l.Addr().String(), Username: "alice", Secret: "s3cret",
		Domains: []string{"example.org"}, Hostname: "customer.example.org",
		NoReceivedHeader: true,
		Sink: odmr.MessageSinkFunc(func(_ context.Context, _ odmr.Envelope, body io.Reader) error {
			_, err := io.Copy(io.Discard, body)
			return err
		}),
		Progress: func(so odmr.FetchResult) {
			fmt.Printf("so far: %d message(s), %d bytes\n", so.Messages, so.Bytes)
		},
		Logger: slog.New(slog.DiscardHandler),
	}
	if _, err := customer.Fetch(context.Background()); err != nil {
		log.Fatal(err)
	}
	// Output:
	// so far: 1 message(s), 21 bytes
	// so far: 2 message(s), 51 bytes
}
