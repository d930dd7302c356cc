package odmr

import (
	"crypto/sha256"
	"crypto/subtle"

	"github.com/emersion/go-sasl"
)

// CRAMMD5 is the name of the SASL mechanism of RFC 2195, which RFC 2645
// makes mandatory for ODMR.
const CRAMMD5 = "CRAM-MD5"

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
