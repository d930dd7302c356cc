package smtpsink

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"

	"github.com/go-odmr/odmr"
)

// A DSN value that cannot be sent is left out of go-smtp's options, not
// sent malformed: go-smtp's client fails on an unknown RET, and RFC 3461
// caps ENVID and ORCPT (sections 4.2 and 4.4).
func TestDSNValuesThatCannotBeSentAreLeftOut(t *testing.T) {
	env := odmr.Envelope{DSN: &odmr.DSN{Return: "full", Recipients: map[string]odmr.RecipientDSN{
		"slash@x": {ORcptType: "utf-8", ORcpt: `a\b@x`},
	}}}
	assert.Equal(t, smtp.DSNReturnFull, dsnMailOptions(&smtp.MailOptions{}, env).Return)
	env.DSN.Return = "sometimes"
	assert.Empty(t, dsnMailOptions(&smtp.MailOptions{}, env).Return)
	assert.Nil(t, dsnRcptOptions(env, "slash@x").Notify)
	assert.Empty(t, dsnRcptOptions(env, "slash@x").OriginalRecipient)

	env.DSN.EnvID = strings.Repeat("e", 101)
	env.DSN.Recipients["long@x"] = odmr.RecipientDSN{ORcptType: "rfc822", ORcpt: strings.Repeat("o", 500) + "@x"}
	assert.Empty(t, dsnMailOptions(&smtp.MailOptions{}, env).EnvelopeID)
	assert.Empty(t, dsnRcptOptions(env, "long@x").OriginalRecipient)
}
