// Package queueadmin defines the operator's view of an ODMR queue, in
// the manner of Postfix's postqueue and postsuper: list the messages,
// show one, delete, bounce, hold and release them. A queue (an
// [odmr.QueueSource]) offers it beside what the provider uses; the
// provider does not use it; queue tools such as the odmr-provider
// program's -queue-list, -queue-show, -queue-delete, -queue-bounce,
// -queue-hold and -queue-release do. [spool.Spool] and [pgqueue.Queue]
// implement it.
//
// [spool.Spool]: https://pkg.go.dev/github.com/go-odmr/odmr/spool#Spool
// [pgqueue.Queue]: https://pkg.go.dev/github.com/go-odmr/odmr/pgqueue#Queue
package queueadmin

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/go-odmr/odmr"
)

// Admin is the operator's view of a queue: list the messages, show one,
// delete, bounce, hold and release them.
//
// A message is named by its ID (Envelope.ID). An ID the queue does not
// hold gives an error matching [io/fs.ErrNotExist]. Methods that change a
// message may refuse one that a session is delivering with an error
// matching [ErrBusy]; nothing is changed then.
type Admin interface {
	// Messages lists the queued messages, held ones and those being
	// delivered included, in the order they arrived.
	Messages(ctx context.Context) ([]Message, error)

	// Message describes one message.
	Message(ctx context.Context, id string) (Message, error)

	// OpenMessage returns the body of a message, headers first, as it
	// would be delivered.
	OpenMessage(ctx context.Context, id string) (io.ReadCloser, error)

	// Delete removes a message without a delivery status notification,
	// as postsuper -d does.
	Delete(ctx context.Context, id string) error

	// Bounce gives up on the recipients still queued: they fail and the
	// sender is sent a delivery status notification, the way the queue
	// reports any failure.
	Bounce(ctx context.Context, id string) error

	// Hold keeps a message queued but offers it to no session (HasMail
	// and Claim pass over it) until Release, as postsuper -h does.
	// Holding a held message does nothing.
	Hold(ctx context.Context, id string) error

	// Release undoes Hold. Releasing a message not held does nothing.
	Release(ctx context.Context, id string) error
}

// ErrBusy is matched by the error of an [Admin] method that refused to
// change a message because a session is delivering it: try again when
// the session is over.
var ErrBusy = errors.New("odmr: message is being delivered")

// Busy returns an error matching [ErrBusy] that names the message and
// says what to do: "odmr: message ID is being delivered; " then hint,
// if any.
func Busy(id, hint string) error { return &busyError{id, hint} }

type busyError struct{ id, hint string }

func (e *busyError) Error() string {
	if e.hint == "" {
		return "odmr: message " + e.id + " is being delivered"
	}
	return "odmr: message " + e.id + " is being delivered; " + e.hint
}

func (e *busyError) Unwrap() error { return ErrBusy }

// Message describes a message in a queue.
type Message struct {
	// Envelope is the message's envelope; To holds the recipients still
	// queued, and Received when the message was queued.
	Envelope odmr.Envelope
	// Recipients describes each recipient in Envelope.To.
	Recipients []Recipient
	// Held is set when the message is held (Admin.Hold).
	Held bool
	// Delivering is set when a session was delivering the message, to
	// some or all of its recipients, as it was listed: Postfix's active
	// queue, which postqueue -p marks with '*'. Such a message is still
	// queued until the customer acknowledges it, and the methods that
	// change it may refuse with ErrBusy meanwhile. A queue that cannot tell without
	// disturbing the session leaves it false.
	Delivering bool
}

// Recipient is the state of one recipient still queued.
type Recipient struct {
	Addr string
	// Attempts counts the deliveries to it that failed temporarily, and
	// LastAttempt is when the last one was made; zero when none was.
	Attempts    int
	LastAttempt time.Time
	// LastError is the error of the last failed attempt, nil if none;
	// errors.As finds the *odmr.Error of an SMTP reply in it.
	LastError error
}
