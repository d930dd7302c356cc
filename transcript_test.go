package odmr

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Golden transcripts are in the RFC's notation: "P: " lines are what the
// provider sends, "C: " lines what the customer sends, "#" lines and empty
// lines are comments. A replay plays one side's lines over a connection
// and checks the other side's byte for byte.

// replay plays the lines of a transcript that start with mine ("C: " or
// "P: ") over conn, consecutive ones in one write, and checks that the
// peer sends the others exactly; then that the peer closed the connection.
func replay(t *testing.T, conn net.Conn, path, mine string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	var pending strings.Builder
	flush := func() {
		if pending.Len() > 0 {
			_, err := io.WriteString(conn, pending.String())
			require.NoError(t, err)
			pending.Reset()
		}
	}
	for n, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "#") || line == "":
		case strings.HasPrefix(line, mine):
			pending.WriteString(line[3:] + "\r\n")
		case strings.HasPrefix(line, "C: "), strings.HasPrefix(line, "P: "):
			flush()
			got, err := br.ReadString('\n')
			require.NoError(t, err, "%s:%d: waiting for %q", path, n+1, line)
			require.Equal(t, line[3:]+"\r\n", got, "%s:%d", path, n+1)
		default:
			t.Fatalf("%s:%d: not a transcript line: %q", path, n+1, line)
		}
	}
	flush()
	rest, err := io.ReadAll(br)
	assert.NoError(t, err)
	assert.Empty(t, string(rest), "the peer sent more than the transcript")
}

// replayAsCustomer plays the C: lines of a transcript over conn and checks
// the P: lines byte for byte, then that the provider closed the connection.
func replayAsCustomer(t *testing.T, conn net.Conn, path string) {
	t.Helper()
	replay(t, conn, path, "C: ")
}

func TestGoldenTranscriptRFC2645Section6(t *testing.T) {
	accts := testAccounts{"example.org": {Name: "example.org", Secret: "tanstaaftanstaaf", Domains: []string{"example.org", "example.com"}}}
	q := newMemQueue()
	_, err := q.Enqueue(Envelope{From: "Lester.Tester@dot.foo.bar", To: []string{"l.eva.msg@example.com"}},
		strings.NewReader("Subject: test\r\n\r\nHello from the provider's queue.\r\n.\r\n"))
	require.NoError(t, err)
	p := &Provider{
		Hostname: "EXAMPLE.NET", Authenticator: accts, Authorizer: accts, Queue: q,
		Logger:    slog.New(slog.DiscardHandler),
		challenge: func(string) []byte { return []byte("<1896.697170952@EXAMPLE.NET>") },
	}
	srv, cli := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- p.Serve(srv) }()
	replayAsCustomer(t, cli, "testdata/rfc2645-section6.txt")
	require.NoError(t, <-done)
	assert.Equal(t, 0, q.Len())
}

// The parties of the transcripts in testdata/transcripts: the provider
// example.net and the account "example.org" of RFC 2195's secret, which
// owns example.org and example.com; example.edu belongs to another
// account.
const (
	transcriptProvider  = "example.net"
	transcriptUser      = "example.org"
	transcriptSecret    = "tanstaaftanstaaf"
	transcriptChallenge = "<1896.697170952@example.net>"
	// transcriptBody is the message of 250-delivery.txt; its last line is
	// a lone dot.
	transcriptBody = "Subject: test\r\n\r\nHello from the provider's queue.\r\n.\r\n"
)

func transcriptAccounts() testAccounts {
	return testAccounts{
		transcriptUser: {Name: transcriptUser, Secret: transcriptSecret, Domains: []string{"example.org", "example.com"}},
		"other":        {Name: "other", Secret: "other-secret", Domains: []string{"example.edu"}},
	}
}

// providerTranscripts are the transcripts replayed against Provider, the
// test playing the customer. Each case sets up the provider's queue and
// accounts for its transcript and checks the queue afterwards.
var providerTranscripts = []struct {
	file  string
	setup func(t *testing.T, p *Provider, q memQueue)
	// queued is the number of messages still queued afterwards.
	queued int
}{
	// 250: a message delivered, with pipelining, and gone from the queue.
	{"250-delivery.txt", func(t *testing.T, p *Provider, q memQueue) {
		transcriptEnqueue(t, q, "Lester.Tester@dot.foo.bar", transcriptBody, "l.eva.msg@example.com")
	}, 0},
	// 450: mail for both domains named stays queued.
	{"450-foreign-domain.txt", func(t *testing.T, p *Provider, q memQueue) {
		transcriptEnqueue(t, q, "a@sender.example", "Subject: a\r\n\r\na\r\n", "u@example.org")
		transcriptEnqueue(t, q, "b@sender.example", "Subject: b\r\n\r\nb\r\n", "v@example.edu")
	}, 2},
	// 451: the authorizer fails; the queued mail stays.
	{"451-authorizer-failure.txt", func(t *testing.T, p *Provider, q memQueue) {
		p.Authorizer = DomainAuthorizerFunc(func(context.Context, string) ([]string, error) {
			return nil, errors.New("mapping database unavailable")
		})
		transcriptEnqueue(t, q, "a@sender.example", "Subject: a\r\n\r\na\r\n", "u@example.org")
	}, 1},
	// 453: nothing queued.
	{"453-no-mail.txt", nil, 0},
	// 502: other commands in both states, nothing queued.
	{"502-other-command.txt", nil, 0},
	// 530: ATRN before AUTH with mail queued, which stays.
	{"530-atrn-before-auth.txt", func(t *testing.T, p *Provider, q memQueue) {
		transcriptEnqueue(t, q, "a@sender.example", "Subject: a\r\n\r\na\r\n", "u@example.org")
	}, 1},
	// 535: a wrong secret, with mail queued, which stays.
	{"535-wrong-secret.txt", func(t *testing.T, p *Provider, q memQueue) {
		transcriptEnqueue(t, q, "a@sender.example", "Subject: a\r\n\r\na\r\n", "u@example.org")
	}, 1},
}

func transcriptEnqueue(t *testing.T, q memQueue, from, body string, to ...string) {
	t.Helper()
	_, err := q.Enqueue(Envelope{From: from, To: to}, strings.NewReader(body))
	require.NoError(t, err)
}

// TestGoldenTranscriptsProvider replays the transcripts of
// testdata/transcripts against Provider: the test plays the C: lines and
// the P: lines must match byte for byte.
func TestGoldenTranscriptsProvider(t *testing.T) {
	for _, tc := range providerTranscripts {
		t.Run(tc.file, func(t *testing.T) {
			accts := transcriptAccounts()
			q := newMemQueue()
			p := &Provider{
				Hostname: transcriptProvider, Authenticator: accts, Authorizer: accts, Queue: q,
				Logger:    slog.New(slog.DiscardHandler),
				challenge: func(string) []byte { return []byte(transcriptChallenge) },
			}
			if tc.setup != nil {
				tc.setup(t, p, q)
			}
			srv, cli := net.Pipe()
			defer cli.Close()
			done := make(chan error, 1)
			go func() { done <- p.Serve(srv) }()
			replayAsCustomer(t, cli, "testdata/transcripts/"+tc.file)
			cli.Close()
			select {
			case err := <-done:
				assert.NoError(t, err, "Serve")
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return")
			}
			assert.Equal(t, tc.queued, q.Len(), "messages still queued")
		})
	}
}
