package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/pipeline/pipetest"
	"github.com/go-odmr/odmr/internal/smtptest"

	"github.com/go-odmr/odmr/internal/oneconn"
)

// sink is a go-smtp backend that refuses recipients whose local part
// starts with "temp" (450) or "perm" (550), and bodies that contain
// "virus" (554), and keeps the rest.
type sink struct {
	mu   sync.Mutex
	got  []pipetest.Message
	seen int
}

func (b *sink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{b: b}, nil }

type sinkSession struct {
	b    *sink
	from string
	to   []string
}

func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from, s.to = from, nil
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	switch {
	case strings.HasPrefix(to, "temp"):
		return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "busy"}
	case strings.HasPrefix(to, "perm"):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.seen++
	if bytes.Contains(b, []byte("virus")) {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "rejected"}
	}
	s.b.got = append(s.b.got, pipetest.Message{From: s.from, To: s.to, Body: string(b)})
	return nil
}

func (s *sinkSession) Reset()        { s.from, s.to = "", nil }
func (s *sinkSession) Logout() error { return nil }

func newGoSMTPServer(b *sink) *smtp.Server {
	srv := smtp.NewServer(b)
	srv.Domain = "sink.test"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.ErrorLog = nopLogger{}
	return srv
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

// dialGoSMTP returns a connection to a go-smtp server over net.Pipe or
// loopback TCP.
func dialGoSMTP(t *testing.T, b *sink, tcp bool) net.Conn {
	t.Helper()
	srv := newGoSMTPServer(b)
	var l net.Listener
	var c net.Conn
	if tcp {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go srv.Serve(l)
		c, err = net.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
	} else {
		var s net.Conn
		c, s = net.Pipe()
		go srv.Serve(oneconn.New(s))
	}
	t.Cleanup(func() {
		c.Close()
		smtptest.Shutdown(t, srv)
	})
	return c
}

func TestAgainstGoSMTPServer(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		name := "net.Pipe"
		if tcp {
			name = "TCP"
		}
		t.Run(name, func(t *testing.T) {
			modes(t, func(t *testing.T, chunking bool) {
				b := &sink{}
				c := dialGoSMTP(t, b, tcp)
				snd := NewSender(context.Background(), c, Config{Chunking: chunking, ChunkSize: 1000})
				defer snd.Close()
				ext, err := snd.Hello("client.test")
				require.NoError(t, err)
				require.Contains(t, ext, "PIPELINING")
				require.Contains(t, ext, "CHUNKING")

				// Dot-stuffing, 8-bit bytes, a bare LF and a missing final
				// line break.
				body := "Subject: t\r\n\r\n.leading\r\n..two\r\n.\r\ncaf\xc3\xa9 \xff\xfe\r\nbare\nend"
				want := "Subject: t\r\n\r\n.leading\r\n..two\r\n.\r\ncaf\xc3\xa9 \xff\xfe\r\nbare\r\nend\r\n"
				big := strings.Repeat(".x 0123456789 abcdefghij\r\n", 5000)
				type sent struct {
					o    *outcome
					want []int
				}
				var all []sent
				add := func(body string, want []int, to ...string) {
					m, o := msg("s@x.test", body, to...)
					m.Params = " BODY=8BITMIME"
					require.NoError(t, snd.Send(m))
					all = append(all, sent{o, want})
				}
				add(body, []int{0, 450, 550}, "a@y.test", "temp@y.test", "perm@y.test")
				add("a virus\r\n", []int{554}, "b@y.test")
				add("nobody\r\n", []int{550, 450}, "perm2@y.test", "temp2@y.test")
				add(big, []int{0}, "c@y.test")
				for i := range 20 {
					add(fmt.Sprintf("n%d\r\n", i), []int{0}, fmt.Sprintf("d%d@y.test", i))
				}
				require.NoError(t, snd.Quit())
				for i, s := range all {
					assert.Equal(t, 1, s.o.calls, "message %d", i)
					assert.Equal(t, s.want, s.o.codes(), "message %d", i)
				}
				b.mu.Lock()
				defer b.mu.Unlock()
				require.Len(t, b.got, 22)
				assert.Equal(t, want, b.got[0].Body)
				assert.Equal(t, []string{"a@y.test"}, b.got[0].To)
				assert.True(t, big == b.got[1].Body, "big body differs")
				assert.Equal(t, "n19\r\n", b.got[21].Body)
			})
		})
	}
}
