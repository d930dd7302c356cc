package odmr

// State is the state of an ODMR session (RFC 2645 section 5).
type State int32

const (
	// StateInitial: the provider is the server; EHLO, AUTH and QUIT are
	// valid (section 5.1).
	StateInitial State = iota
	// StateAuthenticated: AUTH succeeded; ATRN and QUIT are valid (5.2).
	StateAuthenticated
	// StateReversed: ATRN succeeded and the provider is now the SMTP
	// client (5.3).
	StateReversed
	// StateClosed: the session is over.
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateInitial:
		return "initial"
	case StateAuthenticated:
		return "authenticated"
	case StateReversed:
		return "reversed"
	case StateClosed:
		return "closed"
	}
	return "unknown"
}
