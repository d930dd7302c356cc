package saslmech

import (
	"encoding/base64"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// RFC 2195 section 2's example.
const (
	rfc2195Challenge = "<1896.697170952@postoffice.reston.mci.net>"
	rfc2195Response  = "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"
)

func TestCRAMMD5ClientRFC2195Vector(t *testing.T) {
	c := NewCRAMMD5Client("tim", "tanstaaftanstaaf")
	mech, ir, err := c.Start()
	require.NoError(t, err)
	assert.Equal(t, "CRAM-MD5", mech)
	assert.Nil(t, ir)
	resp, err := c.Next([]byte(rfc2195Challenge))
	require.NoError(t, err)
	assert.Equal(t, rfc2195Response, base64.StdEncoding.EncodeToString(resp))
}

func TestCRAMMD5ServerRFC2195Vector(t *testing.T) {
	errFailed, errUnknown := errors.New("failed"), errors.New("unknown user")
	lookup := func(u string) ([]byte, error) {
		if u == "tim" {
			return []byte("tanstaaftanstaaf"), nil
		}
		return nil, errUnknown
	}
	resp, _ := base64.StdEncoding.DecodeString(rfc2195Response)
	for _, tt := range []struct {
		name string
		resp []byte
		err  error
	}{
		{"valid", resp, nil},
		{"upper-case hex is accepted", []byte("tim B913A602C7EDA7A495B4E6E7334D3890"), nil},
		{"wrong digest", []byte("tim b913a602c7eda7a495b4e6e7334d3891"), errFailed},
		{"unknown user", []byte("tom b913a602c7eda7a495b4e6e7334d3890"), errFailed},
		{"no space", []byte("timb913a602c7eda7a495b4e6e7334d3890"), ErrCRAMResponse},
		{"short digest", []byte("tim b913"), ErrCRAMResponse},
		{"non-hex digest", []byte("tim zz13a602c7eda7a495b4e6e7334d3890"), ErrCRAMResponse},
		{"empty", []byte{}, ErrCRAMResponse},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := NewCRAMMD5Server("postoffice.reston.mci.net", lookup, errUnknown, errFailed)
			s.Challenge = []byte(rfc2195Challenge)
			chal, done, err := s.Next(nil)
			require.NoError(t, err)
			require.False(t, done)
			require.Equal(t, rfc2195Challenge, string(chal))
			_, done, err = s.Next(tt.resp)
			if tt.err == nil {
				assert.NoError(t, err)
				assert.True(t, done)
			} else {
				assert.True(t, errors.Is(err, tt.err), "got %v", err)
				assert.False(t, done)
			}
		})
	}
}

func TestCRAMMD5ChallengeIsFreshMsgID(t *testing.T) {
	a := NewChallenge("example.net")
	b := NewChallenge("example.net")
	assert.NotEqual(t, a, b)
	assert.Regexp(t, `^<[0-9]+\.[0-9]+@example\.net>$`, string(a))
}
