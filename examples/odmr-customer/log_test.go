package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLogFormatFlag(t *testing.T) {
	base := []string{"-provider", "p.test", "-user", "u", "-maildir", t.TempDir()}
	c, err := parseFlags(base, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "text", c.logFormat)
	c, err = parseFlags(append(base, "-log-format", "json"), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "json", c.logFormat)
	_, err = parseFlags(append(base, "-log-format", "xml"), io.Discard)
	assert.ErrorContains(t, err, "-log-format")
}
