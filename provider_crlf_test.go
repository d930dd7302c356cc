package odmr_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/crlf"
	"github.com/go-odmr/odmr/memqueue"
	"github.com/go-odmr/odmr/spool"
)

// smuggling are message texts with each end-of-data variant of SMTP
// smuggling, and bare CR and LF, in the middle of the body.
var smuggling = []struct{ name, text string }{
	{"CR dot CRLF", "a\r.\r\nMAIL FROM:<x@evil.test>\r\n"},
	{"LF dot LF", "a\n.\nMAIL FROM:<x@evil.test>\r\n"},
	{"CRLF dot LF", "a\r\n.\nMAIL FROM:<x@evil.test>\r\n"},
	{"LF dot CRLF", "a\n.\r\nMAIL FROM:<x@evil.test>\r\n"},
	{"CR dot LF", "a\r.\nMAIL FROM:<x@evil.test>\r\n"},
	{"bare CR in body", "a\rb\r\n"},
	{"bare LF in body", "a\nb\r\n"},
}

// crlfOnly is what the provider must make of a text: every CRLF, bare CR
// and bare LF a line break, sent as CRLF.
func crlfOnly(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// wireCustomer is a Handler that plays a minimal SMTP server after the
// swap, advertising ehlo, and keeps every byte the provider sent and each
// message's text (dot-unstuffed, or BDAT chunks joined).
type wireCustomer struct {
	ehlo []string
	mu   sync.Mutex
	raw  bytes.Buffer
	msgs []string
}

func (w *wireCustomer) ServeReversed(ctx context.Context, conn net.Conn) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	br := bufio.NewReader(conn)
	readLine := func() (string, error) {
		l, err := br.ReadString('\n')
		w.raw.WriteString(l)
		return l, err
	}
	io.WriteString(conn, "220 customer.example.org ESMTP\r\n")
	var msg bytes.Buffer
	for {
		line, err := readLine()
		if err != nil {
			return nil
		}
		f := strings.Fields(strings.ToUpper(line))
		if len(f) == 0 {
			f = []string{""}
		}
		switch f[0] {
		case "EHLO":
			reply := "250-customer.example.org\r\n"
			for i, kw := range w.ehlo {
				sep := "-"
				if i == len(w.ehlo)-1 {
					sep = " "
				}
				reply += "250" + sep + kw + "\r\n"
			}
			io.WriteString(conn, reply)
		case "DATA":
			io.WriteString(conn, "354 go ahead\r\n")
			for {
				l, err := readLine()
				if err != nil {
					return nil
				}
				if l == ".\r\n" {
					break
				}
				msg.WriteString(strings.TrimPrefix(l, "."))
			}
			w.msgs = append(w.msgs, msg.String())
			msg.Reset()
			io.WriteString(conn, "250 2.0.0 ok\r\n")
		case "BDAT":
			n, _ := strconv.Atoi(f[1])
			chunk := make([]byte, n)
			if _, err := io.ReadFull(br, chunk); err != nil {
				return nil
			}
			w.raw.Write(chunk)
			msg.Write(chunk)
			if len(f) > 2 && f[2] == "LAST" {
				w.msgs = append(w.msgs, msg.String())
				msg.Reset()
			}
			io.WriteString(conn, "250 2.0.0 ok\r\n")
		case "QUIT":
			io.WriteString(conn, "221 2.0.0 bye\r\n")
			return nil
		default:
			io.WriteString(conn, "250 2.0.0 ok\r\n")
		}
	}
}

func TestProviderNeverSendsBareLineEndings(t *testing.T) {
	// Whatever a queue holds, the provider sends only CRLF line endings
	// (RFC 5321 section 2.3.8), and a "\r.\r\n" in a body is a dot line
	// that is stuffed, not the end of the data: each variant arrives as
	// one message, its bare CRs and LFs made CRLF. Both queues, and the
	// three ways of sending: DATA one command at a time, DATA pipelined,
	// BDAT.
	queues := map[string]func(t *testing.T) (odmr.QueueSource, func(env odmr.Envelope, body string)){
		"memory": func(t *testing.T) (odmr.QueueSource, func(odmr.Envelope, string)) {
			q := &memqueue.Queue{}
			return q, func(env odmr.Envelope, body string) {
				_, err := q.Enqueue(env, strings.NewReader(body))
				require.NoError(t, err)
			}
		},
		"spool": func(t *testing.T) (odmr.QueueSource, func(odmr.Envelope, string)) {
			s, err := spool.Open(t.TempDir(), spool.Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
			require.NoError(t, err)
			t.Cleanup(func() { s.Close() })
			return s, func(env odmr.Envelope, body string) {
				_, err := s.Enqueue(context.Background(), env, strings.NewReader(body))
				require.NoError(t, err)
			}
		},
	}
	paths := map[string][]string{
		"DATA":           {"8BITMIME"},
		"DATA pipelined": {"PIPELINING", "8BITMIME"},
		"BDAT":           {"PIPELINING", "CHUNKING", "8BITMIME"},
	}
	for qname, newQueue := range queues {
		for pname, ehlo := range paths {
			t.Run(qname+"/"+pname, func(t *testing.T) {
				q, enqueue := newQueue(t)
				var want []string
				for i, v := range smuggling {
					body := "Subject: " + strconv.Itoa(i) + "\r\n\r\n" + v.text + "end\r\n"
					enqueue(odmr.Envelope{From: "a@sender.test", To: []string{"u1@example.org"}}, body)
					want = append(want, crlfOnly(body))
				}
				addr := custProvider(t, q)
				wc := &wireCustomer{ehlo: ehlo}
				c := custCustomer(addr, nil, "example.org")
				c.Sink, c.Handler = nil, wc
				_, err := c.Fetch(context.Background())
				require.NoError(t, err)

				wc.mu.Lock()
				defer wc.mu.Unlock()
				_, err = io.ReadAll(&crlf.Checker{R: bytes.NewReader(wc.raw.Bytes())})
				assert.NoError(t, err, "the provider sent a bare CR or LF:\n%q", wc.raw.String())
				assert.Equal(t, want, wc.msgs, "each variant is one message, normalized")
				if pname == "BDAT" {
					assert.Contains(t, wc.raw.String(), "BDAT ")
				} else {
					assert.NotContains(t, wc.raw.String(), "BDAT ")
				}
				has, err := q.HasMail(context.Background(), []string{"example.org"})
				require.NoError(t, err)
				assert.False(t, has, "every message was delivered")
			})
		}
	}
}
