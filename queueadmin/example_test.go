package queueadmin_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/queueadmin"
	"github.com/go-odmr/odmr/spool"
)

// listQueue prints a queue the way postqueue -p does, through any
// queue that implements Admin.
func listQueue(ctx context.Context, a queueadmin.Admin) error {
	msgs, err := a.Messages(ctx)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		held := ""
		if m.Held {
			held = " (held)"
		}
		fmt.Printf("from <%s>%s\n", m.Envelope.From, held)
		for _, r := range m.Recipients {
			fmt.Printf("  to <%s>, %d failed attempts\n", r.Addr, r.Attempts)
		}
	}
	return nil
}

// A queue tool lists the queue, holds a message and deletes another,
// here on a spool.
func Example() {
	dir, err := os.MkdirTemp("", "queueadmin-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := spool.Open(dir, spool.Options{Logger: slog.New(slog.DiscardHandler), MaintenanceInterval: -1})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var ids []string
	for _, from := range []string{"alice@example.com", "carol@example.net"} {
		id, err := s.Enqueue(ctx, odmr.Envelope{From: from, To: []string{"bob@example.org"}},
			strings.NewReader("Subject: hello\r\n\r\nHi Bob!\r\n"))
		if err != nil {
			log.Fatal(err)
		}
		ids = append(ids, id)
	}

	var admin queueadmin.Admin = s
	if err := admin.Hold(ctx, ids[0]); err != nil {
		log.Fatal(err)
	}
	if err := admin.Delete(ctx, ids[1]); errors.Is(err, queueadmin.ErrBusy) {
		fmt.Println("a session is delivering it; try again later")
	} else if err != nil {
		log.Fatal(err)
	}
	if err := listQueue(ctx, admin); err != nil {
		log.Fatal(err)
	}
	// Output:
	// from <alice@example.com> (held)
	//   to <bob@example.org>, 0 failed attempts
}
