package odmr

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseATRN(t *testing.T) {
	for _, tt := range []struct {
		arg  string
		want []string
	}{
		// A bare ATRN asks for every domain of the identity.
		{"", nil},
		{"example.org", []string{"example.org"}},
		// fetchmail sends its own single-label host name without fetchdomains.
		{"vm", []string{"vm"}},
		{"example.org,example.com", []string{"example.org", "example.com"}},
		// Spaces after commas, as some clients write lists.
		{"example.org, example.com", []string{"example.org", "example.com"}},
		{"EXAMPLE.Org", []string{"example.org"}},
		// A trailing dot names the same domain.
		{"example.org.", []string{"example.org"}},
		{"example.org,EXAMPLE.ORG.", []string{"example.org"}},
		{"a-b.example.org", []string{"a-b.example.org"}},
		{"123.example", []string{"123.example"}},
	} {
		got, err := ParseATRN(tt.arg)
		require.NoError(t, err, tt.arg)
		assert.Equal(t, tt.want, got, tt.arg)
	}
}

func TestParseATRNRejects(t *testing.T) {
	for _, arg := range []string{
		"example.org,",        // empty domain at the end
		",example.org",        // empty domain at the start
		"example..org",        // empty label
		".example.org",        // leading dot
		"-a.example.org",      // hyphen at the start of a label
		"a-.example.org",      // hyphen at the end of a label
		"exa_mple.org",        // underscore
		"example.org\r\nQUIT", // smuggled command
		"example.org\x00",     // NUL
		"exa mple.org",        // space inside a name
		"ex\u00e4mple.org",    // not ASCII: IDNs go as A-labels
		"user@example.org",    // an address, not a domain
		"[192.0.2.1]",         // address literal
		strings.Repeat("a", 64) + ".org",
		strings.Repeat("a.", 127) + "org",
		strings.Repeat("a.org,", 300) + "a.org",
	} {
		_, err := ParseATRN(arg)
		assert.Error(t, err, "%q", arg)
	}
}

func TestFormatATRN(t *testing.T) {
	assert.Equal(t, "ATRN", FormatATRN(nil))
	assert.Equal(t, "ATRN example.org,example.com", FormatATRN([]string{"example.org", "example.com"}))
}

func TestRecipientDomain(t *testing.T) {
	assert.Equal(t, "example.org", RecipientDomain("User@Example.ORG."))
	assert.Equal(t, "example.org", RecipientDomain(`"odd@local"@example.org`))
	assert.Equal(t, "", RecipientDomain("postmaster"))
}

func TestRecipientDomainIDN(t *testing.T) {
	for _, tt := range []struct{ addr, want string }{
		{"x@bücher.example", "xn--bcher-kva.example"},        // U-labels become A-labels
		{"x@BÜCHER.example.", "xn--bcher-kva.example"},       // case and the root's dot
		{"x@XN--BCHER-KVA.example", "xn--bcher-kva.example"}, // A-labels only lower-cased
		{"x@Example.ORG", "example.org"},
		{"x@\xff.example", strings.ToLower("\xff.example")}, // not UTF-8: not made an A-label
		{"nodomain", ""},
	} {
		assert.Equal(t, tt.want, RecipientDomain(tt.addr), tt.addr)
	}
}
