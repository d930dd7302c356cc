package odmr

import (
	"errors"
	"fmt"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/go-odmr/odmr/internal/nospace"
	"github.com/go-odmr/odmr/internal/smtpserver"
	"github.com/go-odmr/odmr/internal/wire"
)

// EnhancedCode is an RFC 3463 enhanced status code such as 4.7.0.
// The zero value means "none".
type EnhancedCode [3]int

// String formats the code as "class.subject.detail", or "" for the zero value.
func (c EnhancedCode) String() string { return wire.FormatEnhancedCode(c) }

// Error is an SMTP reply that reports a failure: a reply code, an optional
// enhanced status code and the human-readable text. Errors read off the
// wire, errors the library sends and errors that a [MessageSink] or
// [QueueSource] wants sent all have this type.
//
// Two Errors match under [errors.Is] when their reply codes are equal, so
// errors.Is(err, ErrNoMail) is true for any 453 reply.
type Error struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// Error formats the reply as "odmr: CODE ENHANCED MESSAGE".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("odmr: ")
	b.WriteString(strconv.Itoa(e.Code))
	if s := e.EnhancedCode.String(); s != "" {
		b.WriteByte(' ')
		b.WriteString(s)
	}
	if e.Message != "" {
		b.WriteByte(' ')
		b.WriteString(e.Message)
	}
	return b.String()
}

// Temporary reports whether the reply is a transient failure (4xx).
func (e *Error) Temporary() bool { return e.Code >= 400 && e.Code < 500 }

