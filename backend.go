package odmr

import (
	"context"
	"io"
)

// This file holds the interfaces through which the library reaches its
// user's code: the provider's credential store, authorizer and queue, the
// customer's sink, and the optional interfaces each may also implement,
// found by type assertion.

// Authenticator is the provider's credential store. One store serves every
// SASL mechanism: CRAM-MD5 needs the shared secret itself (RFC 2195 makes
// the provider keep it), and PLAIN and LOGIN compare the password sent
// with it in constant time.
type Authenticator interface {
	// Secret returns the shared secret of username, or an error matching
	// ErrUnknownUser. Any other error is a temporary failure (454).
	Secret(ctx context.Context, username string) ([]byte, error)
}

// AuthenticatorFunc adapts a function to [Authenticator].
type AuthenticatorFunc func(ctx context.Context, username string) ([]byte, error)

// Secret calls f.
func (f AuthenticatorFunc) Secret(ctx context.Context, username string) ([]byte, error) {
	return f(ctx, username)
}

// DomainAuthorizer tells which domains an authenticated identity may pull.
type DomainAuthorizer interface {
	// Domains returns the domains identity may pull with ATRN, in any case,
	// with or without a trailing dot. A bare ATRN asks for all of them. An
	// error is a temporary failure: the provider answers 451.
	Domains(ctx context.Context, identity string) ([]string, error)
}

// DomainAuthorizerFunc adapts a function to [DomainAuthorizer].
type DomainAuthorizerFunc func(ctx context.Context, identity string) ([]string, error)

// Domains calls f.
func (f DomainAuthorizerFunc) Domains(ctx context.Context, identity string) ([]string, error) {
	return f(ctx, identity)
}

// SCRAMAuthenticator is an optional interface of an [Authenticator] whose
// store keeps SCRAM credentials. The provider asks it first for SCRAM
// logins, and checks PLAIN and LOGIN passwords against it when Secret
// returns ErrNoSecret. Without it, SCRAM credentials are derived from the
// shared secret at each login.
type SCRAMAuthenticator interface {
	// SCRAMCredentials returns the credentials of username for mechanism,
	// ErrUnknownUser, or ErrNoSecret when the user has none for that
	// mechanism.
	SCRAMCredentials(ctx context.Context, mechanism, username string) (SCRAMCredentials, error)
}

// QueueSource is the provider's view of its mail queue.
//
// The provider asks HasMail to answer ATRN, then Claims the messages for
// the requested domains and delivers them one by one. A message is leased
// while a session delivers it: no other session gets the same recipients
// until the lease ends with Complete, or with the batch's Close for those
// that were never completed.
//
// The context of each call bounds that call only: the provider cancels it
// once the call returns, or after Provider.BackendTimeout, so what a Batch
// or a Message does later must not depend on it.
type QueueSource interface {
	// HasMail reports whether anything is queued for any of domains. It must
	// answer quickly whatever the size of the queue (the customer waits on
	// it), so it should consult an index rather than read messages. An error
	// is a temporary failure: the provider answers 451.
	HasMail(ctx context.Context, domains []string) (bool, error)

	// Claim starts delivering the mail queued for domains.
	Claim(ctx context.Context, domains []string) (Batch, error)
}

// Batch hands out the messages of one session, each at most once.
type Batch interface {
	// Next leases the next message with recipients in the batch's domains,
	// or returns io.EOF when there is none left. A message it has returned
	// before is not returned again by the same batch, even if some of its
	// recipients failed temporarily.
	Next(ctx context.Context) (Message, error)

	// Close ends the batch. Messages returned by Next and not completed are
	// released and stay queued as they were.
	Close() error
}

// Message is one leased message.
type Message interface {
	// Envelope returns the envelope for this delivery. To holds only the
	// recipients in the batch's domains; a message for several customers'
	// domains is delivered to each separately.
	Envelope() Envelope

	// Open returns the body: the message as RFC 5322 text with CRLF line
	// endings, headers first. The provider closes it.
	Open() (io.ReadCloser, error)

	// Complete reports one result per recipient of the Envelope and ends the
	// lease. A result with a nil Err was acknowledged by the receiver's
	// final 250 and is done; a permanent error (see [Permanent]) will not
	// succeed by retrying and calls for a bounce; anything else is transient
	// and the recipient stays queued. An error says the results could not
	// be recorded (a full disk): the provider then delivers nothing more in
	// the session, since whatever it delivered would be delivered again.
	Complete(ctx context.Context, results []RecipientResult) error
}

// MessageSink receives the messages a customer is sent after the role swap.
type MessageSink interface {
	// Deliver stores one message. It must read body to the end before it
	// returns; the message is acknowledged to the provider only when Deliver
	// returns nil. An *Error picks the reply the provider is sent; any other
	// error becomes a 451.
	Deliver(ctx context.Context, env Envelope, body io.Reader) error
}

// MessageSinkFunc adapts a function to [MessageSink].
type MessageSinkFunc func(ctx context.Context, env Envelope, body io.Reader) error

// Deliver calls f.
func (f MessageSinkFunc) Deliver(ctx context.Context, env Envelope, body io.Reader) error {
	return f(ctx, env, body)
}

// RecipientChecker is an optional interface of a [MessageSink]. A sink
// that implements it is asked about each recipient at RCPT time, so the
// provider learns which recipients failed and why, one by one: a message
// has a single reply to its data, but each RCPT has its own.
type RecipientChecker interface {
	// CheckRecipient accepts (nil) or refuses rcpt for the transaction
	// described by env: From, Size, Body and UTF8 as MAIL FROM gave them,
	// and To holding the recipients accepted so far. An *Error is the reply
	// the provider is sent (550 for an unknown user, 452 for a full
	// mailbox); any other error is answered 451 and logged.
	CheckRecipient(ctx context.Context, env Envelope, rcpt string) error
}

// DSNSink is an optional interface of a [MessageSink] that takes on the
// delivery status notification requests of [Envelope.DSN] (RFC 3461): it
// passes them to a server that honours them, as package smtpsink does, or
// sends the notifications itself. A [Customer] offers DSN to the provider
// only when its Sink implements DSNSink and PassesDSN returns true. With
// other sinks (a Maildir is the end of the line, and sends nothing) the
// customer does not offer DSN, and the provider answers for the requests:
// its queue sends the "relayed" notification NOTIFY=SUCCESS asks for.
type DSNSink interface {
	PassesDSN() bool
}

// DSNProber is an optional interface of a [DSNSink] whose target may or
// may not honour DSN requests, as a local server that does not offer DSN
// would drop them. Once per fetch, when PassesDSN is true, the customer
// asks ProbeDSN, before it greets the provider, and offers DSN only when
// it returns true; when it returns an error, DSN is not offered and the
// error is logged. ctx bounds the probe.
type DSNProber interface {
	ProbeDSN(ctx context.Context) (bool, error)
}

var (
	_ Authenticator    = AuthenticatorFunc(nil)
	_ DomainAuthorizer = DomainAuthorizerFunc(nil)
	_ MessageSink      = MessageSinkFunc(nil)
)
