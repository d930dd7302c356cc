package memqueue

import (
	"context"
	"io"
	"testing"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtest/queuetest"
)

// TestQueueSuite runs the shared queue suite against the memory queue.
// Its leases never lapse, so the suite's lease expiry and fencing tests
// skip.
func TestQueueSuite(t *testing.T) {
	queuetest.Run(t, queuetest.Config{
		New: func(t *testing.T) queuetest.Queue { return suiteQueue{&Queue{}} },
	})
}

// suiteQueue gives Enqueue the context the suite passes.
type suiteQueue struct{ *Queue }

func (q suiteQueue) Enqueue(_ context.Context, env odmr.Envelope, body io.Reader) (string, error) {
	return q.Queue.Enqueue(env, body)
}
