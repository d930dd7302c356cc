package odmr

import (
	"context"
	"io"
)

// SessionSink is an optional interface of a [MessageSink] that carries a
// whole fetch in one session of its own, as package smtpsink does with
// one connection to the local server for all the messages of a fetch.
//
// A [Customer] whose Sink implements it calls Begin once per fetch, after
// the role swap and before it greets the provider, and then passes each
// step of each transaction on as the provider's command arrives: MAIL to
// Mail, RCPT to Rcpt, the message to Data, RSET (and the end of a
// transaction that did not reach Data) to Reset. A refusal of the
// session is the reply to the provider's command, so that the provider
// learns which recipient failed and why. The sink's Deliver and
// CheckRecipient are then not called. When Begin fails, the error is
// logged and every transaction of the fetch is answered 451; the mail
// stays with the provider.
type SessionSink interface {
	MessageSink
	// Begin opens the session of one fetch. ctx is the fetch's: the
	// session must not outlive it.
	Begin(ctx context.Context) (SinkSession, error)
}

// SinkSession is the session a [SessionSink] opens for one fetch. Its
// methods are called one at a time, in the order of the provider's
// commands, except that Reset may come while Data still reads a message
// whose BDAT transfer the provider abandoned. An *Error picks the reply
// the provider is sent; any other error becomes a 451 and is logged.
//
// A SinkSession may also implement [DSNProber]: its answer then decides
// whether the customer offers DSN, without another connection.
type SinkSession interface {
	// Mail starts a transaction: env holds From, Size, Body, UTF8 and
	// the DSN parameters of MAIL FROM.
	Mail(ctx context.Context, env Envelope) error
	// Rcpt adds rcpt to the transaction; env.To holds the recipients
	// accepted so far and env.DSN the parameters of rcpt's RCPT.
	Rcpt(ctx context.Context, env Envelope, rcpt string) error
	// Data passes the message on, for the recipients in env.To. It must
	// read body to its end, or return an error; when reading body fails
	// it must not deliver the message, and returns an error.
	Data(ctx context.Context, env Envelope, body io.Reader) error
	// Reset abandons the open transaction, if any.
	Reset(ctx context.Context) error
	// Close ends the session; it is called once, when the fetch ends.
	Close() error
}
