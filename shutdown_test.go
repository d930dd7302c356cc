package odmr

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestShutdownEndsDeliveryAfterMessageInFlight calls Shutdown while the
// customer holds the reply to the first of ten messages: the session
// finishes what it had sent, says QUIT and leaves the rest queued, instead
// of delivering the whole batch first.
func TestShutdownEndsDeliveryAfterMessageInFlight(t *testing.T) {
	for _, tc := range []struct {
		name string
		ehlo []string
		// most is how many messages may be delivered: with pipelined
		// DATA the next message's commands are already out when the
		// first one's reply is awaited.
		most int
	}{
		{"one command at a time", nil, 1},
		{"pipelined", []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			const total = 10
			for i := range total {
				f.enqueue(t, "s@x.test", fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i), fmt.Sprintf("u%d@example.org", i))
			}
			shut := make(chan error, 1)
			first := true
			got, cmds := f.pull(t, "ATRN example.org", scriptedCustomer{ehlo: tc.ehlo, dataReply: func(received) string {
				if first {
					first = false
					go func() {
						ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang, not a measurement
						defer cancel()
						shut <- f.p.Shutdown(ctx)
					}()
					<-f.stopped // the provider is shutting down
				}
				return "250 2.0.0 queued"
			}})
			require.NoError(t, <-shut)
			assert.NotEmpty(t, got)
			assert.LessOrEqual(t, len(got), tc.most)
			assert.Equal(t, "QUIT", cmds[len(cmds)-1])
			assert.Equal(t, total-len(got), f.q.Len(), "what was not delivered stays queued")
			assert.Contains(t, f.logs.String(), "ending the delivery after the message in flight")
			assert.Contains(t, f.logs.String(), fmt.Sprintf("delivered=%d", len(got)))
		})
	}
}
