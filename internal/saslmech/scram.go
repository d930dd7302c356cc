package saslmech

import (
	"errors"
	"fmt"

	"github.com/emersion/go-sasl"
	"github.com/xdg-go/scram"
)

// The SCRAM mechanisms (RFC 5802, RFC 7677).
const (
	SCRAMSHA256 = "SCRAM-SHA-256"
	SCRAMSHA1   = "SCRAM-SHA-1"
)

// SCRAMHash returns the hash of a SCRAM mechanism.
func SCRAMHash(mech string) (scram.HashGeneratorFcn, error) {
	switch mech {
	case SCRAMSHA256:
		return scram.SHA256, nil
	case SCRAMSHA1:
		return scram.SHA1, nil
	}
	return nil, fmt.Errorf("odmr: unknown SCRAM mechanism %q", mech)
}

// scramClient bridges xdg-go/scram to go-sasl's Client.
type scramClient struct {
	mech string
	conv *scram.ClientConversation
	err  error
}

// NewSCRAMClient returns a go-sasl client for SCRAM-SHA-256 or SCRAM-SHA-1.
// It checks the server's signature: a provider that does not know the
// secret cannot pass for one that does.
func NewSCRAMClient(mechanism, username, password string) sasl.Client {
	h, err := SCRAMHash(mechanism)
	if err != nil {
		return &scramClient{mech: mechanism, err: err}
	}
	c, err := h.NewClient(username, password, "")
	if err != nil {
		return &scramClient{mech: mechanism, err: fmt.Errorf("odmr: %w", err)}
	}
	return &scramClient{mech: mechanism, conv: c.NewConversation()}
}

func (c *scramClient) Start() (string, []byte, error) {
	if c.err != nil {
		return "", nil, c.err
	}
	first, err := c.conv.Step("")
	return c.mech, []byte(first), err
}

func (c *scramClient) Next(challenge []byte) ([]byte, error) {
	if c.conv.Done() {
		return nil, sasl.ErrUnexpectedServerChallenge
	}
	out, err := c.conv.Step(string(challenge))
	// Check the signature first: xdg-go/scram reports a bad one as a
	// generic validation error.
	if c.conv.Done() && !c.conv.Valid() {
		return nil, errors.New("odmr: SCRAM: the server's signature is wrong")
	}
	if err != nil {
		return nil, fmt.Errorf("odmr: SCRAM: %w", err)
	}
	return []byte(out), nil
}
