package pgqueue

import (
	"sync"
	"testing"

	"github.com/go-odmr/odmr/internal/pgtest"
	"github.com/go-odmr/odmr/odmrtest/queuetest"
)

// TestQueueSuite runs the shared queue suite against pgqueue, with small
// body chunks so that bodies span several; its concurrent sessions run
// on three Queues on one database, as on three nodes.
func TestQueueSuite(t *testing.T) {
	opts := Options{ChunkSize: 64 << 10}
	var mu sync.Mutex
	dsns := map[*Queue]string{}
	queuetest.Run(t, queuetest.Config{
		New: func(t *testing.T) queuetest.Queue {
			dsn := pgtest.DSN(t)
			q := openDSN(t, dsn, opts)
			mu.Lock()
			dsns[q] = dsn
			mu.Unlock()
			return q
		},
		ExpireLeases: func(t *testing.T, q queuetest.Queue) { lapseLeases(t, q.(*Queue)) },
		Reopen: func(t *testing.T, q queuetest.Queue) queuetest.Queue {
			mu.Lock()
			dsn := dsns[q.(*Queue)]
			mu.Unlock()
			return openDSN(t, dsn, opts)
		},
	})
}