// Is reports whether target is an *Error with the same reply code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// The reply codes of RFC 2645 section 7, and the authentication replies of
// RFC 4954 that an ODMR session can end with. Use them with [errors.Is].
var (
	// ErrATRNRefused (450): the identity may not pull one of the domains, or
	// the provider refuses requests this frequent.
	ErrATRNRefused = &Error{Code: 450, EnhancedCode: EnhancedCode{4, 7, 1}, Message: "ATRN request refused"}
	// ErrTryLater (451): the provider cannot process ATRN now.
	ErrTryLater = &Error{Code: 451, EnhancedCode: EnhancedCode{4, 3, 0}, Message: "Unable to process ATRN request now"}
	// ErrNoMail (453): nothing is queued for the requested domains.
	ErrNoMail = &Error{Code: 453, EnhancedCode: EnhancedCode{4, 2, 0}, Message: "You have no mail"}
	// ErrNotImplemented (502): the command is not part of ODMR.
	ErrNotImplemented = &Error{Code: 502, EnhancedCode: EnhancedCode{5, 5, 1}, Message: "Command not implemented"}
	// ErrAuthRequired (530): ATRN was sent before a successful AUTH.
	ErrAuthRequired = &Error{Code: 530, EnhancedCode: EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	// ErrAuthFailed (535): the credentials were refused.
	ErrAuthFailed = &Error{Code: 535, EnhancedCode: EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
)

// Replies the provider sends that are not errors a caller matches on.
var (
	errLineTooLong    = &Error{Code: 500, EnhancedCode: EnhancedCode{5, 5, 2}, Message: "Line too long"}
	errBadArguments   = &Error{Code: 501, EnhancedCode: EnhancedCode{5, 5, 4}, Message: "Syntax error in parameters"}
	errBadSequence    = &Error{Code: 503, EnhancedCode: EnhancedCode{5, 5, 1}, Message: "Bad sequence of commands"}
	errUnknownMech    = &Error{Code: 504, EnhancedCode: EnhancedCode{5, 5, 4}, Message: "Unrecognized authentication mechanism"}
	errAuthCancelled  = &Error{Code: 501, EnhancedCode: EnhancedCode{5, 0, 0}, Message: "Authentication cancelled"}
	errBadBase64      = &Error{Code: 501, EnhancedCode: EnhancedCode{5, 5, 2}, Message: "Invalid base64 data"}
	errEncryptionReq  = &Error{Code: 538, EnhancedCode: EnhancedCode{5, 7, 11}, Message: "Encryption required for requested authentication mechanism"}
	errTooManyErrors  = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Too many errors, closing connection"}
	errTooManyAuth    = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Too many failed authentication attempts, closing connection"}
	errShuttingDown   = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 3, 2}, Message: "Service shutting down, closing connection"}
	errTimeout        = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 4, 2}, Message: "Idle timeout, closing connection"}
	errCrossProtocol  = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "This is an ODMR service, not HTTP; closing connection"}
	errLocalError     = &Error{Code: 451, EnhancedCode: EnhancedCode{4, 3, 0}, Message: "Local error, try again later"}
	errNoStorage      = &Error{Code: nospace.Code, EnhancedCode: nospace.Enhanced, Message: nospace.Message}
	errNoDomains      = &Error{Code: 450, EnhancedCode: EnhancedCode{4, 7, 1}, Message: "No domains are authorized for this identity"}
	errLostConnection = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 4, 2}, Message: "Connection lost during delivery"}
	errNotConfigured  = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 3, 0}, Message: "Service not configured, closing connection"}
	errLineFlood      = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Line too long, closing connection"}
	errTLSUnavailable = &Error{Code: 454, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "TLS not available"}
	errTLSRequired    = &Error{Code: 530, EnhancedCode: EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errTempAuthFailed = &Error{Code: 454, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
	// errAuthThrottled refuses an attempt on an identity that has no
	// guesses left, before its secret is checked: the reply is the same
	// whatever the secret.
	errAuthThrottled = &Error{Code: 454, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Too many failed authentication attempts; try again later"}
	// errAuthLocked refuses AUTH from a penalised source; its text says
	// for how long.
	errAuthLocked = &Error{Code: 454, EnhancedCode: EnhancedCode{4, 7, 0}, Message: "Too many failed authentication attempts; try again in %v"}
)

// The provider's refusals of commands, written by session.result.
var (
	errBareCRCommand = &Error{Code: 500, EnhancedCode: EnhancedCode{5, 5, 2}, Message: "Bare CR or NUL in command"}
	errEmptyCommand  = &Error{Code: 500, EnhancedCode: EnhancedCode{5, 5, 2}, Message: "Empty command"}
	errNotODMR       = &Error{Code: 502, EnhancedCode: EnhancedCode{5, 5, 1}, Message: "Command not implemented; ODMR accepts EHLO, AUTH, ATRN and QUIT"}
	errHelloArgument = &Error{Code: 501, EnhancedCode: EnhancedCode{5, 5, 4}, Message: "%s requires a domain or address"}
	errTLSActive     = &Error{Code: 503, EnhancedCode: EnhancedCode{5, 5, 1}, Message: "TLS already active"}
	errStartTLSArgs  = &Error{Code: 501, EnhancedCode: EnhancedCode{5, 5, 4}, Message: "STARTTLS takes no parameters"}
	errAuthenticated = &Error{Code: 503, EnhancedCode: EnhancedCode{5, 5, 1}, Message: "Already authenticated"}
	errEHLOFirst     = &Error{Code: 503, EnhancedCode: EnhancedCode{5, 5, 1}, Message: "Send EHLO first"}
	errNoMechanism   = &Error{Code: 501, EnhancedCode: EnhancedCode{5, 5, 4}, Message: "AUTH requires a mechanism"}
	errATRNRate      = &Error{Code: 450, EnhancedCode: EnhancedCode{4, 7, 1}, Message: "Too many ATRN requests; wait before asking again"}
	errDomainDenied  = &Error{Code: 450, EnhancedCode: EnhancedCode{4, 7, 1}, Message: "Access to domain %s denied"}
)

// The texts of the provider's success replies.
const (
	replyGreeting  = "on-demand mail relay server ready" // after the host name
	replyOK        = "2.0.0 OK"
	replyBye       = "2.0.0 Bye"
	replyStartTLS  = "2.0.0 Ready to start TLS"
	replyReversing = "2.0.0 OK now reversing the connection"
	replyAuthOK    = "2.7.0 Authentication successful"
)

// Results the provider records for a recipient it does not send, before
// the customer sees the message.
var (
	errRcptCRLF      = &Error{Code: 553, EnhancedCode: EnhancedCode{5, 1, 3}, Message: "Recipient address contains CR or LF"}
	errSenderCRLF    = &Error{Code: 553, EnhancedCode: EnhancedCode{5, 1, 7}, Message: "Sender address contains CR or LF"}
	errNoSMTPUTF8    = &Error{Code: 553, EnhancedCode: EnhancedCode{5, 6, 7}, Message: "Receiver does not support SMTPUTF8"}
	errNo8BitMIME    = &Error{Code: 554, EnhancedCode: EnhancedCode{5, 6, 3}, Message: "8-bit message cannot be relayed to a receiver without 8BITMIME"}
	errBinaryMIME    = &Error{Code: 554, EnhancedCode: EnhancedCode{5, 6, 3}, Message: "Binary message cannot be relayed to this receiver"}
	errTooBigForPeer = &Error{Code: 552, EnhancedCode: EnhancedCode{5, 3, 4}, Message: "Message size %d exceeds receiver's limit %d"}
)

// withMessage returns a copy of e with another text.
func (e *Error) withMessage(format string, args ...any) *Error {
	c := *e
	c.Message = fmt.Sprintf(format, args...)
	return &c
}

// withArgs returns a copy of e, whose Message is a format, with args
// filled in.
func (e *Error) withArgs(args ...any) *Error { return e.withMessage(e.Message, args...) }

// AsError returns err as an *Error: an *Error found with [errors.As],
// the SMTP error of github.com/emersion/go-smtp (its SMTPError, which a
// sink built on its client returns) or a [textproto.Error] converted, and
// nil for anything else.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var we *wire.Error
	if errors.As(err, &we) {
		return &Error{Code: we.Code, EnhancedCode: we.EnhancedCode, Message: we.Message}
	}
	if se, ok := smtpserver.AsError(err); ok {
		return &Error{Code: se.Code, EnhancedCode: EnhancedCode(se.EnhancedCode), Message: se.Message}
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		return parseReplyText(te.Code, te.Msg)
	}
	return nil
}

// parseReplyText is the reply of code and msg as an *Error, a leading
// enhanced status code split off msg with package wire's reply codec.
func parseReplyText(code int, msg string) *Error {
	we := wire.Reply{Code: code, Text: msg}.Err()
	return &Error{Code: we.Code, EnhancedCode: we.EnhancedCode, Message: we.Message}
}

// errText is err's text without the "odmr: " that starts this package's
// errors, for a message that puts its own prefix before it, or none.
func errText(err error) string {
	return strings.TrimPrefix(err.Error(), "odmr: ")
}

// Permanent reports whether err is a permanent (5xx) SMTP failure. Any
// other error, including a lost connection, is transient: the message
// stays queued.
func Permanent(err error) bool {
	e := AsError(err)
	return e != nil && e.Code >= 500 && e.Code < 600
}
