package memqueue

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/go-odmr/odmr"
)

// BenchmarkSessionBesideOtherDomains measures one customer's session (one
// message queued, claimed, delivered, the batch closed) while other
// domains have 0 to 100,000 messages queued: its cost must not depend on
// their mail (issue #17).
func BenchmarkSessionBesideOtherDomains(b *testing.B) {
	ctx := context.Background()
	for _, others := range []int{0, 1000, 10000, 100000} {
		b.Run(fmt.Sprintf("others=%d", others), func(b *testing.B) {
			q := &Queue{}
			for i := range others {
				to := fmt.Sprintf("u@d%d.example", i%1000)
				if _, err := q.Enqueue(odmr.Envelope{From: "s@x.test", To: []string{to}}, strings.NewReader("x\r\n")); err != nil {
					b.Fatal(err)
				}
			}
			// One message of the customer's queued before all the others,
			// one after: the session goes through both.
			env := odmr.Envelope{From: "s@x.test", To: []string{"a@example.org"}}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := q.Enqueue(env, strings.NewReader("x\r\n")); err != nil {
					b.Fatal(err)
				}
				batch, err := q.Claim(ctx, []string{"example.org"})
				if err != nil {
					b.Fatal(err)
				}
				m, err := batch.Next(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := m.Complete(ctx, []odmr.RecipientResult{{Recipient: "a@example.org"}}); err != nil {
					b.Fatal(err)
				}
				if _, err := batch.Next(ctx); err != io.EOF {
					b.Fatalf("second Next: %v", err)
				}
				batch.Close()
			}
			if n := q.Len(); n != others {
				b.Fatalf("%d messages left, want %d", n, others)
			}
		})
	}
}
