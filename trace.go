package odmr

import (
	"errors"
	"net"
	"time"

	"github.com/go-odmr/odmr/odmrtrace"
)

// The hooks below feed Provider.Trace; each does nothing, and allocates
// nothing, when the trace or its func is nil.

// observeStart reports a session that starts.
func (s *session) observeStart() {
	if o := s.p.Trace; o != nil && o.SessionStarted != nil {
		o.SessionStarted(odmrtrace.SessionStart{Remote: s.raw.RemoteAddr()})
	}
}

// observeEnd reports a session that ends with err in state.
func (s *session) observeEnd(state State, err error) {
	o := s.p.Trace
	if o == nil || o.SessionEnded == nil {
		return
	}
	if errors.Is(err, errSessionOver) {
		err = nil
	}
	o.SessionEnded(odmrtrace.SessionEnd{
		Remote:    s.raw.RemoteAddr(),
		State:     state.String(),
		Outcome:   s.outcome(err),
		Duration:  time.Since(s.start),
		Identity:  s.identity,
		Messages:  s.messages,
		Delivered: s.delivered,
		Deferred:  s.deferred,
		Bounced:   s.failed,
		Err:       err,
	})
}

// outcome classifies the end of the session by the 421 it was closed
// with, if any.
func (s *session) outcome(err error) odmrtrace.Outcome {
	switch c := s.closedWith; {
	case c == errShuttingDown:
		return odmrtrace.OutcomeShutdown
	case err == nil:
		return odmrtrace.OutcomeOK
	case s.evicted.Load() || c == errGaveWay:
		return odmrtrace.OutcomeEvicted
	case c == errTimeout || c == errAuthTimeout:
		return odmrtrace.OutcomeTimeout
	case c != nil:
		return odmrtrace.OutcomeRejected
	}
	return odmrtrace.OutcomeError
}

// noteReply remembers a 421 the session is closed with, for outcome.
func (s *session) noteReply(e *Error) {
	if e.Code == 421 && s.p.Trace != nil {
		s.closedWith = e
	}
}

// observeRefused reports a connection refused before its session started.
func (p *Provider) observeRefused(conn net.Conn) {
	if o := p.Trace; o != nil && o.SessionEnded != nil {
		o.SessionEnded(odmrtrace.SessionEnd{Remote: conn.RemoteAddr(), State: StateInitial.String(), Outcome: odmrtrace.OutcomeRefused})
	}
}

// observeAuth reports the result of an AUTH command.
func (s *session) observeAuth(mech, user string, result odmrtrace.AuthResult) {
	if o := s.p.Trace; o != nil && o.Auth != nil {
		o.Auth(odmrtrace.AuthEvent{Mechanism: mech, Result: result, User: user})
	}
}

// observeATRN reports the reply just sent to an ATRN command (or whose
// write failed); handleATRN calls it once per command.
func (s *session) observeATRN() {
	if o := s.p.Trace; o != nil && o.ATRN != nil {
		o.ATRN(odmrtrace.ATRNEvent{Identity: s.identity, Code: s.lastCode})
	}
}

// observeDelivery reports what became of recipient r of the message with
// envelope env; the results are classified as complete logs them.
func (s *session) observeDelivery(env Envelope, r RecipientResult) {
	o := s.p.Trace
	if o == nil || o.Delivery == nil || (r.Err != nil && !inDomains(r.Recipient, s.domains)) {
		return
	}
	ev := odmrtrace.DeliveryEvent{ID: env.ID, Recipient: r.Recipient, Domain: RecipientDomain(r.Recipient),
		Result: odmrtrace.Delivered, Bytes: env.Size, Err: r.Err}
	switch {
	case r.Err == nil:
	case Permanent(r.Err):
		ev.Result = odmrtrace.Bounced
	default:
		ev.Result = odmrtrace.Deferred
	}
	if !env.Received.IsZero() {
		ev.Latency = time.Since(env.Received)
	}
	o.Delivery(ev)
}
