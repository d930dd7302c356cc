package odmr

import (
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/go-odmr/odmr/internal/saslmech"
)

// maxAuthSteps bounds the challenges of one AUTH.
const maxAuthSteps = 8

// defaultMechanisms is the order in which a [Customer] whose Mechanisms
// field is nil picks a SASL mechanism among those the provider offers:
// EXTERNAL, when the customer has a client certificate and the session
// runs over TLS; the SCRAM mechanisms, which prove the provider knows the
// secret too; then CRAM-MD5, which RFC 2645 makes mandatory; then PLAIN
// and LOGIN.
var defaultMechanisms = []string{sasl.External, SCRAMSHA256, SCRAMSHA1, CRAMMD5, sasl.Plain, sasl.Login}

// saslClient picks the first mechanism of the customer's list that the
// provider offers: EXTERNAL only under TLS with a client certificate, the
// others only with a Username, PLAIN and LOGIN only under TLS or when
// allowed in clear text.
func (c *Customer) saslClient(offered string, secure bool) (sasl.Client, error) {
	has := make(map[string]bool)
	for _, m := range strings.Fields(offered) {
		has[m] = true
	}
	prefs := c.Mechanisms
	if prefs == nil {
		prefs = defaultMechanisms
	}
	clearOK := secure || c.AllowInsecureAuth
	inClear, noUser := false, false
	for _, m := range prefs {
		m = strings.ToUpper(m)
		if !has[m] {
			continue
		}
		if m == sasl.External {
			if secure && c.clientCert() {
				return externalClient{}, nil
			}
			continue
		}
		if c.Username == "" {
			noUser = true
			continue
		}
		switch m {
		case SCRAMSHA256, SCRAMSHA1:
			return saslmech.NewSCRAMClient(m, c.Username, c.Secret), nil
		case CRAMMD5:
			return saslmech.NewCRAMMD5Client(c.Username, c.Secret), nil
		case sasl.Plain, sasl.Login:
			if !clearOK {
				inClear = true
				continue
			}
			if m == sasl.Plain {
				return sasl.NewPlainClient("", c.Username, c.Secret), nil
			}
			return &loginClient{username: c.Username, password: c.Secret}, nil
		}
	}
	switch {
	case offered == "":
		return nil, fmt.Errorf("%w: the EHLO reply lists no AUTH", ErrNoAuthMechanism)
	case noUser:
		return nil, fmt.Errorf("%w: the provider offers %s; without a Username only EXTERNAL, over TLS with a client certificate, can be used",
			ErrNoAuthMechanism, offered)
	case inClear:
		return nil, fmt.Errorf("%w: the provider offers %s; PLAIN and LOGIN would send the secret in clear text: use TLS or set AllowInsecureAuth",
			ErrNoAuthMechanism, offered)
	}
	return nil, fmt.Errorf("%w: the provider offers %s", ErrNoAuthMechanism, offered)
}

// auth runs the AUTH exchange and returns the mechanism's name.
func (s *customerSession) auth(client sasl.Client, timeout time.Duration) (string, error) {
	mech, ir, err := client.Start()
	if err != nil {
		return "", &authError{"", err}
	}
	line, logged := "AUTH "+mech, "AUTH "+mech
	if ir != nil {
		line += " " + encodeSASL(ir)
		logged += " " + redacted
	}
	r, err := s.cmd(timeout, line, logged)
	for step := 0; ; step++ {
		if err != nil {
			return "", s.readErr("AUTH "+mech, err)
		}
		switch {
		case r.Code == 235:
			return mech, nil
		case r.Code == 334 && step < maxAuthSteps:
			chal, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(r.Text))
			if derr != nil {
				s.cancelAuth(timeout)
				return "", fmt.Errorf("%w: malformed AUTH %s challenge", ErrProtocol, mech)
			}
			resp, nerr := client.Next(chal)
			if nerr != nil {
				s.cancelAuth(timeout)
				return "", &authError{mech, nerr}
			}
			// An empty response is an empty line; "=" is only for an
			// initial response (RFC 4954 section 4). The assignment is to
			// the loop's r and err: a failed send or read ends the loop.
			r, err = s.cmd(timeout, base64.StdEncoding.EncodeToString(resp), redacted)
			continue
		case r.Code >= 400:
			s.quit()
			return "", &commandError{"AUTH " + mech + " refused", parseReplyText(r.Code, r.Text)}
		}
		s.quit()
		return "", fmt.Errorf("%w: unexpected reply to AUTH %s: %d %s", ErrProtocol, mech, r.Code, r.Text)
	}
}

// authError is a failure of the customer's own side of a SASL exchange,
// such as a SCRAM server signature that does not verify.
type authError struct {
	mech string
	err  error
}

func (e *authError) Error() string {
	return strings.TrimSuffix("odmr: AUTH "+e.mech, " ") + ": " + errText(e.err)
}

func (e *authError) Unwrap() error { return e.err }

func encodeSASL(b []byte) string {
	if len(b) == 0 {
		return "="
	}
	return base64.StdEncoding.EncodeToString(b)
}

// cancelAuth abandons a SASL exchange with "*" (RFC 4954 section 4).
func (s *customerSession) cancelAuth(timeout time.Duration) {
	if _, err := s.cmd(min(timeout, 10*time.Second), "*", redacted); err == nil {
		s.quit()
	}
}
