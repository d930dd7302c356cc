package odmr

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readErrSink reads each message to its end and keeps the error that
// ended the reading.
type readErrSink struct {
	mu  sync.Mutex
	err error
}

func (s *readErrSink) Deliver(_ context.Context, _ Envelope, body io.Reader) error {
	_, err := io.Copy(io.Discard, body)
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
	return err
}

// A sink that reads a message the customer refuses gets an error that
// AsError turns into the reply, as it did when the error was go-smtp's.
func TestReceiveSinkReadsRefusalAsError(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		code int
	}{
		// Over MaxMessageSize, which is 10.
		{"too large", "0123456789abcdef\r\n", 552},
		// A bare LF.
		{"bare line ending", "a\nb\r\n", 554},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				server, client := net.Pipe()
				defer client.Close()
				sink := &readErrSink{}
				c := &Customer{Hostname: "customer.test", Sink: sink, MaxMessageSize: 10, Logger: slog.New(slog.DiscardHandler)}
				ctx := context.WithValue(t.Context(), acceptedDomainsKey{}, []string{"example.org"})
				rc := &idleConn{Conn: server, ctx: ctx, idle: time.Minute}
				done := make(chan error, 1)
				go func() { done <- c.receive(ctx, rc, &FetchResult{}, nil, c.logger()) }()

				br := bufio.NewReader(client)
				reply := func() string {
					var last string
					for {
						line, err := br.ReadString('\n')
						require.NoError(t, err)
						last = strings.TrimSuffix(line, "\r\n")
						if len(last) < 4 || last[3] != '-' {
							return last
						}
					}
				}
				send := func(s string) {
					_, err := io.WriteString(client, s)
					require.NoError(t, err)
				}
				reply() // 220
				for _, cmd := range []string{"EHLO provider.test", "MAIL FROM:<a@example.net>", "RCPT TO:<u@example.org>", "DATA"} {
					send(cmd + "\r\n")
					reply()
				}
				send(tc.body + ".\r\n")
				r := reply()
				assert.True(t, strings.HasPrefix(r, strconv.Itoa(tc.code)+" "), "reply %q", r)
				send("QUIT\r\n")
				reply()
				client.Close()
				require.NoError(t, <-done)

				sink.mu.Lock()
				defer sink.mu.Unlock()
				e := AsError(sink.err)
				require.NotNil(t, e, "the sink read %v", sink.err)
				assert.Equal(t, tc.code, e.Code)
			})
		})
	}
}
