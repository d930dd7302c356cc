package odmrtest_test

import (
	"testing"

	"github.com/go-odmr/odmr"

	"github.com/go-odmr/odmr/odmrtest"
)

// TestLibraryProvider runs the conformance suite against this library's
// provider over loopback TCP, with its default configuration.
func TestLibraryProvider(t *testing.T) {
	_, cfg := odmrtest.NewProvider(t)
	odmrtest.TestProvider(t, cfg)
}

// TestLibraryProviderInsecureAuth runs the suite against a provider that
// offers PLAIN and LOGIN without TLS, so the PLAIN check runs.
func TestLibraryProviderInsecureAuth(t *testing.T) {
	_, cfg := odmrtest.NewProvider(t, func(p *odmr.Provider) { p.AllowInsecureAuth = true })
	odmrtest.TestProvider(t, cfg)
}
