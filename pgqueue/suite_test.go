package pgqueue

import (
	"testing"

	"github.com/go-odmr/odmr/odmrtest/queuetest"
)

// TestQueueSuite runs the shared queue suite against pgqueue, with small
// body chunks so that bodies span several.
func TestQueueSuite(t *testing.T) {
	queuetest.Run(t, queuetest.Config{
		New: func(t *testing.T) queuetest.Queue {
			return openTest(t, Options{ChunkSize: 64 << 10})
		},
		ExpireLeases: func(t *testing.T, q queuetest.Queue) { lapseLeases(t, q.(*Queue)) },
	})
}
