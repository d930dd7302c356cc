package spool

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/internal/testcert"
)

// TestSMTPBouncerTLS sends a DSN with STARTTLS and with implicit TLS,
// authenticated, to smarthosts with a certificate for 127.0.0.1 that the
// bouncer's TLSConfig trusts: the server name comes from Addr.
func TestSMTPBouncerTLS(t *testing.T) {
	cert, pool := testcert.SelfSigned(t, "127.0.0.1")
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}}

	for _, sec := range []Security{StartTLS, ImplicitTLS} {
		// The smarthost takes any user with the password "secret".
		h := &smtptest.Smarthost{TLS: serverTLS, ImplicitTLS: sec == ImplicitTLS}
		h.Start(t)

		b := &SMTPBouncer{Addr: h.Addr, Security: sec, TLSConfig: &tls.Config{RootCAs: pool},
			Auth: sasl.NewPlainClient("", "provider", "secret"), Hostname: "mx.provider.test", Timeout: 10 * time.Second}
		env := odmr.Envelope{ID: "x", To: []string{"sender@origin.test"}}
		require.NoError(t, b.Bounce(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nx\r\n")), "Security %d", sec)
		got := h.Messages()
		require.Len(t, got, 1, "Security %d", sec)
		assert.True(t, got[0].TLS, "Security %d", sec)
		assert.Equal(t, "provider", got[0].User, "Security %d", sec)
		assert.Equal(t, "mx.provider.test", got[0].Hostname, "Security %d", sec)

		// A wrong password is the smarthost's permanent refusal.
		b.Auth = sasl.NewPlainClient("", "provider", "wrong")
		err := b.Bounce(context.Background(), env, strings.NewReader("x\r\n"))
		assert.True(t, odmr.Permanent(err), "Security %d: %v", sec, err)
	}
}
