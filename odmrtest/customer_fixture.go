package odmrtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-odmr/odmr"
)

// The customer that [NewCustomer] configures.
const (
	// FixtureCustomerHostname is the customer's host name, in its EHLO
	// and its greeting after the role swap.
	FixtureCustomerHostname = "customer.example"
	// FixtureRefusedRecipient is the address the customer's sink refuses
	// at RCPT, with 550.
	FixtureRefusedRecipient = "refused@example.org"
)

// NewCustomer returns the [CustomerConfig] that runs this library's
// [odmr.Customer] against the suite: FixtureUser with FixtureSecret,
// asking for FixtureDomains, with FixtureCustomerHostname, and a sink that
// keeps every message in memory and refuses FixtureRefusedRecipient at
// RCPT. Every other field of the customer has its zero value, so it
// waits the RFC's 10 minutes for the reply to ATRN. Each function in
// opts may change the customer before each run; Addr and Sink are set by
// the config (set Addr's host in Dial instead). A change of the
// credentials or domains must be made in the returned config too.
func NewCustomer(opts ...func(*odmr.Customer)) CustomerConfig {
	return CustomerConfig{
		Fetch: func(ctx context.Context, addr string) CustomerOutcome {
			sink := &memorySink{refuse: FixtureRefusedRecipient}
			c := &odmr.Customer{
				Username: FixtureUser,
				Secret:   FixtureSecret,
				Domains:  slices.Clone(FixtureDomains),
				Hostname: FixtureCustomerHostname,
				Logger:   slog.New(slog.DiscardHandler),
			}
			for _, o := range opts {
				o(c)
			}
			c.Addr, c.Sink = addr, sink
			out := OutcomeOf(c.Fetch(ctx))
			out.Messages = sink.received()
			return out
		},
		User:             FixtureUser,
		Secret:           FixtureSecret,
		Domains:          slices.Clone(FixtureDomains),
		RefusedRecipient: FixtureRefusedRecipient,
		Timeout:          10 * time.Second,
	}
}

// OutcomeOf classifies what [odmr.Customer.Fetch] returned, for the Fetch
// hook of a [CustomerConfig]: a nil error is OutcomeNoMail or OutcomeOK,
// and the errors that match [odmr.ErrATRNRefused], [odmr.ErrTryLater],
// [odmr.ErrAuthFailed] and [odmr.ErrAuthRequired] have kinds of their
// own; any other error is OutcomeFailed. Messages is left empty.
func OutcomeOf(res *odmr.FetchResult, err error) CustomerOutcome {
	switch {
	case err == nil && res != nil && res.NoMail:
		return CustomerOutcome{Kind: OutcomeNoMail, Detail: "no mail"}
	case err == nil && res != nil:
		return CustomerOutcome{Kind: OutcomeOK, Detail: fmt.Sprintf("%d messages, %d refused", res.Messages, res.Refused)}
	case err == nil:
		return CustomerOutcome{Kind: OutcomeFailed, Detail: "no result"}
	case errors.Is(err, odmr.ErrATRNRefused):
		return CustomerOutcome{Kind: OutcomeRefused, Detail: err.Error()}
	case errors.Is(err, odmr.ErrTryLater):
		return CustomerOutcome{Kind: OutcomeTryLater, Detail: err.Error()}
	case errors.Is(err, odmr.ErrAuthFailed), errors.Is(err, odmr.ErrAuthRequired):
		return CustomerOutcome{Kind: OutcomeAuthFailed, Detail: err.Error()}
	}
	return CustomerOutcome{Kind: OutcomeFailed, Detail: err.Error()}
}

// memorySink is the sink of the customer of NewCustomer.
type memorySink struct {
	refuse string

	mu   sync.Mutex
	msgs []Message
}

var (
	_ odmr.MessageSink      = (*memorySink)(nil)
	_ odmr.RecipientChecker = (*memorySink)(nil)
)

// CheckRecipient refuses s.refuse.
func (s *memorySink) CheckRecipient(_ context.Context, _ odmr.Envelope, rcpt string) error {
	if strings.EqualFold(rcpt, s.refuse) {
		return &odmr.Error{Code: 550, EnhancedCode: odmr.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	}
	return nil
}

// Deliver keeps the message.
func (s *memorySink) Deliver(_ context.Context, env odmr.Envelope, body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, Message{From: env.From, To: slices.Clone(env.To), Body: string(b)})
	s.mu.Unlock()
	return nil
}

func (s *memorySink) received() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}
