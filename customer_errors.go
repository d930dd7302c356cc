package odmr

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/go-odmr/odmr/internal/wire"
)

// Errors of a [Customer] that are not replies from the provider.
var (
	// ErrNoATRN: the provider's EHLO reply does not list ATRN, so it is
	// not an ODMR provider (RFC 2645 section 5.1.1). The customer quits
	// before it authenticates.
	ErrNoATRN = errors.New("odmr: provider does not offer ATRN")
	// ErrNoAuthMechanism: the provider offers no SASL mechanism the
	// customer may use: none it implements, or only PLAIN and LOGIN on a
	// connection without TLS while AllowInsecureAuth is off.
	ErrNoAuthMechanism = errors.New("odmr: provider offers no usable authentication mechanism")
	// ErrNoStartTLS: the customer has a TLSConfig, without
	// OpportunisticTLS, but the provider does not offer STARTTLS. The customer quits without sending anything else.
	ErrNoStartTLS = errors.New("odmr: provider does not offer STARTTLS")
	// ErrProtocol: the provider broke the protocol: a malformed or
	// unexpected reply. It is also the error of a malformed reply inside
	// the provider's delivery engine (package internal/wire's reply
	// codec, which both roles use).
	ErrProtocol = wire.ErrProtocol
	// ErrNoAcceptDomains: the customer was asked for a bare ATRN (no
	// Domains) without AcceptDomains, so it could not tell its own
	// recipients from those of others after the swap. Fetch returns it
	// before it connects.
	ErrNoAcceptDomains = errors.New("odmr: a bare ATRN needs AcceptDomains: the domains the customer takes mail for")
	// ErrLocalDelivery: the local mail server a [Handler] passes the
	// session to could not be reached, or failed in the middle of it. The
	// mail it had not taken stays queued at the provider. The errors of
	// [Relay] about its local server match it.
	ErrLocalDelivery = errors.New("odmr: the local mail server could not take the mail")
)

// localError is an error of the local side of a delivery; it matches
// ErrLocalDelivery.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }

func (e *localError) Unwrap() error { return e.err }

func (e *localError) Is(target error) bool { return target == ErrLocalDelivery }

// localErrorf formats an error of the local side of a delivery.
func localErrorf(format string, args ...any) error {
	return &localError{fmt.Errorf(format, args...)}
}

// commandError is a failure reply to one of the customer's commands. It
// unwraps to the reply's *Error.
type commandError struct {
	what string
	err  *Error
}

func (e *commandError) Error() string {
	return "odmr: " + e.what + ": " + errText(e.err)
}

func (e *commandError) Unwrap() error { return e.err }

// tlsError is a failed TLS handshake with the provider. It names the host
// the certificate was checked for and unwraps to crypto/tls's error.
type tlsError struct {
	host string
	err  error
}

func (e *tlsError) Error() string {
	msg := e.err.Error()
	var ve *tls.CertificateVerificationError
	if errors.As(e.err, &ve) {
		msg = ve.Err.Error()
	}
	return "odmr: TLS with " + e.host + ": " + msg
}

func (e *tlsError) Unwrap() error { return e.err }
