// Package odmrtest is a conformance suite for On-Demand Mail Relay
// (RFC 2645) providers and customers, in the manner of
// golang.org/x/net/nettest and testing/fstest.
//
// The suite reaches the provider only through connections it dials, and
// speaks raw SMTP over them, so it tests any implementation: this
// library's [odmr.Provider], or a non-Go server over TCP. Each requirement
// is a [Check] named after the RFC section it comes from
// ("5.2.1/no-mail-453", "RFC4954/second-AUTH-503"). Every check uses fresh
// connections with deadlines, so a broken provider fails a check instead of
// hanging it.
//
// In a Go test, [TestProvider] runs every check as a subtest:
//
//	func TestMyProvider(t *testing.T) {
//		odmrtest.TestProvider(t, odmrtest.ProviderConfig{
//			Dial:          func() (net.Conn, error) { return net.Dial("tcp", addr) },
//			User:          "alice",
//			Secret:        "s3cret",
//			Domains:       []string{"example.org", "example.com"},
//			ForeignDomain: "example.net",
//			ForeignUser:   "bob", // owns example.net: optional
//			ForeignSecret: "b0b",
//			Enqueue:       enqueueOnMyProvider,
//		})
//	}
//
// A plain program runs the same checks with [RunProvider] and a
// [Reporter]; examples/odmr-conformance is such a program.
//
// [NewProvider] starts this library's provider on a loopback port with a
// [github.com/go-odmr/odmr/memqueue.Queue] and two accounts, and returns the matching
// [ProviderConfig]; [MemoryEnqueuer] turns any memqueue.Queue into an Enqueue
// hook.
//
// After a 250 to ATRN the suite plays the customer's SMTP server: it sends
// its greeting, answers EHLO, MAIL, RCPT and DATA, and compares what
// arrives with what it queued, byte for byte. It only accepts messages it
// queued itself (they carry an X-Odmrtest-Token header field); any other
// message is answered 451 so that it stays queued at the provider, which
// makes it safe to point the suite at a provider that holds real mail.
//
// # Customers
//
// The customer half is the mirror image: [TestCustomer] (or [RunCustomer])
// runs each check of [CustomerChecks] by playing a scripted provider on a
// loopback port and running the customer once against it, through
// [CustomerConfig]'s Fetch hook. The suite greets, offers CRAM-MD5 and
// ATRN (or, for some checks, PLAIN only, or no ATRN), verifies the
// customer's CRAM-MD5 response against the secret, answers ATRN with 250,
// 450, 451, 453 or 530, and after a 250 plays the provider's SMTP client:
// it reads the customer's greeting and delivers a message with dot-stuffed
// and 8-bit lines, pipelined when the customer offers PIPELINING, or cuts
// it off midway. Each check judges what the customer sent and what it
// reported, a [CustomerOutcome] whose Kind the adapter derives from an
// error value or an exit status, and whose Messages are what the
// customer's sink received:
//
//	func TestMyCustomer(t *testing.T) {
//		odmrtest.TestCustomer(t, odmrtest.CustomerConfig{
//			Fetch:   runMyCustomerAgainst, // func(ctx, addr) CustomerOutcome
//			User:    "alice",
//			Secret:  "s3cret",
//			Domains: []string{"example.org", "example.com"},
//		})
//	}
//
// [NewCustomer] returns the configuration for this library's
// [odmr.Customer] with an in-memory sink, and [OutcomeOf] classifies what
// [odmr.Customer.Fetch] returns; a program such as fetchmail is run by a
// Fetch hook that maps its exit status to an [OutcomeKind]. A customer
// whose report the hook cannot see, one an operator runs by hand, is
// [OutcomeUnknown]: the checks then judge the wire and the sink alone.
// examples/odmr-conformance -customer runs this half from the shell, for
// a customer command or a customer run by hand.
package odmrtest
