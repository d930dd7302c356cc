package smtpsink_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/internal/testcert"
	"github.com/go-odmr/odmr/smtpsink"
)

// deliverBoth sends one message with Deliver (go-smtp's client) and one
// through a session of Begin (the sink's own client).
func deliverBoth(t *testing.T, s *smtpsink.Sink) [2]error {
	t.Helper()
	ctx := context.Background()
	env := odmr.Envelope{From: "a@example.org", To: []string{"b@example.net"}}
	var errs [2]error
	errs[0] = s.Deliver(ctx, env, strings.NewReader("Subject: deliver\r\n\r\nx\r\n"))
	errs[1] = func() error {
		sess, err := s.Begin(ctx)
		if err != nil {
			return err
		}
		defer sess.Close()
		if err := sess.Mail(ctx, env); err != nil {
			return err
		}
		if err := sess.Rcpt(ctx, env, env.To[0]); err != nil {
			return err
		}
		return sess.Data(ctx, env, strings.NewReader("Subject: session\r\n\r\nx\r\n"))
	}()
	return errs
}

func TestSinkTLSAndAuth(t *testing.T) {
	cert, pool := testcert.SelfSigned(t, "127.0.0.1")
	plain := func() sasl.Client { return sasl.NewPlainClient("", "u", "secret") }
	for _, tc := range []struct {
		name                         string
		startTLS, implicit, insecure bool // the server's
		sink                         smtpsink.Sink
		wantTLS                      bool
		wantUser                     string
		wantErr                      string // "" when the message goes through
		wantPermanent                bool
	}{
		// STARTTLS, then AUTH over TLS: what a smarthost on 587 wants.
		{name: "starttls+auth", startTLS: true,
			sink:    smtpsink.Sink{TLS: &tls.Config{RootCAs: pool}, Auth: plain()},
			wantTLS: true, wantUser: "u"},
		// TLS from the first byte (port 465); ServerName comes from Addr.
		{name: "implicit", implicit: true,
			sink:    smtpsink.Sink{TLS: &tls.Config{RootCAs: pool}, ImplicitTLS: true, Auth: plain()},
			wantTLS: true, wantUser: "u"},
		// TLS asked for, not offered: nothing goes in clear, and it is
		// not the message's fault, so it is tried again later.
		{name: "no starttls",
			sink:    smtpsink.Sink{TLS: &tls.Config{RootCAs: pool}},
			wantErr: "STARTTLS"},
		// A certificate that is not trusted stops the delivery.
		{name: "untrusted", startTLS: true,
			sink:    smtpsink.Sink{TLS: &tls.Config{}},
			wantErr: "certificate"},
		// No password in clear without consent...
		{name: "auth in clear refused", insecure: true,
			sink:    smtpsink.Sink{Auth: plain()},
			wantErr: "without TLS"},
		// ...and with it.
		{name: "auth in clear allowed", insecure: true,
			sink:     smtpsink.Sink{Auth: plain(), AllowInsecureAuth: true},
			wantUser: "u"},
		// A refused AUTH is the server's reply, permanent for a 535.
		{name: "bad password", startTLS: true,
			sink:          smtpsink.Sink{TLS: &tls.Config{RootCAs: pool}, Auth: sasl.NewPlainClient("", "u", "wrong")},
			wantErr:       "bad credentials",
			wantPermanent: true},
		// The zero values: neither TLS nor AUTH, as before.
		{name: "zero", startTLS: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The smarthost takes any user with the password "secret".
			h := &smtptest.Smarthost{ImplicitTLS: tc.implicit, AllowInsecureAuth: tc.insecure}
			if tc.startTLS || tc.implicit {
				h.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
			}
			h.Start(t)
			s := tc.sink
			s.Addr, s.LocalName, s.Timeout = h.Addr, "mx.example.org", 10*time.Second
			for i, err := range deliverBoth(t, &s) {
				if tc.wantErr == "" {
					assert.NoError(t, err, "path %d", i)
					continue
				}
				assert.ErrorContains(t, err, tc.wantErr, "path %d", i)
				assert.Equal(t, tc.wantPermanent, odmr.Permanent(err), "path %d: %v", i, err)
				var e *odmr.Error
				assert.Equal(t, tc.wantPermanent, errors.As(err, &e), "a reply is an *odmr.Error, path %d: %v", i, err)
			}
			got := h.Messages()
			if tc.wantErr != "" {
				assert.Empty(t, got)
				return
			}
			require.Len(t, got, 2)
			for _, m := range got {
				assert.Equal(t, tc.wantTLS, m.TLS)
				assert.Equal(t, tc.wantUser, m.User)
				assert.Equal(t, "mx.example.org", m.Hostname, "EHLO after TLS")
			}
		})
	}
}

// LMTP has no STARTTLS in the sink: it says so rather than sending in
// clear.
func TestSinkLMTPStartTLSRefused(t *testing.T) {
	s := smtpsink.NewLMTP("127.0.0.1:1")
	s.TLS = &tls.Config{}
	s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c1, c2 := net.Pipe()
		go func() { // a server that greets, answers LHLO, then waits
			c2.Write([]byte("220 lmtp.test\r\n"))
			buf := make([]byte, 512)
			c2.Read(buf)
			c2.Write([]byte("250-lmtp.test\r\n250 STARTTLS\r\n"))
			io.Copy(io.Discard, c2)
		}()
		return c1, nil
	}
	env := odmr.Envelope{From: "a@example.org", To: []string{"b@example.net"}}
	err := s.Deliver(context.Background(), env, strings.NewReader("x\r\n"))
	assert.ErrorContains(t, err, "LMTP")
	_, err = s.Begin(context.Background())
	assert.ErrorContains(t, err, "LMTP")
}

// A reply sent together with the reply to STARTTLS would be read as if it
// had come over TLS (the STARTTLS command injection of CVE-2011-0411, on
// the client's side): the session's client refuses it.
func TestSinkSessionRefusesDataBeforeTLS(t *testing.T) {
	s := smtpsink.New("127.0.0.1:1")
	s.TLS = &tls.Config{ServerName: "mail.test"}
	done := make(chan struct{})
	s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c1, c2 := net.Pipe()
		go func() {
			defer close(done)
			defer c2.Close()
			br := bufio.NewReader(c2)
			c2.Write([]byte("220 mail.test\r\n"))
			br.ReadString('\n') // EHLO
			c2.Write([]byte("250-mail.test\r\n250 STARTTLS\r\n"))
			br.ReadString('\n') // STARTTLS
			c2.Write([]byte("220 go ahead\r\n250 injected\r\n"))
			io.Copy(io.Discard, br)
		}()
		return c1, nil
	}
	_, err := s.Begin(context.Background())
	assert.ErrorContains(t, err, "after the reply to STARTTLS")
	<-done
}
