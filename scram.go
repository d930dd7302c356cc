package odmr

import (
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/xdg-go/scram"

	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/saslmech"
)

// The SCRAM mechanisms (RFC 5802, RFC 7677).
const (
	SCRAMSHA256 = "SCRAM-SHA-256"
	SCRAMSHA1   = "SCRAM-SHA-1"
)

// ErrNoSecret is returned by an [Authenticator] that keeps no shared
// secret for a user, only SCRAM credentials: CRAM-MD5 cannot work for that
// user, and PLAIN and LOGIN are checked against the SCRAM credentials.
var ErrNoSecret = errors.New("odmr: no shared secret stored for this user")

// SCRAMCredentials are what a provider stores to check SCRAM logins
// without keeping the secret: the salt, the PBKDF2 iteration count and the
// derived StoredKey and ServerKey of RFC 5802.
type SCRAMCredentials struct {
	Mechanism  string // SCRAMSHA256 or SCRAMSHA1
	Salt       []byte
	Iterations int
	StoredKey  []byte
	ServerKey  []byte
}

// NewSCRAMCredentials derives credentials for password with a fresh random
// salt. iterations 0 means 4096 (RFC 7677 asks for at least 4096).
func NewSCRAMCredentials(mechanism, username, password string, iterations int) (SCRAMCredentials, error) {
	salt := make([]byte, 16)
	rand.Read(salt)
	return deriveSCRAM(mechanism, username, password, salt, orDefault(iterations, defaults.SCRAMIterations))
}

func deriveSCRAM(mech, username, password string, salt []byte, iters int) (SCRAMCredentials, error) {
	h, err := saslmech.SCRAMHash(mech)
	if err != nil {
		return SCRAMCredentials{}, err
	}
	c, err := h.NewClient(username, password, "")
	if err != nil {
		return SCRAMCredentials{}, fmt.Errorf("odmr: %w", err)
	}
	sc, err := c.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: iters})
	if err != nil {
		return SCRAMCredentials{}, fmt.Errorf("odmr: %w", err)
	}
	return SCRAMCredentials{Mechanism: mech, Salt: salt, Iterations: iters, StoredKey: sc.StoredKey, ServerKey: sc.ServerKey}, nil
}

// String formats the credentials as MECHANISM$ITERATIONS:SALT$STOREDKEY:SERVERKEY
// with standard base64, the form PostgreSQL and Dovecot use and the
// accounts file accepts in place of a secret.
func (c SCRAMCredentials) String() string {
	b := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s$%d:%s$%s:%s", c.Mechanism, c.Iterations, b(c.Salt), b(c.StoredKey), b(c.ServerKey))
}

// ParseSCRAMCredentials parses the form String writes.
func ParseSCRAMCredentials(s string) (SCRAMCredentials, error) {
	bad := func(why string) (SCRAMCredentials, error) {
		return SCRAMCredentials{}, fmt.Errorf("odmr: malformed SCRAM credentials: %s", why)
	}
	parts := strings.Split(s, "$")
	if len(parts) != 3 {
		return bad("want MECHANISM$ITERATIONS:SALT$STOREDKEY:SERVERKEY")
	}
	var c SCRAMCredentials
	c.Mechanism = strings.ToUpper(parts[0])
	h, err := saslmech.SCRAMHash(c.Mechanism)
	if err != nil {
		return bad("unknown mechanism " + parts[0])
	}
	iters, salt, ok := strings.Cut(parts[1], ":")
	if !ok {
		return bad("no salt")
	}
	if c.Iterations, err = strconv.Atoi(iters); err != nil || c.Iterations < 1 {
		return bad("bad iteration count")
	}
	stored, server, ok := strings.Cut(parts[2], ":")
	if !ok {
		return bad("no server key")
	}
	dec := base64.StdEncoding.DecodeString
	if c.Salt, err = dec(salt); err != nil || len(c.Salt) == 0 {
		return bad("bad salt")
	}
	if c.StoredKey, err = dec(stored); err != nil || len(c.StoredKey) != h().Size() {
		return bad("bad stored key")
	}
	if c.ServerKey, err = dec(server); err != nil || len(c.ServerKey) != h().Size() {
		return bad("bad server key")
	}
	return c, nil
}

// checkSCRAMPassword verifies a password against stored credentials.
func checkSCRAMPassword(c SCRAMCredentials, username, password string) bool {
	d, err := deriveSCRAM(c.Mechanism, username, password, c.Salt, c.Iterations)
	return err == nil && hmac.Equal(d.StoredKey, c.StoredKey)
}

// scramServer bridges xdg-go/scram to go-sasl's Server. In SMTP the
// server's final message travels in a 334 reply, which the client answers
// with an empty line (RFC 4954 section 4).
type scramServer struct {
	conv   *scram.ServerConversation
	step   int
	user   *string
	lookup func(username string) (SCRAMCredentials, error)
}

func newSCRAMServer(mech string, user *string, lookup func(string) (SCRAMCredentials, error)) (sasl.Server, error) {
	h, err := saslmech.SCRAMHash(mech)
	if err != nil {
		return nil, err
	}
	s := &scramServer{user: user, lookup: lookup}
	srv, err := h.NewServer(func(u string) (scram.StoredCredentials, error) {
		*user = u
		c, err := lookup(u)
		if err != nil {
			return scram.StoredCredentials{}, err
		}
		return scram.StoredCredentials{
			KeyFactors: scram.KeyFactors{Salt: string(c.Salt), Iters: c.Iterations},
			StoredKey:  c.StoredKey, ServerKey: c.ServerKey,
		}, nil
	})
	if err != nil {
		return nil, err
	}
	s.conv = srv.NewConversation()
	return s, nil
}

func (s *scramServer) Next(resp []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		s.step = 1
		if resp == nil {
			return []byte{}, false, nil // ask for the client-first message
		}
		fallthrough
	case 1:
		s.step = 2
		out, err := s.conv.Step(string(resp))
		if err != nil {
			var temp errTempAuth
			if errors.As(err, &temp) {
				return nil, false, temp
			}
			if e := (*Error)(nil); errors.As(err, &e) && e.Code != ErrAuthFailed.Code {
				return nil, false, e // a refusal by the limiter
			}
			return nil, false, fmt.Errorf("%w: %v", ErrAuthFailed, err)
		}
		if authz := s.conv.AuthzID(); authz != "" && authz != s.conv.Username() {
			return nil, false, ErrAuthFailed
		}
		return []byte(out), false, nil
	case 2:
		s.step = 3
		out, err := s.conv.Step(string(resp))
		if err != nil || !s.conv.Valid() {
			return nil, false, ErrAuthFailed
		}
		return []byte(out), false, nil
	case 3:
		s.step = 4
		if len(resp) != 0 {
			return nil, false, sasl.ErrUnexpectedClientResponse
		}
		return nil, true, nil
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}
