package odmr

import (
	"errors"
	"fmt"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// EnhancedCode is an RFC 3463 enhanced status code such as 4.7.0.
// The zero value means "none".
type EnhancedCode [3]int

// String formats the code as "class.subject.detail", or "" for the zero value.
func (c EnhancedCode) String() string {
	if c == (EnhancedCode{}) {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

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
	errSyntax         = &Error{Code: 500, EnhancedCode: EnhancedCode{5, 5, 2}, Message: "Syntax error"}
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
	errNoDomains      = &Error{Code: 450, EnhancedCode: EnhancedCode{4, 7, 1}, Message: "No domains are authorized for this identity"}
	errLostConnection = &Error{Code: 421, EnhancedCode: EnhancedCode{4, 4, 2}, Message: "Connection lost during delivery"}
)

// withMessage returns a copy of e with another text.
func (e *Error) withMessage(format string, args ...any) *Error {
	c := *e
	c.Message = fmt.Sprintf(format, args...)
	return &c
}

// AsError returns err as an *Error: an *Error found with [errors.As], a
// go-smtp [smtp.SMTPError] or a [textproto.Error] converted, and nil
// for anything else.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		out := &Error{Code: se.Code, Message: se.Message}
		if se.EnhancedCode != smtp.EnhancedCodeNotSet && se.EnhancedCode != smtp.NoEnhancedCode {
			out.EnhancedCode = EnhancedCode(se.EnhancedCode)
		}
		return out
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		return parseReplyText(te.Code, te.Msg)
	}
	return nil
}

// parseReplyText splits a leading enhanced status code off msg.
func parseReplyText(code int, msg string) *Error {
	out := &Error{Code: code, Message: msg}
	first, rest, _ := strings.Cut(msg, " ")
	if ec, ok := parseEnhancedCode(first); ok && ec[0] == code/100 {
		out.EnhancedCode = ec
		out.Message = rest
	}
	return out
}

func parseEnhancedCode(s string) (EnhancedCode, bool) {
	var ec EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return ec, false
	}
	for i, p := range parts {
		if p == "" || len(p) > 3 {
			return ec, false
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return ec, false
		}
		ec[i] = n
	}
	if ec[0] != 2 && ec[0] != 4 && ec[0] != 5 {
		return ec, false
	}
	return ec, true
}

// Permanent reports whether err is a permanent (5xx) SMTP failure. Any
// other error, including a lost connection, is transient: the message
// stays queued.
func Permanent(err error) bool {
	e := AsError(err)
	return e != nil && e.Code >= 500 && e.Code < 600
}

// toSMTPError converts e for go-smtp's server.
func (e *Error) toSMTPError() *smtp.SMTPError {
	ec := smtp.EnhancedCode(e.EnhancedCode)
	if e.EnhancedCode == (EnhancedCode{}) {
		ec = smtp.EnhancedCodeNotSet // go-smtp fills in X.0.0
	}
	return &smtp.SMTPError{Code: e.Code, EnhancedCode: ec, Message: e.Message}
}
