package odmr

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestStateCheckedAtTopOfHandlers(t *testing.T) {
	// Each handler checks the session's state first; the refusal names
	// what the state lacks, and every refusal counts towards MaxErrors
	// through the one place that writes handler results.
	f := newFixture(t, func(p *Provider) { p.MaxErrors = 5 })
	c := f.dial(t)
	assert.Equal(t, "5.7.0 Authentication required", c.cmd(530, "ATRN example.org"), "ATRN in the initial state")
	c.cmd(503, "AUTH CRAM-MD5") // before EHLO
	c.login()
	assert.Equal(t, "5.5.1 Already authenticated", c.cmd(503, "AUTH CRAM-MD5"), "AUTH in the authenticated state")
	assert.Equal(t, "5.5.1 Already authenticated", c.cmd(503, "AUTH PLAIN"), "whatever the mechanism")
	// The fifth 5xx reply ends the session.
	c.cmd(421, "VRFY x")
	c.expectClosed()
}

func TestStateNames(t *testing.T) {
	for st, name := range map[State]string{
		StateInitial: "initial", StateAuthenticated: "authenticated",
		StateReversed: "reversed", StateClosed: "closed", State(9): "unknown",
	} {
		assert.Equal(t, name, st.String())
	}
}
