package smtpsink_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync/atomic"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/smtpsink"
)

// Deliver to Dovecot's LMTP socket with the envelope kept; recipients the
// local server does not know are refused to the provider one by one.
func ExampleNewLMTP() {
	customer := &odmr.Customer{
		Addr:     "odmr.provider.example",
		Username: "example.org",
		Secret:   "tanstaaftanstaaf",
		// A bare ATRN: every domain of the account, and the customer
		// takes recipients only in these.
		AcceptDomains: []string{"example.org", "example.com"},
		Sink:          smtpsink.NewLMTP("/run/dovecot/lmtp"),
	}
	if _, err := customer.Fetch(context.Background()); err != nil {
		log.Print(err)
	}
}

// Deliver to a mail server on another host: STARTTLS, which the server
// must offer, then AUTH PLAIN over TLS. With ImplicitTLS the sink would
// speak TLS from the first byte (port 465) instead.
func ExampleSink_tLS() {
	sink := &smtpsink.Sink{
		Addr:      "mail.example.org:587",
		LocalName: "odmr.example.org",
		TLS:       &tls.Config{}, // the system's roots; ServerName from Addr
		Auth:      sasl.NewPlainClient("", "odmr", "secret"),
	}
	customer := &odmr.Customer{
		Addr:     "odmr.provider.example",
		Username: "example.org",
		Secret:   "tanstaaftanstaaf",
		Sink:     sink,
	}
	if _, err := customer.Fetch(context.Background()); err != nil {
		log.Print(err)
	}
}

// A sink hands a message to the local mail server with its envelope; here
// the local server is a go-smtp server on a loopback port that prints what
// it is given.
func ExampleSink_Deliver() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &printer{}, nil }))
	srv.Domain = "mx.example.org"
	go srv.Serve(l)
	defer srv.Close()

	sink := smtpsink.New(l.Addr().String())
	env := odmr.Envelope{From: "bob@example.net", To: []string{"alice@example.org"}}
	err = sink.Deliver(context.Background(), env, strings.NewReader("Subject: hi\r\n\r\nHello.\r\n"))
	fmt.Println("delivered:", err == nil)
	// Output:
	// MAIL FROM:<bob@example.net>
	// RCPT TO:<alice@example.org>
	// 23 bytes
	// delivered: true
}

// A Customer drives a fetch's session itself; here it is driven by hand:
// one connection carries both messages, and the RCPT that the local
// server refuses is refused alone.
func ExampleSink_Begin() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	var sessions atomic.Int32
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		sessions.Add(1)
		return &printer{}, nil
	}))
	srv.Domain = "mx.example.org"
	go srv.Serve(l)
	defer srv.Close()

	ctx := context.Background()
	sess, err := smtpsink.New(l.Addr().String()).Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, to := range []string{"alice@example.org", "nobody@example.org"} {
		env := odmr.Envelope{From: "bob@example.net"}
		if err := sess.Mail(ctx, env); err != nil {
			log.Fatal(err)
		}
		if err := sess.Rcpt(ctx, env, to); err != nil {
			fmt.Println("refused:", err)
			sess.Reset(ctx)
			continue
		}
		env.To = []string{to}
		err := sess.Data(ctx, env, strings.NewReader("Subject: hi\r\n\r\nHello.\r\n"))
		fmt.Println("delivered:", err == nil)
	}
	sess.Close()
	fmt.Println("sessions:", sessions.Load())
	// Output:
	// MAIL FROM:<bob@example.net>
	// RCPT TO:<alice@example.org>
	// 23 bytes
	// delivered: true
	// MAIL FROM:<bob@example.net>
	// RCPT TO:<nobody@example.org>
	// refused: odmr: 550 5.1.1 User unknown
	// sessions: 1
}

// printer is a go-smtp session that prints the transaction.
type printer struct{}

func (*printer) Mail(from string, _ *smtp.MailOptions) error {
	fmt.Printf("MAIL FROM:<%s>\n", from)
	return nil
}

func (*printer) Rcpt(to string, _ *smtp.RcptOptions) error {
	fmt.Printf("RCPT TO:<%s>\n", to)
	if strings.HasPrefix(to, "nobody@") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
	}
	return nil
}

func (*printer) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	fmt.Println(n, "bytes")
	return err
}

func (*printer) Reset()        {}
func (*printer) Logout() error { return nil }
