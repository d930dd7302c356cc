package odmr

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestEqualSecret(t *testing.T) {
	assert.True(t, equalSecret("abc", []byte("abc")))
	assert.False(t, equalSecret("abc", []byte("abcd")))
	assert.False(t, equalSecret("", []byte("x")))
}
