package odmr

import (
	"io"
	"net"
	"net/textproto"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProviderRefusesToServeWithBadHostname: the provider's name goes
// into its greeting and EHLO replies; one with a space or a line break
// would forge protocol lines, so such a provider serves no one: 421 and
// an error that says why, and the greeting is never written.
func TestProviderRefusesToServeWithBadHostname(t *testing.T) {
	for _, name := range []string{"evil.test\r\n250 forged", "two words", "nul\x00"} {
		p := pipeProvider(io.Discard, func(p *Provider) { p.Hostname = name })
		server, conn := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- p.Serve(server) }()
		tp := textproto.NewConn(conn)
		code, msg, err := tp.ReadResponse(0)
		require.NoError(t, err, "%q", name)
		assert.Equal(t, 421, code, "%q", name)
		assert.NotContains(t, msg, "forged")
		assert.ErrorContains(t, <-done, "invalid Provider.Hostname", "%q", name)
		conn.Close()
		p.Close()
	}
}
