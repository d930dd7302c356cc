package odmrtest

import (
	"errors"
	"net"
	"strings"
	"time"
)

// DefaultTimeout bounds each check when [ProviderConfig].Timeout is 0.
const DefaultTimeout = 30 * time.Second

// DefaultGreetingWait is how long the suite listens, after a 250 to ATRN,
// for a provider that speaks before the customer's greeting, when
// [ProviderConfig].GreetingWait is 0.
const DefaultGreetingWait = 50 * time.Millisecond

// NoMailReply says how a provider answers an ATRN for domains that have
// no mail queued (RFC 2645 section 5.2.1).
type NoMailReply int

const (
	// NoMail453 is the normal answer: the ATRN is rejected with 453.
	NoMail453 NoMailReply = iota
	// NoMail250Quit is the alternative the RFC allows: 250, and after the
	// role swap the provider sends QUIT following its EHLO.
	NoMail250Quit
	// NoMailEither accepts both answers.
	NoMailEither
)

// String returns "453", "250+QUIT" or "either".
func (n NoMailReply) String() string {
	switch n {
	case NoMail453:
		return "453"
	case NoMail250Quit:
		return "250+QUIT"
	case NoMailEither:
		return "either"
	}
	return "unknown"
}

// ProviderConfig tells the suite how to reach a provider, which account to
// use and what the provider is known to do where the RFC lets it choose.
// Dial, User, Secret, Domains and ForeignDomain are required; every other
// field has a documented zero value.
type ProviderConfig struct {
	// Dial opens a new connection to the provider. The provider greets
	// first, as on a newly accepted TCP connection.
	Dial func() (net.Conn, error)

	// User and Secret are an account the provider authenticates with
	// CRAM-MD5 (RFC 2195), the mechanism RFC 2645 makes mandatory.
	User, Secret string
	// Domains are the domains the account may pull with ATRN; at least one.
	// Checks that need two domains are skipped with fewer.
	Domains []string
	// ForeignDomain is a domain the account may not pull; best is one that
	// belongs to another account of the same provider.
	ForeignDomain string
	// ForeignUser and ForeignSecret are a second account, the one that
	// owns ForeignDomain. With them the suite checks, by pulling
	// ForeignDomain as that account, that mail the first account must not
	// get was neither delivered to it nor lost: it is still queued for its
	// owner. "" means the suite has no second account: those parts of the
	// checks are skipped or noted.
	ForeignUser, ForeignSecret string

	// Enqueue queues a message on the provider for the recipients in to,
	// with the envelope sender from and body as the message (RFC 5322 text
	// with CRLF line endings, headers first). It returns once the message
	// is queued. nil means the suite has no way to queue mail: the checks
	// that need a queued message are skipped.
	Enqueue func(from string, to []string, body string) error

	// NoMail is how the provider answers an ATRN when nothing is queued;
	// the zero value is the normal 453.
	NoMail NoMailReply
	// RetryHeld says that the provider holds a message that failed
	// temporarily until a retry time, so it is not delivered again at
	// once. The checks that expect an immediate second delivery then skip
	// that part. False means they expect it.
	RetryHeld bool
	// InsecureAuth says that the provider was configured to offer AUTH
	// PLAIN or LOGIN on connections without TLS. False means the suite
	// checks that it does not (RFC 4954 section 4).
	InsecureAuth bool
	// ReplaysPipelined says that the provider takes bytes the customer
	// sent right after ATRN, before the 250 arrived, as the start of the
	// reversed session (an interpretation of this library; the RFC is
	// silent). False skips that check.
	ReplaysPipelined bool

	// RateLimitWait is how long the suite waits before it sends an ATRN
	// again when the provider refused one for domains the account may pull
	// with 450, which section 5.2.1 allows "to indicate refusal to accept
	// multiple requests issued within a particular time interval". It
	// tries up to four times. 0 means such a 450 fails the check at once.
	// A run sends some 50 ATRNs.
	RateLimitWait time.Duration

	// Timeout bounds each check, which fails when the provider does not
	// answer in time. 0 means DefaultTimeout.
	Timeout time.Duration
	// GreetingWait is how long the suite listens after a 250 to ATRN for
	// a provider that speaks before the customer's greeting. 0 means
	// DefaultGreetingWait; negative turns that probe off. It never slows a
	// correct provider by more than this per delivery session, and it
	// cannot make a correct provider fail.
	GreetingWait time.Duration
	// Hostname is the name the suite gives in its EHLO and in its greeting
	// as a customer. "" means "customer.example".
	Hostname string
	// Sender is the envelope sender of the messages the suite queues. ""
	// means "odmrtest@" followed by ForeignDomain, so that a bounce never
	// lands in the account's own queue.
	Sender string

	// Skip lists the IDs of checks not to run (see [Check.ID]); they are
	// reported as skipped.
	Skip []string
}

// withDefaults returns cfg with its zero fields set.
func (cfg ProviderConfig) withDefaults() ProviderConfig {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.GreetingWait == 0 {
		cfg.GreetingWait = DefaultGreetingWait
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "customer.example"
	}
	if cfg.Sender == "" {
		cfg.Sender = "odmrtest@" + cfg.ForeignDomain
	}
	return cfg
}

// validate reports what is missing from cfg.
func (cfg ProviderConfig) validate() error {
	var missing []string
	if cfg.Dial == nil {
		missing = append(missing, "Dial")
	}
	if cfg.User == "" {
		missing = append(missing, "User")
	}
	if len(cfg.Domains) == 0 {
		missing = append(missing, "Domains")
	}
	if cfg.ForeignDomain == "" {
		missing = append(missing, "ForeignDomain")
	}
	if len(missing) > 0 {
		return errors.New("odmrtest: ProviderConfig needs " + strings.Join(missing, ", "))
	}
	for _, d := range cfg.Domains {
		if strings.EqualFold(d, cfg.ForeignDomain) {
			return errors.New("odmrtest: ForeignDomain " + cfg.ForeignDomain + " is one of Domains")
		}
	}
	return nil
}
