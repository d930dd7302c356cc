package odmr

import (
	"bufio"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/dsnparam"
	"github.com/go-odmr/odmr/internal/smtpserver"
)

// dsnEcho is a go-smtp backend with DSN on that keeps the DSN options of
// the last transaction.
type dsnEcho struct {
	mu   sync.Mutex
	mail *smtp.MailOptions
	rcpt *smtp.RcptOptions
}

func (b *dsnEcho) NewSession(*smtp.Conn) (smtp.Session, error) { return dsnEchoSession{b}, nil }

type dsnEchoSession struct{ b *dsnEcho }

func (s dsnEchoSession) Mail(_ string, o *smtp.MailOptions) error {
	s.b.mu.Lock()
	s.b.mail = o
	s.b.mu.Unlock()
	return nil
}

func (s dsnEchoSession) Rcpt(_ string, o *smtp.RcptOptions) error {
	s.b.mu.Lock()
	s.b.rcpt = o
	s.b.mu.Unlock()
	return nil
}

func (dsnEchoSession) Data(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err }
func (dsnEchoSession) Reset()                 {}
func (dsnEchoSession) Logout() error          { return nil }

// FuzzDSNParams checks the DSN parameters the pipelined path writes
// against go-smtp's server: whatever the ENVID and ORCPT, the parameters
// are one line, the server accepts them, and decodes them to the values
// sent; a value that cannot be sent is left out, never garbled.
func FuzzDSNParams(f *testing.F) {
	f.Add("QQ314159", "RFC822", "old@example.org", byte(3), false)
	f.Add("a+b=c d", "UTF-8", "josé@example.org", byte(1), true)
	f.Add("", "utf-8", "a\tb\\c@x", byte(8), false)
	f.Add("\x7f\x00", "rfc822", "x+y=z@\x01", byte(0), true)
	f.Fuzz(func(t *testing.T, envid, otype, orcpt string, notify byte, utf8 bool) {
		rcpt := RecipientDSN{ORcptType: otype, ORcpt: orcpt}
		for i, n := range []DSNNotify{NotifySuccess, NotifyFailure, NotifyDelay, NotifyNever} {
			if notify&(1<<i) != 0 {
				rcpt.Notify = append(rcpt.Notify, n)
			}
		}
		env := Envelope{DSN: &DSN{Return: ReturnHeaders, EnvID: envid, Recipients: map[string]RecipientDSN{"u@example.org": rcpt}}}
		mail, rc := dsnMailParams(env), dsnRcptParams(env, "u@example.org", utf8)
		if strings.ContainsAny(mail+rc, "\r\n") {
			t.Fatalf("parameters break the line: %q %q", mail, rc)
		}
		srv, b := dsnServer(t)
		c, err := net.Dial("tcp", srv)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tp := textproto.NewConn(c)
		tp.R = bufio.NewReaderSize(c, 4096)
		tp.ReadResponse(220)
		tp.PrintfLine("EHLO fuzz.test")
		tp.ReadResponse(250)
		smtputf8 := ""
		if utf8 {
			smtputf8 = " SMTPUTF8"
		}
		tp.PrintfLine("MAIL FROM:<s@x.test>%s%s", smtputf8, mail)
		if code, msg, _ := tp.ReadResponse(250); code != 250 {
			t.Fatalf("MAIL with %q: %d %s", mail, code, msg)
		}
		tp.PrintfLine("RCPT TO:<u@example.org>%s", rc)
		if code, msg, _ := tp.ReadResponse(250); code != 250 {
			t.Fatalf("RCPT with %q: %d %s", rc, code, msg)
		}
		tp.PrintfLine("QUIT")
		tp.ReadResponse(221)
		b.mu.Lock()
		defer b.mu.Unlock()
		if strings.Contains(mail, "ENVID=") && b.mail.EnvelopeID != envid {
			t.Fatalf("ENVID %q arrived as %q (sent %q)", envid, b.mail.EnvelopeID, mail)
		}
		if strings.Contains(rc, "ORCPT=") && b.rcpt.OriginalRecipient != orcpt {
			t.Fatalf("ORCPT %q arrived as %q (sent %q)", orcpt, b.rcpt.OriginalRecipient, rc)
		}
		if dsnparam.ValidNotify(rcpt.Notify) != strings.Contains(rc, "NOTIFY=") || (dsnparam.ValidNotify(rcpt.Notify) && len(b.rcpt.Notify) != len(rcpt.Notify)) {
			t.Fatalf("NOTIFY %v sent as %q arrived as %v", rcpt.Notify, rc, b.rcpt.Notify)
		}
	})
}

var (
	dsnSrvOnce sync.Once
	dsnSrvAddr string
	dsnSrvB    = &dsnEcho{}
)

// dsnServer starts, once per process, a go-smtp server with DSN and
// SMTPUTF8 on.
func dsnServer(t *testing.T) (string, *dsnEcho) {
	dsnSrvOnce.Do(func() {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := smtp.NewServer(dsnSrvB)
		srv.Domain = "dsn.test"
		srv.EnableDSN, srv.EnableSMTPUTF8 = true, true
		srv.ErrorLog = smtpserver.ErrorLog(loggerOr(nil))
		go srv.Serve(l)
		dsnSrvAddr = l.Addr().String()
	})
	return dsnSrvAddr, dsnSrvB
}
