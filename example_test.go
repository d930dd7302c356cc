package odmr_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/memqueue"
)

// A provider serving one account from memory: mail arrives with Enqueue
// (in a real program, from an SMTP intake), customers collect it with ATRN.
func ExampleProvider() {
	accts := accounts.Map{
		"alice": {Name: "alice", Secret: "s3cret", Domains: []string{"example.org"}},
	}
	queue := &memqueue.Queue{}
	queue.Enqueue(odmr.Envelope{From: "bob@example.net", To: []string{"alice@example.org"}},
		strings.NewReader("Subject: hello\r\n\r\nHi Alice.\r\n"))

	p := &odmr.Provider{
		Hostname:      "mx.example.net",
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         queue,
		Logger:        slog.New(slog.DiscardHandler),
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go p.ServeListener(l)
	defer p.Shutdown(context.Background())

	fmt.Println("queued for example.org:", queue.Queued("example.org"))
	// Output: queued for example.org: 1
}

func ExampleParseATRN() {
	domains, err := odmr.ParseATRN("Example.ORG., example.com")
	fmt.Println(domains, err)
	_, err = odmr.ParseATRN("exa_mple.org")
	fmt.Println(err)
	fmt.Println(odmr.FormatATRN(domains))
	// Output:
	// [example.org example.com] <nil>
	// odmr: invalid domain "exa_mple.org": character '_' not allowed
	// ATRN example.org,example.com
}

// Replies read off the wire match the RFC 2645 section 7 sentinels by
// their code.
func ExampleError() {
	err := fmt.Errorf("fetch: %w", &odmr.Error{Code: 453, EnhancedCode: odmr.EnhancedCode{4, 2, 0}, Message: "You have no mail"})
	fmt.Println(errors.Is(err, odmr.ErrNoMail), errors.Is(err, odmr.ErrATRNRefused))
	var e *odmr.Error
	if errors.As(err, &e) {
		fmt.Println(e.Code, e.Temporary(), e)
	}
	// Output:
	// true false
	// 453 true odmr: 453 4.2.0 You have no mail
}
