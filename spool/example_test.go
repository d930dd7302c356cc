package spool_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/queueadmin"
	"github.com/go-odmr/odmr/spool"
)

// A provider queues mail with Enqueue, from its SMTP intake, and hands the
// spool to odmr.Provider as its Queue. Here the delivery the provider would
// make is done by hand.
func Example() {
	dir, err := os.MkdirTemp("", "spool-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	s, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{
		Hostname: "mx.example.net",
		Bouncer:  spool.DirBouncer{Dir: filepath.Join(dir, "bounces")},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	ctx := context.Background()
	_, err = s.Enqueue(ctx, odmr.Envelope{From: "alice@example.com", To: []string{"bob@example.org"}},
		strings.NewReader("Subject: hello\n\nHi Bob!\n"))
	if err != nil {
		log.Fatal(err)
	}
	stats, _ := s.List()
	for _, st := range stats {
		fmt.Printf("%s: %d message(s), %d bytes\n", st.Domain, st.Messages, st.Bytes)
	}

	// What odmr.Provider does after ATRN example.org:
	has, _ := s.HasMail(ctx, []string{"example.org"})
	fmt.Println("has mail:", has)
	batch, _ := s.Claim(ctx, []string{"example.org"})
	msg, _ := batch.Next(ctx)
	body, _ := msg.Open()
	data, _ := io.ReadAll(body)
	body.Close()
	fmt.Printf("%q for %v\n", data, msg.Envelope().To)
	msg.Complete(ctx, []odmr.RecipientResult{{Recipient: "bob@example.org"}}) // the customer said 250
	batch.Close()

	has, _ = s.HasMail(ctx, []string{"example.org"})
	fmt.Println("has mail:", has)
	// Output:
	// example.org: 1 message(s), 27 bytes
	// has mail: true
	// "Subject: hello\r\n\r\nHi Bob!\r\n" for [bob@example.org]
	// has mail: false
}

// Bounces go through a smarthost; a quota caps what may wait per domain.
func ExampleOptions() {
	opts := spool.Options{
		Bouncer: &spool.SMTPBouncer{Addr: "smarthost.example.net:587"},
		Quota: func(domain string) (maxBytes int64, maxMessages int) {
			return 500 << 20, 10000 // per domain: 500 MiB, 10,000 messages
		},
	}
	fmt.Println(opts.MaxAge == 0) // 0 means DefaultMaxAge
	// Output: true
}

// An operator holds a message, so that no customer gets it, and releases
// it; the queue tools of odmr-provider do the same through
// queueadmin.Admin. The ID may be chosen before the message is queued, to
// be written into it.
func ExampleSpool_Hold() {
	dir, err := os.MkdirTemp("", "spool-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := spool.Open(dir, spool.Options{Hostname: "mx.example.net", MaintenanceInterval: -1})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	ctx := context.Background()
	id := spool.NewID()
	body := "Received: by mx.example.net with ESMTP id " + id + "\r\nSubject: hello\r\n\r\nHi Bob!\r\n"
	if _, err := s.Enqueue(ctx, odmr.Envelope{ID: id, From: "alice@example.com", To: []string{"bob@example.org"}}, strings.NewReader(body)); err != nil {
		log.Fatal(err)
	}
	var admin queueadmin.Admin = s
	if err := admin.Hold(ctx, id); err != nil {
		log.Fatal(err)
	}
	has, _ := s.HasMail(ctx, []string{"example.org"})
	m, _ := admin.Message(ctx, id)
	fmt.Println("held:", m.Held, "offered:", has, "to:", m.Envelope.To)

	if err := admin.Release(ctx, id); err != nil {
		log.Fatal(err)
	}
	has, _ = s.HasMail(ctx, []string{"example.org"})
	msgs, _ := admin.Messages(ctx)
	fmt.Println("held:", msgs[0].Held, "offered:", has, "same ID:", msgs[0].Envelope.ID == id)
	// Output:
	// held: true offered: false to: [bob@example.org]
	// held: false offered: true same ID: true
}

// Open returns before it has read the queue, so that a provider answers
// ATRN at once however much mail is queued; a program that needs the
// spool repaired and counted first (a quota check at start, a report)
// waits for the index.
func ExampleSpool_WaitIndexed() {
	dir, err := os.MkdirTemp("", "spool-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	s, err := spool.Open(dir, spool.Options{Hostname: "mx.example.net"})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.WaitIndexed(ctx); err != nil {
		log.Fatal(err)
	}
	stats, err := s.QueueStats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(stats), "domains with mail queued")
	// Output: 0 domains with mail queued
}
