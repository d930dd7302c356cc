// Package defaults holds the values that the zero fields of
// odmr.Provider and odmr.Customer stand for. The field comments state
// them; the programs in examples/ show them as their flags' defaults, so
// the two cannot drift apart.
package defaults

import "time"

// The session limits of a Provider.
const (
	CommandTimeout = 5 * time.Minute
	ReplyTimeout   = 5 * time.Minute
	DataTimeout    = 10 * time.Minute
	WriteTimeout   = time.Minute
	// BackendTimeout bounds each call to the Authorizer and the Queue
	// that a customer waits on.
	BackendTimeout = time.Minute
	MaxErrors      = 10
	// MaxAuthFailures is the number of failed AUTH commands a session may
	// make; the next failure closes it.
	MaxAuthFailures = 3
	SessionTimeout  = 15 * time.Minute
	// AuthTimeout is how long a session may stay unauthenticated.
	AuthTimeout = time.Minute
)

// The limits of a Provider that keep anonymous sessions from crowding out
// customers.
const (
	MaxSessions        = 1000
	MaxSessionsPerAddr = 20
	// IPv4Prefix and IPv6Prefix size the network that MaxSessionsPerAddr
	// counts: one IPv4 address, one IPv6 /64 (what a single host or site
	// usually gets).
	IPv4Prefix = 32
	IPv6Prefix = 64
	// ConnLogsPerSecond caps the log records about refused and evicted
	// connections and unauthenticated sessions.
	ConnLogsPerSecond = 10
	ATRNInterval      = time.Second
	ATRNBurst         = 30
)

// The AUTH limits of a Provider.
const (
	AuthFailuresAllowed = 5
	AuthBackoff         = time.Second
	MaxAuthBackoff      = 5 * time.Minute
	AuthGuessInterval   = 6 * time.Second
	AuthGuessBurst      = 10
	AuthLimiterEntries  = 100000
	AuthLogsPerSecond   = 10
	// SCRAMCacheSize is how many derived SCRAM keys a Provider keeps.
	SCRAMCacheSize = 10000
	// SCRAMIterations is the PBKDF2 iteration count of the SCRAM
	// credentials the package derives (RFC 7677 asks for at least 4096).
	SCRAMIterations = 4096
)

// The timeouts of a Customer; its CommandTimeout defaults to
// CommandTimeout too.
const (
	// ATRNTimeout is how long the customer waits for the reply to ATRN.
	// RFC 2645 section 5.2.1 requires at least 10 minutes, the time a
	// provider may need to go through its queue.
	ATRNTimeout = 10 * time.Minute
	// IdleTimeout is how long the customer, once it is the SMTP server,
	// waits for the provider's next command or data: the server timeout
	// of RFC 5321 section 4.5.3.2.7.
	IdleTimeout = 5 * time.Minute
)
