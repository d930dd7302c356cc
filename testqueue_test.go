package odmr

import "io"

// memQueue is the queue the internal tests run against: memqueue.Queue,
// which they cannot import, since package memqueue imports this one. The
// external test package hands its constructor over in an init function
// (see testqueue_ext_test.go) before any test runs.
type memQueue interface {
	QueueSource
	Enqueue(env Envelope, r io.Reader) (string, error)
	Len() int
	Queued(domain string) int
	Messages() []Envelope
	Failed() []RecipientResult
	LastError(id, rcpt string) (attempts int, err error)
}

var newMemQueueFunc func() QueueSource

// newMemQueue returns an empty memqueue.Queue.
func newMemQueue() memQueue { return newMemQueueFunc().(memQueue) }

// UseMemQueue sets the constructor newMemQueue calls; only the external
// test package calls it.
func UseMemQueue(f func() QueueSource) { newMemQueueFunc = f }
