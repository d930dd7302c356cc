package odmr_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/memqueue"
)

// TestProgressWithRelay: by DATA and by BDAT, Progress sees the counts
// after each message the local server took, and the relay logs each at
// debug level with its sender, the recipients taken, the size and the
// local server's reply; a message it refused is neither reported nor
// logged.
func TestProgressWithRelay(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		name := map[bool]string{false: "DATA", true: "BDAT"}[chunking]
		t.Run(name, func(t *testing.T) {
			q := &memqueue.Queue{}
			b1 := "Subject: one\r\n\r\n.dot line\r\nFirst.\r\n"
			b2 := "Subject: two\r\n\r\nSecond.\r\n"
			custEnqueue(t, q, "a@sender.test", b1, "u1@example.org", "nobody@example.org")
			custEnqueue(t, q, "", b2, "u2@example.org")
			custEnqueue(t, q, "c@sender.test", "Subject: three\r\n\r\nx\r\n", "nobody@example.org")
			addr := custProvider(t, q, func(p *odmr.Provider) { p.DisableChunking = !chunking })
			mta := &localMTA{refuse: map[string]*smtp.SMTPError{
				"nobody@example.org": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"},
			}}
			var mu sync.Mutex
			var got []odmr.FetchResult
			var logs lockedBuffer
			c := custCustomer(addr, nil, "example.org")
			c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			c.Handler = odmr.Relay(startLocalMTA(t, mta, false, "tcp"))
			c.Progress = func(r odmr.FetchResult) {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, r)
			}
			res, err := c.Fetch(context.Background())
			require.NoError(t, err)
			assert.Equal(t, 2, res.Messages)
			mu.Lock()
			defer mu.Unlock()
			require.Len(t, got, 2)
			assert.Equal(t, 1, got[0].Messages)
			assert.Equal(t, 1, got[0].Recipients, "the refused recipient is not counted")
			assert.Equal(t, int64(len(b1)), got[0].Bytes)
			assert.Equal(t, []string{"example.org"}, got[0].Domains, "the result so far")
			assert.Equal(t, 2, got[1].Messages)
			assert.Equal(t, res.Bytes, got[1].Bytes, "the last report adds up to the result")
			assert.LessOrEqual(t, got[0].Duration, got[1].Duration)

			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			var relayed []string
			for _, l := range lines {
				if strings.Contains(l, `msg="odmr: message relayed"`) {
					relayed = append(relayed, l)
				}
			}
			require.Len(t, relayed, 2, logs.String())
			assert.Contains(t, relayed[0], "from=a@sender.test rcpts=1 bytes=")
			assert.Regexp(t, `reply="250 `, relayed[0])
			assert.Contains(t, relayed[1], `from="" rcpts=1`, "the null sender")
		})
	}
}

// TestProgressWithSink: the customer's own server reports each message
// its Sink took, and not one the Sink refused.
func TestProgressWithSink(t *testing.T) {
	q := &memqueue.Queue{}
	custEnqueue(t, q, "a@sender.test", "Subject: one\r\n\r\nFirst.\r\n", "u1@example.org")
	custEnqueue(t, q, "refuse@sender.test", "Subject: two\r\n\r\nSecond.\r\n", "u2@example.org")
	custEnqueue(t, q, "b@sender.test", "Subject: three\r\n\r\nThird.\r\n", "u3@example.org", "u4@example.org")
	addr := custProvider(t, q)
	sink := odmr.MessageSinkFunc(func(_ context.Context, env odmr.Envelope, body io.Reader) error {
		if _, err := io.Copy(io.Discard, body); err != nil {
			return err
		}
		if env.From == "refuse@sender.test" {
			return &odmr.Error{Code: 452, EnhancedCode: odmr.EnhancedCode{4, 3, 1}, Message: "Full"}
		}
		return nil
	})
	var got []odmr.FetchResult
	c := custCustomer(addr, sink, "example.org")
	c.Progress = func(r odmr.FetchResult) { got = append(got, r) }
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	require.Len(t, got, 2, "the refused message is not reported")
	assert.Equal(t, 1, got[0].Messages)
	assert.Equal(t, 2, got[1].Messages)
	assert.Equal(t, 3, got[1].Recipients)
	assert.Equal(t, res.Bytes, got[1].Bytes)
	assert.Equal(t, 1, got[1].Refused, "the refusal before it is counted")
}
