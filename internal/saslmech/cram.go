// Package saslmech holds the SASL mechanisms go-sasl lacks that both
// roles need: CRAM-MD5 (RFC 2195), which RFC 2645 makes mandatory for
// ODMR, as server and client, and the SCRAM client (RFC 5802, RFC 7677)
// over xdg-go/scram.
package saslmech

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/emersion/go-sasl"
)

// CRAMMD5 is the name of the SASL mechanism of RFC 2195.
const CRAMMD5 = "CRAM-MD5"

// ErrCRAMResponse is the error for a response that is not "user digest".
var ErrCRAMResponse = errors.New("odmr: malformed CRAM-MD5 response")

// CRAMMD5Server is a go-sasl server for CRAM-MD5.
type CRAMMD5Server struct {
	// Challenge is sent first; NewCRAMMD5Server makes a fresh one.
	Challenge []byte

	lookup   func(username string) ([]byte, error)
	unknown  error
	failed   error
	sent     bool
	username string
}

// NewCRAMMD5Server returns a CRAM-MD5 server. hostname goes into the
// challenge, which has the msg-id form "<random.time@hostname>" with 64
// bits from crypto/rand. lookup returns the shared secret of a user, or
// an error matching unknown when there is no such user. The response is
// checked with a constant-time comparison; an unknown user costs the same
// work as a wrong secret, and both are answered with failed.
func NewCRAMMD5Server(hostname string, lookup func(username string) ([]byte, error), unknown, failed error) *CRAMMD5Server {
	return &CRAMMD5Server{Challenge: NewChallenge(hostname), lookup: lookup, unknown: unknown, failed: failed}
}

// NewChallenge returns a fresh CRAM-MD5 challenge for hostname.
func NewChallenge(hostname string) []byte {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic("odmr: crypto/rand failed: " + err.Error())
	}
	if hostname == "" {
		hostname = "localhost"
	}
	return fmt.Appendf(nil, "<%d.%d@%s>", binary.BigEndian.Uint64(r[:]), time.Now().Unix(), hostname)
}

// Next implements sasl.Server.
func (s *CRAMMD5Server) Next(response []byte) ([]byte, bool, error) {
	if !s.sent {
		s.sent = true
		if len(response) > 0 {
			// CRAM-MD5 has no initial response.
			return nil, false, sasl.ErrUnexpectedClientResponse
		}
		return s.Challenge, false, nil
	}
	i := bytes.LastIndexByte(response, ' ')
	if i <= 0 || len(response)-i-1 != 2*md5.Size {
		return nil, false, ErrCRAMResponse
	}
	user, digest := string(response[:i]), response[i+1:]
	got := make([]byte, md5.Size)
	if _, err := hex.Decode(got, bytes.ToLower(digest)); err != nil {
		return nil, false, ErrCRAMResponse
	}
	s.username = user
	secret, err := s.lookup(user)
	known := err == nil
	if errors.Is(err, s.unknown) {
		secret = []byte("odmr-unknown-user-placeholder")
	} else if err != nil {
		return nil, false, err
	}
	want := cramDigest(secret, s.Challenge)
	if !hmac.Equal(got, want) || !known {
		return nil, false, s.failed
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
