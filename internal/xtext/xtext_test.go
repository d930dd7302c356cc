package xtext

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestEncode(t *testing.T) {
	assert.Equal(t, "QQ314159+20a+2Bb+3Dc", Encode("QQ314159 a+b=c"))
	assert.Equal(t, "+09+7F+C3+A9", Encode("\t\x7fé"))
}

func TestUTF8Addr(t *testing.T) {
	assert.Equal(t, `jos\x{E9}@example.org`, UTF8Addr("josé@example.org", false))
	assert.Equal(t, `josé\x{2B}\x{3D}\x{5C}@example.org`, UTF8Addr(`josé+=\@example.org`, true))
	assert.Equal(t, `a\x{09}b\x{7F}@x`, UTF8Addr("a\tb\x7f@x", true), "two hex digits at least; DEL escaped")
}
