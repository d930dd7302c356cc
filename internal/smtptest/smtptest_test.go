package smtptest_test

import (
	"crypto/tls"
	"errors"
	"net"
	"net/textproto"
	"reflect"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/internal/testcert"
)

// code returns the SMTP reply code of err, 0 for none.
func code(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func TestRefusingOverPipeAndTCP(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		b := &smtptest.Refusing{}
		c := smtp.NewClient(smtptest.Dial(t, smtp.NewServer(b), tcp))
		if err := c.Hello("client.test"); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail("s@x.test", nil); err != nil {
			t.Fatal(err)
		}
		for to, want := range map[string]int{"ok@y.test": 0, "temp@y.test": 450, "perm@y.test": 550} {
			if got := code(c.Rcpt(to, nil)); got != want {
				t.Errorf("tcp=%v: RCPT %s: %d, want %d", tcp, to, got, want)
			}
		}
		send := func(body string) int {
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			w.Write([]byte(body))
			return code(w.Close())
		}
		if got := send("clean\r\n"); got != 0 {
			t.Errorf("tcp=%v: a clean body: %d", tcp, got)
		}
		if err := c.Mail("s@x.test", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("ok@y.test", nil); err != nil {
			t.Fatal(err)
		}
		if got := send("a virus\r\n"); got != 554 {
			t.Errorf("tcp=%v: a virus: %d, want 554", tcp, got)
		}
		c.Quit()
		got := b.Messages()
		if len(got) != 1 || got[0].From != "s@x.test" || strings.Join(got[0].To, ",") != "ok@y.test" || got[0].Body != "clean\r\n" {
			t.Errorf("tcp=%v: kept %+v", tcp, got)
		}
	}
}

func TestSmarthostNotesTLSAndUser(t *testing.T) {
	cert, pool := testcert.SelfSigned(t, "127.0.0.1")
	h := &smtptest.Smarthost{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}
	h.Start(t)
	c, err := smtp.DialStartTLS(h.Addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "u", "wrong")); code(err) != 535 {
		t.Errorf("a wrong password: %v, want 535", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "u", "secret")); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("s@x.test", []string{"r@y.test"}, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	want := smtptest.Message{From: "s@x.test", To: []string{"r@y.test"}, Body: "x\r\n", TLS: true, User: "u", Hostname: "localhost"}
	if got := h.Messages(); !reflect.DeepEqual(got, []smtptest.Message{want}) {
		t.Errorf("noted %+v, want %+v", got, want)
	}
}

func TestScriptRunsOnTheFirstConnection(t *testing.T) {
	addr, wait := smtptest.Script(t, func(tp *textproto.Conn, _ net.Conn) {
		tp.PrintfLine("220 script.test")
		if line, _ := tp.ReadLine(); line == "QUIT" {
			tp.PrintfLine("221 bye")
		}
	})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	tp.PrintfLine("QUIT")
	if _, _, err := tp.ReadResponse(221); err != nil {
		t.Fatal(err)
	}
	wait()
}
