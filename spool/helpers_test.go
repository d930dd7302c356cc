package spool

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/bouncetest"
)

// logBuffer collects a Spool's log for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type fixture struct {
	t       *testing.T
	dir     string
	s       *Spool
	logs    *logBuffer
	bounces *bouncetest.Collector
}

// newFixture opens a spool in a fresh directory with background work off,
// so every test drives Expire and FlushBounces itself.
func newFixture(t *testing.T, opts ...func(*Options)) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: t.TempDir(), logs: &logBuffer{}, bounces: &bouncetest.Collector{}}
	f.s = f.open(opts...)
	return f
}

func (f *fixture) options(opts ...func(*Options)) Options {
	o := Options{
		Hostname:            "mx.provider.test",
		MaintenanceInterval: -1,
		Bouncer:             f.bounces,
		Logger:              slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, fn := range opts {
		fn(&o)
	}
	return o
}

func (f *fixture) open(opts ...func(*Options)) *Spool {
	f.t.Helper()
	s, err := Open(f.dir, f.options(opts...))
	require.NoError(f.t, err)
	f.t.Cleanup(func() { s.Close() })
	// The tests look at the spool as Open's background work leaves it.
	require.NoError(f.t, s.WaitIndexed(context.Background()))
	return s
}

func (f *fixture) enqueue(from, body string, to ...string) string {
	f.t.Helper()
	id, err := f.s.Enqueue(context.Background(), odmr.Envelope{From: from, To: to}, strings.NewReader(body))
	require.NoError(f.t, err)
	return id
}

// delivery is one message as a batch handed it out.
type delivery struct {
	msg  odmr.Message
	env  odmr.Envelope
	body string
}

// next leases the next message of b and reads it.
func next(t *testing.T, b odmr.Batch) (*delivery, error) {
	t.Helper()
	m, err := b.Next(context.Background())
	if err != nil {
		return nil, err
	}
	rc, err := m.Open()
	require.NoError(t, err)
	data, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	return &delivery{msg: m, env: m.Envelope(), body: string(data)}, nil
}

// complete reports the same error for every recipient.
func (d *delivery) complete(t *testing.T, err error) {
	t.Helper()
	var res []odmr.RecipientResult
	for _, r := range d.env.To {
		res = append(res, odmr.RecipientResult{Recipient: r, Err: err})
	}
	require.NoError(t, d.msg.Complete(context.Background(), res))
}

// drain delivers everything queued for domains, accepting every recipient,
// and returns the deliveries.
func drain(t *testing.T, s *Spool, domains ...string) []*delivery {
	t.Helper()
	b, err := s.Claim(context.Background(), domains)
	require.NoError(t, err)
	defer b.Close()
	var out []*delivery
	for {
		d, err := next(t, b)
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		d.complete(t, nil)
		out = append(out, d)
	}
}

func has(t *testing.T, s *Spool, domains ...string) bool {
	t.Helper()
	ok, err := s.HasMail(context.Background(), domains)
	require.NoError(t, err)
	return ok
}

// checksummed returns a message whose X-Checksum header holds the SHA-256
// of its body section, so a reader can tell a partial copy.
func checksummed(subject string, body []byte) string {
	sum := sha256.Sum256(body)
	return fmt.Sprintf("From: sender@origin.test\r\nSubject: %s\r\nX-Checksum: %s\r\n\r\n%s", subject, hex.EncodeToString(sum[:]), body)
}

// verifyChecksum checks a message made by checksummed.
func verifyChecksum(msg string) error {
	head, body, ok := strings.Cut(msg, "\r\n\r\n")
	if !ok {
		return errors.New("no end of header")
	}
	_, want, ok := strings.Cut(head, "X-Checksum: ")
	if !ok {
		return errors.New("no checksum")
	}
	want, _, _ = strings.Cut(want, "\r\n")
	sum := sha256.Sum256([]byte(body))
	if got := hex.EncodeToString(sum[:]); got != want {
		return fmt.Errorf("checksum %s, want %s (%d body bytes)", got, want, len(body))
	}
	return nil
}

// parsedDSN is a DSN taken apart with the standard library.
type parsedDSN struct {
	header     mail.Header
	reportType string
	text       string
	perMessage textproto.MIMEHeader
	recipients []textproto.MIMEHeader
	headers    string // the text/rfc822-headers part
	types      []string
}

func parseDSN(t *testing.T, raw string) *parsedDSN {
	t.Helper()
	require.NotContains(t, strings.ReplaceAll(raw, "\r\n", ""), "\n", "bare LF in DSN")
	m, err := mail.ReadMessage(strings.NewReader(raw))
	require.NoError(t, err)
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/report", mt)
	p := &parsedDSN{header: m.Header, reportType: params["report-type"]}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		part, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		data, err := io.ReadAll(part)
		require.NoError(t, err)
		ct, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		p.types = append(p.types, ct)
		switch ct {
		case "text/plain":
			p.text = string(data)
		case "message/delivery-status", "message/global-delivery-status":
			tp := textproto.NewReader(bufioReader(data))
			p.perMessage, err = tp.ReadMIMEHeader()
			require.NoError(t, err)
			for {
				h, err := tp.ReadMIMEHeader()
				if len(h) > 0 {
					p.recipients = append(p.recipients, h)
				}
				if err != nil {
					require.ErrorIs(t, err, io.EOF)
					break
				}
			}
		case "text/rfc822-headers", "message/global-headers":
			p.headers = string(data)
		}
	}
	return p
}

// recipient returns the per-recipient fields for addr.
func (p *parsedDSN) recipient(addr string) textproto.MIMEHeader {
	for _, h := range p.recipients {
		if strings.HasSuffix(h.Get("Final-Recipient"), addr) {
			return h
		}
	}
	return nil
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
