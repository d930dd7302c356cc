package odmr

import (
	"bufio"
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

// replayAsCustomer plays the C: lines of a transcript over conn and checks
// the P: lines byte for byte, then that the provider closed the connection.
func replayAsCustomer(t *testing.T, conn net.Conn, path string) {
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
		case strings.HasPrefix(line, "C: "):
			pending.WriteString(line[3:] + "\r\n")
		case strings.HasPrefix(line, "P: "):
			flush()
			got, err := br.ReadString('\n')
			require.NoError(t, err, "line %d: waiting for %q", n+1, line)
			require.Equal(t, line[3:]+"\r\n", got, "line %d", n+1)
		default:
			t.Fatalf("%s:%d: not a transcript line: %q", path, n+1, line)
		}
	}
	flush()
	rest, err := io.ReadAll(br)
	assert.NoError(t, err)
	assert.Empty(t, string(rest), "provider sent more than the transcript")
}

func TestGoldenTranscriptRFC2645Section6(t *testing.T) {
	accts := Accounts{"example.org": {Name: "example.org", Secret: "tanstaaftanstaaf", Domains: []string{"example.org", "example.com"}}}
	q := &MemoryQueue{}
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
