package spool

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

// TestBodyTypeComesFromContent: go-smtp's client declares BODY=8BITMIME
// for every message; a 7-bit one must still reach customers without
// 8BITMIME.
func TestBodyTypeComesFromContent(t *testing.T) {
	f := newFixture(t)
	for _, tt := range []struct {
		declared odmr.BodyType
		body     string
		want     odmr.BodyType
	}{
		{odmr.Body8BitMIME, "Subject: x\r\n\r\nascii\r\n", ""},
		{"", "Subject: x\r\n\r\ncaf\xc3\xa9\r\n", odmr.Body8BitMIME},
		{odmr.BodyBinaryMIME, "x\r\n", odmr.BodyBinaryMIME},
	} {
		id, err := f.s.Enqueue(context.Background(), odmr.Envelope{From: "s@x.test", To: []string{"u@example.org"}, Body: tt.declared}, strings.NewReader(tt.body))
		require.NoError(t, err)
		info, err := f.s.Stat(id)
		require.NoError(t, err)
		assert.Equal(t, tt.want, info.Envelope.Body, "declared %q", tt.declared)
	}
}
