package pipeline

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/smtptest"
)

func newGoSMTPServer(b smtp.Backend) *smtp.Server {
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
func dialGoSMTP(t *testing.T, b smtp.Backend, tcp bool) net.Conn {
	t.Helper()
	return smtptest.Dial(t, newGoSMTPServer(b), tcp)
}

func TestAgainstGoSMTPServer(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		name := "net.Pipe"
		if tcp {
			name = "TCP"
		}
		t.Run(name, func(t *testing.T) {
			modes(t, func(t *testing.T, mode Config) {
				b := &smtptest.Refusing{}
				c := dialGoSMTP(t, b, tcp)
				snd := NewSender(context.Background(), c, Config{Chunking: mode.Chunking, Overlap: mode.Overlap, ChunkSize: 1000})
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
				got := b.Messages()
				require.Len(t, got, 22)
				assert.Equal(t, want, got[0].Body)
				assert.Equal(t, []string{"a@y.test"}, got[0].To)
				assert.True(t, big == got[1].Body, "big body differs")
				assert.Equal(t, "n19\r\n", got[21].Body)
			})
		})
	}
}
