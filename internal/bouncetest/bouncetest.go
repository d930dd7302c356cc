// Package bouncetest collects the DSNs a queue hands to its Bouncer, for
// the tests of the queues that send them (spool, pgqueue).
package bouncetest

import (
	"context"
	"io"
	"sync"

	"github.com/go-odmr/odmr"
)

// Collector is a Bouncer that keeps each DSN it is handed, or refuses it
// with the error given to Fail. The zero value keeps them all.
type Collector struct {
	mu   sync.Mutex
	envs []odmr.Envelope
	dsns []string
	fail error
}

// Bounce reads dsn whole, then keeps it with env, or returns the error
// given to Fail.
func (c *Collector) Bounce(ctx context.Context, env odmr.Envelope, dsn io.Reader) error {
	data, err := io.ReadAll(dsn)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return c.fail
	}
	c.envs = append(c.envs, env)
	c.dsns = append(c.dsns, string(data))
	return nil
}

// Fail makes Bounce return err instead of keeping the DSN; nil makes it
// keep them again.
func (c *Collector) Fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fail = err
}

// All returns the envelopes and the DSNs kept so far, in order.
func (c *Collector) All() ([]odmr.Envelope, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]odmr.Envelope(nil), c.envs...), append([]string(nil), c.dsns...)
}
