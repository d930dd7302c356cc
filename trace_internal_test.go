package odmr

import (
	"net"
	"testing"
	"time"

	"github.com/go-odmr/odmr/odmrtrace"
	"github.com/stretchr/testify/assert"
)

// TestNilTraceCostsNothing: without a Trace the hooks allocate
// nothing, so that a provider that does not want metrics does not pay
// for them.
func TestNilTraceCostsNothing(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	p := &Provider{Logger: discardLogger()}
	s := newSession(p, c1)
	s.domains = []string{"example.org"}
	env := Envelope{ID: "x", To: []string{"a@example.org"}, Size: 10, Received: time.Now()}
	allocs := testing.AllocsPerRun(100, func() {
		s.observeStart()
		s.observeAuth("PLAIN", "alice", odmrtrace.AuthSuccess)
		s.noteReply(errTimeout)
		s.observeATRN()
		s.observeDelivery(env, RecipientResult{Recipient: "a@example.org"})
		s.observeEnd(StateReversed, errSessionOver)
		p.observeRefused(c1)
	})
	assert.Zero(t, allocs)
}
