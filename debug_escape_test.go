package odmr_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/go-odmr/odmr"
)

// TestDebugTranscriptEscapesPeerText: a provider's reply with a terminal
// escape sequence and a bidi override shows in the customer's -debug
// transcript escaped, never as the bytes that would act on the terminal.
func TestDebugTranscriptEscapesPeerText(t *testing.T) {
	var transcript bytes.Buffer
	c := &odmr.Customer{
		Addr: "provider.test", Username: "alice", Secret: "s3cret", Domains: []string{"example.org"},
		Sink: odmr.MessageSinkFunc(func(context.Context, odmr.Envelope, io.Reader) error { return nil }),
		Dial: func(context.Context, string, string) (net.Conn, error) {
			cli, srv := net.Pipe()
			go func() {
				defer srv.Close()
				srv.Write([]byte("220 evil\x1b[2J ESMTP\r\n"))
				br := bufio.NewReader(srv)
				br.ReadString('\n') // EHLO
				srv.Write([]byte("554 5.3.2 go away \u202eevil\r\n"))
				br.ReadString('\n') // QUIT, maybe
			}()
			return cli, nil
		},
		Debug: &transcript,
	}
	_, err := c.Fetch(context.Background())
	assert.Error(t, err)
	out := transcript.String()
	assert.Contains(t, out, `220 evil\x1b[2J ESMTP`)
	assert.Contains(t, out, `go away \u202eevil`)
	assert.NotContains(t, out, "\x1b")
	assert.NotContains(t, out, "\u202e")
	assert.True(t, strings.Count(out, "\n") >= 2, out)
}
