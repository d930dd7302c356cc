package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/smtptest"
)

func TestIntakeKeepsDSNRequests(t *testing.T) {
	accounts := odmr.Accounts{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	got := make(chan odmr.Envelope, 1)
	srv := smtp.NewServer(&intake{accounts: accounts, log: slog.New(slog.DiscardHandler),
		enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
			_, err := io.Copy(io.Discard, body)
			got <- env
			return err
		}})
	srv.Domain = "prov.test"
	srv.EnableDSN = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(l)
	defer smtptest.Shutdown(t, srv)

	c, err := smtp.Dial(l.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.test"))
	require.NoError(t, c.Mail("s@x.test", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "id 1+2"}))
	require.NoError(t, c.Rcpt("a@example.org", &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "old@example.org",
	}))
	require.NoError(t, c.Rcpt("b@example.org", nil))
	w, err := c.Data()
	require.NoError(t, err)
	io.WriteString(w, "Subject: x\r\n\r\nx\r\n")
	require.NoError(t, w.Close())
	c.Quit()

	env := <-got
	assert.Equal(t, &odmr.DSN{
		Return: odmr.ReturnHeaders, EnvID: "id 1+2",
		Recipients: map[string]odmr.RecipientDSN{"a@example.org": {
			Notify: []odmr.DSNNotify{odmr.NotifyFailure, odmr.NotifyDelay}, ORcptType: "RFC822", ORcpt: "old@example.org",
		}},
	}, env.DSN)
	assert.Equal(t, []string{"a@example.org", "b@example.org"}, env.To)
}
