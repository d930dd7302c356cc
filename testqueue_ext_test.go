package odmr_test

import (
	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/memqueue"
)

// The internal tests cannot import package memqueue (it imports odmr):
// hand them its constructor.
func init() {
	odmr.UseMemQueue(func() odmr.QueueSource { return &memqueue.Queue{} })
}
