package memqueue_test

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/memqueue"
)

// A provider serves a queue through its Queue field; here the queue is
// driven by hand, as a provider's session does once a customer has pulled
// example.org.
func Example() {
	ctx := context.Background()
	q := &memqueue.Queue{}
	q.Enqueue(odmr.Envelope{From: "a@sender.test", To: []string{"u1@example.org", "u2@example.net"}},
		strings.NewReader("Subject: hi\n\nHello.\n"))

	b, _ := q.Claim(ctx, []string{"example.org"})
	defer b.Close()
	for {
		m, err := b.Next(ctx)
		if err == io.EOF {
			break
		}
		env := m.Envelope()
		fmt.Println("deliver", env.ID, "to", env.To)
		m.Complete(ctx, []odmr.RecipientResult{{Recipient: env.To[0]}})
	}
	fmt.Println("still queued for example.org:", q.Queued("example.org"))
	fmt.Println("still queued for example.net:", q.Queued("example.net"))
	// Output:
	// deliver 1 to [u1@example.org]
	// still queued for example.org: 0
	// still queued for example.net: 1
}
