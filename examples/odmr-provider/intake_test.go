package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// TestIntakeFullDiskIs452 checks the reply to a message the queue cannot
// store for want of space: 452 4.3.1 (RFC 5321, RFC 3463), not the 451
// 4.3.0 of other local errors, for both the disk full and the quota
// exceeded errors of the file system.
func TestIntakeFullDiskIs452(t *testing.T) {
	accounts := odmr.Accounts{"alice": {Name: "alice", Secret: "s", Domains: []string{"example.org"}}}
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EIO} {
		t.Run(errno.Error(), func(t *testing.T) {
			srv := smtp.NewServer(&intake{accounts: accounts, log: slog.New(slog.DiscardHandler),
				enqueue: func(ctx context.Context, env odmr.Envelope, body io.Reader) error {
					io.Copy(io.Discard, body)
					// As the spool returns it: wrapped, from a write.
					return fmt.Errorf("spool: %w", &os.PathError{Op: "write", Path: filepath.Join("tmp", "x.eml"), Err: errno})
				}})
			srv.Domain = "prov.test"
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			go srv.Serve(l)
			defer srv.Close()

			c, err := smtp.Dial(l.Addr().String())
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.Mail("s@x.test", nil))
			require.NoError(t, c.Rcpt("a@example.org", nil))
			w, err := c.Data()
			require.NoError(t, err)
			io.WriteString(w, "Subject: x\r\n\r\nx\r\n")
			err = w.Close()
			var se *smtp.SMTPError
			require.ErrorAs(t, err, &se)
			if errno == syscall.EIO {
				assert.Equal(t, 451, se.Code)
				assert.Equal(t, smtp.EnhancedCode{4, 3, 0}, se.EnhancedCode)
				return
			}
			assert.Equal(t, 452, se.Code)
			assert.Equal(t, smtp.EnhancedCode{4, 3, 1}, se.EnhancedCode)
			assert.False(t, strings.Contains(se.Message, "tmp"), "no file names on the wire: %q", se.Message)
		})
	}
}
