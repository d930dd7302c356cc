package odmr

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/emersion/go-sasl"
)

// CRAMMD5 is the name of the SASL mechanism of RFC 2195, which RFC 2645
// makes mandatory for ODMR.
const CRAMMD5 = "CRAM-MD5"

// CRAMMD5Lookup returns the shared secret of username for a CRAM-MD5
// server, or an error (ErrUnknownUser when there is no such user).
type CRAMMD5Lookup func(username string) ([]byte, error)

type cramMD5Server struct {
	challenge []byte
	lookup    CRAMMD5Lookup
	sent      bool
	username  string
}

// NewCRAMMD5Server returns a go-sasl server for CRAM-MD5. hostname goes
// into the challenge, which has the msg-id form "<random.time@hostname>"
// with 64 bits from crypto/rand. The response is checked with a
// constant-time comparison; an unknown user costs the same work as a wrong
// secret.
func NewCRAMMD5Server(hostname string, lookup CRAMMD5Lookup) sasl.Server {
	return &cramMD5Server{challenge: newChallenge(hostname), lookup: lookup}
}

func newChallenge(hostname string) []byte {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic("odmr: crypto/rand failed: " + err.Error())
	}
	if hostname == "" {
		hostname = "localhost"
	}
	return fmt.Appendf(nil, "<%d.%d@%s>", binary.BigEndian.Uint64(r[:]), time.Now().Unix(), hostname)
}

var errCRAMResponse = errors.New("odmr: malformed CRAM-MD5 response")

func (s *cramMD5Server) Next(response []byte) ([]byte, bool, error) {
	if !s.sent {
		s.sent = true
		if len(response) > 0 {
			// CRAM-MD5 has no initial response.
			return nil, false, sasl.ErrUnexpectedClientResponse
		}
		return s.challenge, false, nil
	}
	i := bytes.LastIndexByte(response, ' ')
	if i <= 0 || len(response)-i-1 != 2*md5.Size {
		return nil, false, errCRAMResponse
	}
	user, digest := string(response[:i]), response[i+1:]
	got := make([]byte, md5.Size)
	if _, err := hex.Decode(got, bytes.ToLower(digest)); err != nil {
		return nil, false, errCRAMResponse
	}
	s.username = user
	secret, err := s.lookup(user)
	known := err == nil
	if errors.Is(err, ErrUnknownUser) {
		secret = []byte("odmr-unknown-user-placeholder")
	} else if err != nil {
		return nil, false, err
	}
	want := cramDigest(secret, s.challenge)
	if !hmac.Equal(got, want) || !known {
		return nil, false, ErrAuthFailed
	}
	return nil, true, nil
}

func cramDigest(secret, challenge []byte) []byte {
	m := hmac.New(md5.New, secret)
	m.Write(challenge)
	return m.Sum(nil)
}

type cramMD5Client struct {
	username string
	secret   []byte
}

// NewCRAMMD5Client returns a go-sasl client for CRAM-MD5.
func NewCRAMMD5Client(username, secret string) sasl.Client {
	return &cramMD5Client{username: username, secret: []byte(secret)}
}

func (c *cramMD5Client) Start() (string, []byte, error) { return CRAMMD5, nil, nil }

func (c *cramMD5Client) Next(challenge []byte) ([]byte, error) {
	d := cramDigest(c.secret, challenge)
	out := make([]byte, 0, len(c.username)+1+2*md5.Size)
	out = append(out, c.username...)
	out = append(out, ' ')
	return hex.AppendEncode(out, d), nil
}

// loginServer is the LOGIN mechanism (draft-murchison-sasl-login), which
// go-sasl implements only as a client.
type loginServer struct {
	check    func(username, password string) error
	step     int
	username string
}

func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		s.step = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		s.username = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		if err := s.check(s.username, string(response)); err != nil {
			return nil, false, err
		}
		return nil, true, nil
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}

// equalSecret compares a password with a secret in constant time, whatever
// their lengths.
func equalSecret(password string, secret []byte) bool {
	a := sha256.Sum256([]byte(password))
	b := sha256.Sum256(secret)
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}
