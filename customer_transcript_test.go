package odmr

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// replayAsProvider plays the P: lines of a transcript over conn and checks
// the C: lines byte for byte, then that the customer closed the
// connection.
func replayAsProvider(t *testing.T, conn net.Conn, path string) {
	t.Helper()
	replay(t, conn, path, "P: ")
}

// transcriptSink keeps the messages a customer receives.
type transcriptSink struct {
	mu   sync.Mutex
	msgs []transcriptMessage
}

type transcriptMessage struct {
	From string
	To   []string
	Body string
}

func (s *transcriptSink) Deliver(_ context.Context, env Envelope, body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	s.mu.Lock()
	_, rest := stripReceived(b)
	s.msgs = append(s.msgs, transcriptMessage{env.From, slices.Clone(env.To), rest})
	s.mu.Unlock()
	return nil
}

func (s *transcriptSink) received() []transcriptMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// customerTranscripts are the transcripts replayed against Customer, the
// test playing the provider. Each case gives the customer's domains and
// secret and what Fetch must return.
var customerTranscripts = []struct {
	file    string
	domains []string
	secret  string // "" is transcriptSecret
	// err is the sentinel the error matches; nil wants a nil error.
	err    error
	noMail bool
	msgs   []transcriptMessage
}{
	// 250: the message reaches the sink unstuffed.
	{file: "250-delivery.txt", domains: []string{"example.org", "example.com"},
		msgs: []transcriptMessage{{"Lester.Tester@dot.foo.bar", []string{"l.eva.msg@example.com"}, transcriptBody}}},
	// 450: a domain of another account is named.
	{file: "450-foreign-domain.txt", domains: []string{"example.org", "example.edu"}, err: ErrATRNRefused},
	// 451: the provider cannot process the ATRN now.
	{file: "451-authorizer-failure.txt", domains: []string{"example.org", "example.com"}, err: ErrTryLater},
	// 453: no mail is not an error.
	{file: "453-no-mail.txt", domains: []string{"example.org", "example.com"}, noMail: true},
	// 535: a wrong secret.
	{file: "535-wrong-secret.txt", domains: []string{"example.org", "example.com"}, secret: "not-the-secret", err: ErrAuthFailed},
	// 250, EHLO, QUIT: the RFC's other way to say no mail.
	{file: "250-then-quit-no-mail.txt", domains: []string{"example.org", "example.com"}, noMail: true},
	// 250 and QUIT at once: Exim's way to say no mail.
	{file: "250-immediate-quit-exim.txt", domains: []string{"example.org", "example.com"}, noMail: true},
}

// TestGoldenTranscriptsCustomer replays the transcripts of
// testdata/transcripts against Customer: the test plays the P: lines and
// the C: lines must match byte for byte. The customer's CRAM-MD5 response
// is fixed by the transcript's challenge; its mechanism is pinned to
// CRAM-MD5 and its host name to example.org.
func TestGoldenTranscriptsCustomer(t *testing.T) {
	for _, tc := range customerTranscripts {
		t.Run(tc.file, func(t *testing.T) {
			prov, cust := net.Pipe()
			defer prov.Close()
			sink := &transcriptSink{}
			secret := tc.secret
			if secret == "" {
				secret = transcriptSecret
			}
			c := &Customer{
				Addr:       transcriptProvider,
				Dial:       func(context.Context, string, string) (net.Conn, error) { return cust, nil },
				Username:   transcriptUser,
				Secret:     secret,
				Mechanisms: []string{CRAMMD5},
				Domains:    tc.domains,
				Hostname:   "example.org",
				Sink:       sink,
				Logger:     slog.New(slog.DiscardHandler),
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			type fetched struct {
				res *FetchResult
				err error
			}
			done := make(chan fetched, 1)
			go func() {
				res, err := c.Fetch(ctx)
				done <- fetched{res, err}
			}()
			replayAsProvider(t, prov, "testdata/transcripts/"+tc.file)
			prov.Close()
			f := <-done
			if tc.err == nil {
				require.NoError(t, f.err)
			} else {
				require.ErrorIs(t, f.err, tc.err)
			}
			assert.Equal(t, tc.noMail, f.res.NoMail, "NoMail")
			assert.Equal(t, tc.msgs, sink.received())
		})
	}
}

// TestGoldenTranscriptsAllReplayed checks that every transcript in
// testdata/transcripts is replayed against at least one role, and that
// each names in its comment the roles it is replayed against.
func TestGoldenTranscriptsAllReplayed(t *testing.T) {
	entries, err := os.ReadDir("testdata/transcripts")
	require.NoError(t, err)
	roles := map[string][]string{}
	for _, tc := range providerTranscripts {
		roles[tc.file] = append(roles[tc.file], "odmr.Provider")
	}
	for _, tc := range customerTranscripts {
		roles[tc.file] = append(roles[tc.file], "odmr.Customer")
	}
	for _, e := range entries {
		rs := roles[e.Name()]
		if len(rs) == 0 {
			t.Errorf("%s is replayed against neither role", e.Name())
			continue
		}
		b, err := os.ReadFile("testdata/transcripts/" + e.Name())
		require.NoError(t, err)
		var header strings.Builder
		for _, l := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(l, "#") {
				break
			}
			header.WriteString(strings.TrimPrefix(l, "#"))
		}
		h := strings.Join(strings.Fields(header.String()), " ")
		switch {
		case h == "":
			t.Errorf("%s has no comment saying why it exists", e.Name())
		case len(rs) == 2 && !strings.Contains(h, "against both roles"):
			t.Errorf("%s is replayed against both roles; its comment does not say so", e.Name())
		case len(rs) == 1 && !strings.Contains(h, "against "+rs[0]+" only"):
			t.Errorf("%s is replayed against %s only; its comment does not say so", e.Name(), rs[0])
		}
	}
	delete(roles, "")
	for f := range roles {
		if _, err := os.Stat("testdata/transcripts/" + f); err != nil {
			t.Errorf("%s is in a table but not in testdata/transcripts", f)
		}
	}
}
