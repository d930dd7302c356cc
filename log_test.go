package odmr

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// logRecords parses JSON lines, failing on a line that is not one object
// or that repeats a key (a logger With an attribute, logged again).
func logRecords(t *testing.T, out string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var rec map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &rec), "line %q", sc.Text())
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.Token() // {
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			require.NoError(t, err)
			assert.False(t, seen[k.(string)], "key %q twice in %s", k, sc.Text())
			seen[k.(string)] = true
			var v any
			require.NoError(t, dec.Decode(&v))
		}
		recs = append(recs, rec)
	}
	return recs
}

// withMsg returns the records whose msg is msg.
func withMsg(recs []map[string]any, msg string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// TestDeliveryLogFollowsEachRecipient checks issue #16: at the default
// level, each recipient's outcome is one record keyed by the queue ID,
// with the customer's reply and the session's ID; failures are WARN; no
// record repeats a key. Both delivery paths are run: one command at a
// time, and pipelined.
func TestDeliveryLogFollowsEachRecipient(t *testing.T) {
	for _, tc := range []struct {
		name string
		ehlo []string
	}{
		{"plain", nil},
		{"pipelined", []string{"PIPELINING", "ENHANCEDSTATUSCODES"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &syncBuffer{}
			f := newFixture(t, func(p *Provider) {
				p.Logger = slog.New(slog.NewJSONHandler(logs, nil)) // INFO, the default level
			})
			id := f.enqueue(t, "s@x.test", "Subject: x\r\n\r\nhi\r\n", "ok@example.org", "gone@example.org", "full@example.org", "other@example.net")
			f.pull(t, "ATRN example.org", scriptedCustomer{ehlo: tc.ehlo, rcptReply: func(r string) string {
				switch r {
				case "gone@example.org":
					return "550 5.1.1 no such user"
				case "full@example.org":
					return "452 4.2.2 mailbox full"
				}
				return "250 OK"
			}})
			f.settle(t)
			recs := logRecords(t, logs.String())

			ended := withMsg(recs, "odmr: session ended")
			require.Len(t, ended, 1)
			session, _ := ended[0]["session"].(string)
			require.NotEmpty(t, session)
			assert.Equal(t, testUser, ended[0]["identity"])

			check := func(msg, level, to, reply string) {
				t.Helper()
				got := withMsg(recs, msg)
				require.Len(t, got, 1, "%s records", msg)
				r := got[0]
				assert.Equal(t, level, r["level"])
				assert.Equal(t, id, r["id"])
				assert.Equal(t, to, r["to"])
				assert.Equal(t, reply, r["reply"])
				assert.Equal(t, session, r["session"])
				assert.Equal(t, testUser, r["identity"])
			}
			check("odmr: delivered", "INFO", "ok@example.org", "250 2.0.0 queued")
			check("odmr: bounced", "WARN", "gone@example.org", "550 5.1.1 no such user")
			check("odmr: deferred", "WARN", "full@example.org", "452 4.2.2 mailbox full")
			// The recipient of another customer is not this session's event.
			assert.NotContains(t, logs.String(), "other@example.net")
		})
	}
}

// TestSessionIDsDiffer checks that two sessions are told apart in the log.
func TestSessionIDsDiffer(t *testing.T) {
	f := newFixture(t)
	f.dial(t).cmd(221, "QUIT")
	f.dial(t).cmd(221, "QUIT")
	f.settle(t)
	var ids []string
	for _, line := range strings.Split(f.logs.String(), "\n") {
		if strings.Contains(line, `msg="odmr: session ended"`) {
			_, after, ok := strings.Cut(line, " session=")
			require.True(t, ok, line)
			ids = append(ids, strings.Fields(after)[0])
		}
	}
	require.Len(t, ids, 2)
	assert.NotEqual(t, ids[0], ids[1])
}

// TestLogNamesTheIdentityOnce checks that the name a customer logs in as
// is keyed "identity" on every record, failed attempts included, and
// never twice on one record (issue #14).
func TestLogNamesTheIdentityOnce(t *testing.T) {
	logs := &syncBuffer{}
	f := newFixture(t, func(p *Provider) {
		p.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	})
	c := f.dial(t)
	c.cmd(250, "EHLO customer.test")
	c.authCRAM(testUser, "wrong", 535)
	c.authCRAM(testUser, testSecret, 235)
	c.cmd(221, "QUIT")
	f.settle(t)
	recs := logRecords(t, logs.String()) // fails on a key given twice
	for _, msg := range []string{"odmr: authentication failed", "odmr: authenticated", "odmr: session ended"} {
		got := withMsg(recs, msg)
		require.Len(t, got, 1, msg)
		assert.Equal(t, testUser, got[0]["identity"], msg)
		assert.NotContains(t, got[0], "user", msg)
		assert.NotContains(t, got[0], "username", msg)
	}
}
