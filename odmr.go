package odmr

import (
	"errors"
	"slices"
	"time"
)

// Port is the TCP port reserved for On-Demand Mail Relay (RFC 2645 section 4).
const Port = 366

// ErrUnknownUser is returned by an [Authenticator] that has no such user.
// The provider answers it like a wrong secret, 535.
var ErrUnknownUser = errors.New("odmr: unknown user")

// BodyType is the value of the ESMTP BODY parameter (RFC 6152, RFC 3030).
type BodyType string

const (
	Body7Bit       BodyType = "7BIT"
	Body8BitMIME   BodyType = "8BITMIME"
	BodyBinaryMIME BodyType = "BINARYMIME"
)

// Envelope is the SMTP envelope of a message: what MAIL FROM and RCPT TO
// carry, and what the body needs of the receiver.
type Envelope struct {
	// ID names the message in logs and, for a queue, in its store.
	ID string
	// From is the reverse path without angle brackets; "" is the null
	// sender of bounces.
	From string
	// To holds the recipients, without angle brackets.
	To []string
	// Size is the body size in bytes, 0 when unknown. The provider sends it
	// as SIZE= when the receiver offers SIZE.
	Size int64
	// Body is the BODY parameter; "" means 7BIT.
	Body BodyType
	// UTF8 is set when the envelope or headers need SMTPUTF8 (RFC 6531).
	UTF8 bool
	// Received is when the message entered the queue.
	Received time.Time
	// DSN holds the delivery status notification requests that came with
	// the message (RFC 3461): the provider passes them on to a customer
	// that offers DSN, and a queue honours them when it reports on the
	// message. nil when there are none.
	DSN *DSN
}

// DSN is what the sender of a message asked of delivery status
// notifications (RFC 3461): the MAIL parameters RET and ENVID, and each
// recipient's NOTIFY and ORCPT.
type DSN struct {
	// Return says how much of the message a failure report carries:
	// ReturnFull, ReturnHeaders, or "" for the reporter's choice.
	Return DSNReturn
	// EnvID is the sender's identifier of the transaction, decoded from
	// xtext; "" when not given.
	EnvID string
	// Recipients holds the per-recipient requests, by the address as it
	// appears in Envelope.To; a recipient that made none is absent.
	Recipients map[string]RecipientDSN
}

// DSNReturn is the value of the RET parameter.
type DSNReturn string

const (
	ReturnFull    DSNReturn = "FULL"
	ReturnHeaders DSNReturn = "HDRS"
)

// DSNNotify is one value of the NOTIFY parameter.
type DSNNotify string

const (
	NotifyNever   DSNNotify = "NEVER"
	NotifySuccess DSNNotify = "SUCCESS"
	NotifyFailure DSNNotify = "FAILURE"
	NotifyDelay   DSNNotify = "DELAY"
)

// RecipientDSN is what the sender asked of reports about one recipient.
type RecipientDSN struct {
	// Notify lists the events to report: NotifyNever alone, or any of
	// NotifySuccess, NotifyFailure and NotifyDelay. nil when not given,
	// which RFC 3461 section 4.1 lets the reporter read as FAILURE and
	// DELAY.
	Notify []DSNNotify
	// ORcptType and ORcpt are the original recipient (ORCPT): its address
	// type, "RFC822" or "UTF-8" (matched without regard to case), and the
	// address, decoded; both "" when not given.
	ORcptType string
	ORcpt     string
}

// Notifies reports whether the sender wants a report of event (success,
// failure or delay) for rcpt. Without a NOTIFY parameter failures and
// delays are reported and successes are not; d may be nil.
func (d *DSN) Notifies(rcpt string, event DSNNotify) bool {
	var notify []DSNNotify
	if d != nil {
		notify = d.Recipients[rcpt].Notify
	}
	if notify == nil {
		return event == NotifyFailure || event == NotifyDelay
	}
	return slices.Contains(notify, event) && !slices.Contains(notify, NotifyNever)
}

// Clone returns a deep copy of d; nil for nil.
func (d *DSN) Clone() *DSN {
	if d == nil {
		return nil
	}
	c := *d
	if d.Recipients == nil {
		return &c
	}
	c.Recipients = make(map[string]RecipientDSN, len(d.Recipients))
	for k, v := range d.Recipients {
		v.Notify = slices.Clone(v.Notify)
		c.Recipients[k] = v
	}
	return &c
}

// RecipientResult is what happened to one recipient of a delivery.
type RecipientResult struct {
	Recipient string
	// Err is nil when the receiver accepted the message for the recipient
	// with its final reply, an *Error with the receiver's reply when it
	// refused, or another error when the delivery did not get that far
	// (a cut connection, a failing queue).
	Err error
	// NoDSN is set on an accepted recipient when the receiver did not
	// offer DSN (RFC 3461): the sender's requests for notifications end
	// here, and a queue should send the "relayed" notification a NOTIFY
	// with SUCCESS asks for (RFC 3461 section 4.1). The spool package
	// does; package memqueue, which sends no notifications at all,
	// ignores it.
	NoDSN bool
}
