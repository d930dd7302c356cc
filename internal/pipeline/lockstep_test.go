package pipeline

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/pipeline/pipetest"
)

// oneCommandPerWrite fails unless every write the server read holds one
// command line, or data ending with the final dot: what a server that
// does not offer PIPELINING may insist on.
func oneCommandPerWrite(t *testing.T, srv *pipetest.Server) {
	t.Helper()
	for _, r := range srv.Reads() {
		if !strings.HasSuffix(r, "\r\n.\r\n") {
			assert.Equal(t, 1, strings.Count(r, "\r\n"), "one command per write: %q", r)
		}
	}
}

func TestHelloWithoutPipeliningIsLockstep(t *testing.T) {
	// CHUNKING without PIPELINING: the Sender waits for every reply, and
	// sends DATA, since BDAT with nothing pipelined buys nothing.
	srv := &pipetest.Server{Ext: []string{"8BITMIME", "CHUNKING"}, Rcpt: func(to string) string {
		if strings.HasPrefix(to, "perm") {
			return "550 5.1.1 no such user"
		}
		return "250 2.1.5 OK"
	}}
	snd := start(t, srv, Config{Chunking: true})
	assert.True(t, snd.Lockstep())
	assert.False(t, snd.Chunking())
	m, o := msg("s@x.test", "hi\r\n", "a@y.test", "perm@y.test", "b@y.test")
	require.NoError(t, snd.Send(m))
	assert.Equal(t, 1, o.calls, "a lock-step Send returns with the message settled")
	assert.Equal(t, []int{0, 550, 0}, o.codes())
	require.NoError(t, snd.Quit())
	oneCommandPerWrite(t, srv)
	assert.NotContains(t, srv.Commands(), "BDAT")
}

func TestHelloFallsBackToHELO(t *testing.T) {
	// An RFC 821 server refuses EHLO with 502: the Sender says HELO and
	// delivers in lock-step, with no MAIL parameters.
	srv := &pipetest.Server{HELOOnly: true}
	snd := start(t, srv, Config{})
	assert.True(t, snd.Lockstep())
	m, o := msg("s@x.test", "hi\r\n", "a@y.test")
	require.NoError(t, snd.Send(m))
	require.NoError(t, snd.Quit())
	assert.Equal(t, []int{0}, o.codes())
	assert.Equal(t, []string{"EHLO client.test", "HELO client.test", "MAIL FROM:<s@x.test>", "RCPT TO:<a@y.test>", "DATA", "QUIT"}, srv.Commands())
	oneCommandPerWrite(t, srv)
}

func TestLockstepEndsRefusedTransactionsWithRSET(t *testing.T) {
	// A lock-step client knows before DATA that a transaction failed: no
	// RCPT after a refused MAIL, no DATA when no RCPT was accepted, and
	// RSET right after a refused DATA.
	for _, tc := range []struct {
		name  string
		srv   *pipetest.Server
		codes []int
		cmds  []string
	}{
		{"MAIL refused", &pipetest.Server{Ext: []string{}, Mail: func(string) string { return "451 4.3.0 try later" }},
			[]int{451, 451}, []string{"MAIL FROM:<s@x.test>", "RSET"}},
		{"every RCPT refused", &pipetest.Server{Ext: []string{}, Rcpt: func(string) string { return "550 5.1.1 no such user" }},
			[]int{550, 550}, []string{"MAIL FROM:<s@x.test>", "RCPT TO:<a@y.test>", "RCPT TO:<b@y.test>", "RSET"}},
		{"DATA refused", &pipetest.Server{Ext: []string{}, Data: func(int) string { return "451 4.3.0 no room" }},
			[]int{451, 451}, []string{"MAIL FROM:<s@x.test>", "RCPT TO:<a@y.test>", "RCPT TO:<b@y.test>", "DATA", "RSET"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snd := start(t, tc.srv, Config{})
			m, o := msg("s@x.test", "hi\r\n", "a@y.test", "b@y.test")
			require.NoError(t, snd.Send(m))
			assert.Equal(t, 1, o.calls)
			assert.Equal(t, tc.codes, o.codes())
			require.NoError(t, snd.Quit())
			cmds := tc.srv.Commands()
			assert.Equal(t, append(append([]string{"EHLO client.test"}, tc.cmds...), "QUIT"), cmds)
			oneCommandPerWrite(t, tc.srv)
		})
	}
}
