package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCustomerDemo(t *testing.T) {
	var out bytes.Buffer
	dir := filepath.Join(t.TempDir(), "Maildir")
	require.NoError(t, run(&out, dir, slog.New(slog.DiscardHandler)))
	s := out.String()
	for _, want := range []string{
		"P: 250 ATRN",
		"C: ATRN example.org,example.com",
		"C: [authentication response hidden]",
		"P: 235 ",
		"C: 220 customer.example.org ESMTP Service Ready",
		"P: BDAT 183 LAST",
		"P:   .A line that starts with a dot arrives as it was sent.",
		"P: QUIT",
		"      Received: from provider.example.net ([127.0.0.1])",
		"C: 221 ",
		"Result: 3 messages for 4 recipients",
		"Still queued at the provider: 1 message (for bob@example.net",
	} {
		assert.Contains(t, s, want)
	}
	assert.NotContains(t, s, "tanstaaftanstaaf", "the secret is never printed")
	entries, err := os.ReadDir(filepath.Join(dir, "new"))
	require.NoError(t, err)
	assert.Len(t, entries, 3)
}
