// Package odmrtrace lets an embedder follow the sessions of an
// [odmr.Provider] as they happen, to feed a metrics system, in the manner
// of [net/http/httptrace]: a [ProviderTrace] is a struct of optional
// funcs, set as the provider's Trace field, each called with a plain
// value describing one event.
//
// The package depends on nothing of odmr's, so that a metrics adapter
// (the odmr-provider program's Prometheus exporter is one) imports only
// it and the standard library. A nil *ProviderTrace, and a nil func in
// one, cost the provider nothing.
//
// [odmr.Provider]: https://pkg.go.dev/github.com/go-odmr/odmr#Provider
package odmrtrace

import (
	"context"
	"net"
	"time"
)

// ProviderTrace receives the events of a provider's sessions. Each field
// is optional: a nil func is not called.
//
// The funcs are called synchronously from the session's goroutine, from
// many sessions at once: they must be safe for concurrent use and return
// quickly (increment a counter; never block on the network). The events
// carry no secret; user names are as the customer sent them, so do not
// use them as metric labels without bounding them.
type ProviderTrace struct {
	// SessionStarted is called when a connection was admitted and its
	// session starts.
	SessionStarted func(SessionStart)
	// SessionEnded is called when a session ends, and for each connection
	// refused by MaxSessions or MaxSessionsPerAddr (with outcome
	// OutcomeRefused, and no SessionStarted before it).
	SessionEnded func(SessionEnd)
	// Auth is called with the result of each AUTH exchange, and of each
	// AUTH refused by the AUTH limits; not for an AUTH answered with a
	// syntax or sequence error (501, 503, 504, 538), which tried nothing.
	Auth func(AuthEvent)
	// ATRN is called with the reply to each ATRN command, when it is sent:
	// for 250, before the delivery starts.
	ATRN func(ATRNEvent)
	// Delivery is called once for each recipient of each message the
	// session tried to deliver, when the customer has answered for it.
	// Recipients of a message that are not in the session's domains are
	// left for another customer and not reported.
	Delivery func(DeliveryEvent)
}

// SessionStart describes a session that starts.
type SessionStart struct {
	Remote net.Addr
}

// Outcome says how a session ended, as a short word fit for a metric
// label.
type Outcome string

const (
	// OutcomeOK: the customer said QUIT, or the delivery ran to its end.
	OutcomeOK Outcome = "ok"
	// OutcomeRefused: the connection was answered 421 at once, by
	// MaxSessions or MaxSessionsPerAddr.
	OutcomeRefused Outcome = "refused"
	// OutcomeTimeout: the customer was idle for too long, or did not
	// authenticate or reach the role swap in time.
	OutcomeTimeout Outcome = "timeout"
	// OutcomeEvicted: an unauthenticated session closed to make room for a
	// newcomer when MaxSessions was reached.
	OutcomeEvicted Outcome = "evicted"
	// OutcomeShutdown: the provider was shutting down.
	OutcomeShutdown Outcome = "shutdown"
	// OutcomeRejected: the provider closed the session with 421 for its
	// conduct (too many errors or failed AUTH, an overlong line, an HTTP
	// request), or because it lacks an Authenticator, an Authorizer or a
	// Queue.
	OutcomeRejected Outcome = "rejected"
	// OutcomeError: anything else: the connection was closed or broke, a
	// TLS handshake failed, the customer refused the delivery's greeting.
	OutcomeError Outcome = "error"
)

// SessionEnd describes a session that ended.
type SessionEnd struct {
	Remote net.Addr
	// State is the state the session was in when it ended, as
	// odmr.State's String method names it: "initial", "authenticated"
	// or "reversed".
	State   string
	Outcome Outcome
	// Duration is the time since the connection was admitted.
	Duration time.Duration
	// Identity is the authenticated identity; "" if none.
	Identity string
	// Messages counts the messages the session tried to deliver;
	// Delivered, Deferred and Bounced count their recipients by result.
	Messages, Delivered, Deferred, Bounced int
	// Err is the error that ended the session; nil for OutcomeOK.
	Err error
}

// AuthResult is the result of an AUTH command, as a short word fit for a
// metric label.
type AuthResult string

const (
	// AuthSuccess: the customer authenticated.
	AuthSuccess AuthResult = "success"
	// AuthFailure: a wrong secret, an unknown user, or an exchange that
	// was cancelled, malformed or abandoned.
	AuthFailure AuthResult = "failure"
	// AuthRateLimited: refused by the AUTH limits (the source is
	// penalised, or the identity has no guesses left) whatever the secret.
	AuthRateLimited AuthResult = "ratelimited"
	// AuthTempFail: the credential store failed (454).
	AuthTempFail AuthResult = "tempfail"
)

// AuthEvent describes the result of an AUTH command.
type AuthEvent struct {
	// Mechanism is the SASL mechanism, upper case; "" when the command was
	// refused before the mechanism was looked at (a penalised source).
	Mechanism string
	Result    AuthResult
	// User is the name the customer gave (the identity, on success); ""
	// if it gave none. Never a secret.
	User string
}

// ATRNEvent describes the reply to an ATRN command.
type ATRNEvent struct {
	// Identity is the authenticated identity; "" if the session had none.
	Identity string
	// Code is the reply code: 250 when the roles are reversed, 453 when
	// there is no mail, 450 when refused by the rate limit, and so on.
	Code int
}

// DeliveryResult is what became of one recipient of a delivery, as a
// short word fit for a metric label.
type DeliveryResult string

const (
	// Delivered: the customer accepted the message for the recipient.
	Delivered DeliveryResult = "delivered"
	// Deferred: the recipient stays queued, to be tried again.
	Deferred DeliveryResult = "deferred"
	// Bounced: the recipient failed permanently; the queue bounces it.
	Bounced DeliveryResult = "bounced"
)

// DeliveryEvent describes what became of one recipient of a message.
type DeliveryEvent struct {
	// ID is the message's queue ID (odmr.Envelope.ID).
	ID        string
	Recipient string
	// Domain is the recipient's domain, lower case, in A-labels.
	Domain string
	Result DeliveryResult
	// Bytes is the message's size as the queue gave it
	// (odmr.Envelope.Size); 0 when the queue did not say.
	Bytes int64
	// Latency is the time from the message's arrival in the queue
	// (odmr.Envelope.Received) to this result; 0 when the queue did not
	// say when it arrived.
	Latency time.Duration
	// Err is the customer's refusal (errors.As finds its *odmr.Error), or
	// why the delivery did not get that far; nil for Delivered.
	Err error
}

// QueueStats is what a queue holds for one domain.
type QueueStats struct {
	// Domain is the recipients' domain, lower case.
	Domain string
	// Messages counts the messages with recipients queued in the domain,
	// and Bytes adds up their sizes.
	Messages int
	Bytes    int64
	// Oldest is when the oldest of them arrived; zero if unknown.
	Oldest time.Time
}

// QueueStatser is implemented by a queue (an odmr.QueueSource) that can
// tell what it holds per domain without reading its messages
// (spool.Spool does), so that a metrics exporter can show queue sizes.
// The provider does not call it; the odmr-provider program asks at most
// once per -metrics-queue-interval.
type QueueStatser interface {
	// QueueStats returns what is queued, per domain, in any order.
	QueueStats(ctx context.Context) ([]QueueStats, error)
}
