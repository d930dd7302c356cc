package odmr_test

import (
	"fmt"
	"net/textproto"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"

	"github.com/go-odmr/odmr"
)

// AsError finds the reply in the errors a sink may return: its own, a
// go-smtp client's (with or without an enhanced code) and net/textproto's,
// wrapped or not.
func TestAsError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want *odmr.Error
	}{
		{odmr.ErrNoMail, odmr.ErrNoMail},
		{fmt.Errorf("sink: %w", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Mailbox full"}),
			&odmr.Error{Code: 452, EnhancedCode: odmr.EnhancedCode{4, 2, 2}, Message: "Mailbox full"}},
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.NoEnhancedCode, Message: "No such user"},
			&odmr.Error{Code: 550, Message: "No such user"}},
		{&textproto.Error{Code: 554, Msg: "5.6.0 Bad content"},
			&odmr.Error{Code: 554, EnhancedCode: odmr.EnhancedCode{5, 6, 0}, Message: "Bad content"}},
		{fmt.Errorf("plain"), nil},
		{nil, nil},
	} {
		assert.Equal(t, tc.want, odmr.AsError(tc.err), "%v", tc.err)
	}
	assert.True(t, odmr.Permanent(&smtp.SMTPError{Code: 550}))
	assert.False(t, odmr.Permanent(&smtp.SMTPError{Code: 451}))
}
