package pgqueue_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"strings"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/pgqueue"
)

// A provider node with its queue and its customers in PostgreSQL. Run as
// many nodes as needed on one database, behind one name or a load
// balancer: each serves any customer and delivers any mail. The
// connection string comes from the environment, for example
// postgres://odmr@db1,db2/odmr?target_session_attrs=read-write, which
// follows a failover to the standby.
func Example() {
	ctx := context.Background()
	dsn := os.Getenv("ODMR_PG_DSN")
	q, err := pgqueue.Open(ctx, dsn, pgqueue.Options{Hostname: "mx.example.net"})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	accts, err := pgqueue.OpenAccounts(ctx, dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer accts.Close()

	// Once, from any node: a customer and its domain.
	if err := accts.Put(ctx, accounts.Account{Name: "alice", Secret: "s3cret", Domains: []string{"example.org"}}); err != nil {
		log.Fatal(err)
	}
	// What the SMTP intake does with mail for example.org.
	id, err := q.Enqueue(ctx, odmr.Envelope{From: "bob@example.com", To: []string{"carol@example.org"}},
		strings.NewReader("Subject: hello\r\n\r\nHi Carol.\r\n"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("queued", id)

	p := &odmr.Provider{
		Hostname:      "mx.example.net",
		Authenticator: accts,
		Authorizer:    accts,
		Queue:         q,
	}
	l, err := net.Listen("tcp", ":366")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(p.ServeListener(l))
}
