package pipeline

import (
	"bufio"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The Sender asks for an ACK when it is about to wait for replies still
// owed with nothing written since it read the last ones, and only then. A
// server that writes its replies one at a time without TCP_NODELAY, as
// fetchmail passing on a local MTA's does, sends each only once the one
// before it is acknowledged; one that writes a group's replies together,
// as the customer does, is owed no ACK, and the body carries it: an ACK
// asked for there is a system call and a packet per message for nothing.
func TestQuickAckOnlyWhileRepliesAreOwed(t *testing.T) {
	readers(t, func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, s := net.Pipe()
			defer s.Close()
			defer c.Close()
			var acks atomic.Int32
			snd := NewSender(context.Background(), c, Config{QuickAck: func() { acks.Add(1) }})
			defer snd.Close()
			br := bufio.NewReader(s)
			readLine := func() string {
				l, err := br.ReadString('\n')
				require.NoError(t, err)
				return l
			}
			// reply writes replies, or part of one, and returns how many ACKs
			// the Sender has asked for once it has done what it does next.
			reply := func(r string) int32 {
				_, err := io.WriteString(s, r)
				require.NoError(t, err)
				synctest.Wait()
				return acks.Load()
			}

			hello := make(chan error, 1)
			go func() {
				_, err := snd.Hello("client.test")
				hello <- err
			}()
			assert.EqualValues(t, 0, reply("220 hi\r\n"), "the greeting: nothing more owed")
			assert.Equal(t, "EHLO client.test\r\n", readLine())
			assert.EqualValues(t, 1, reply("250-hi\r\n"), "a line of the EHLO reply: the rest is owed")
			assert.EqualValues(t, 1, reply("250 PIPELINING\r\n"), "the whole reply")
			require.NoError(t, <-hello)

			m, o := msg("s@x.test", "hi\r\n", "a@y.test", "b@y.test")
			sent := make(chan error, 1)
			go func() { sent <- snd.Send(m) }()
			for _, want := range []string{"MAIL FROM:<s@x.test>\r\n", "RCPT TO:<a@y.test>\r\n", "RCPT TO:<b@y.test>\r\n", "DATA\r\n"} {
				assert.Equal(t, want, readLine())
			}
			assert.EqualValues(t, 2, reply("250 ok\r\n"), "one reply of four: three are owed")
			assert.EqualValues(t, 3, reply("250 ok\r\n"), "the next one: two are owed")
			assert.EqualValues(t, 3, reply("250 ok\r\n354 go\r\n"), "the last two together: none owed")
			assert.Equal(t, "hi\r\n", readLine())
			assert.Equal(t, ".\r\n", readLine())
			require.NoError(t, <-sent)
			quit := make(chan error, 1)
			if snd.inline {
				// Nothing reads the final reply before Quit waits for it:
				// on a socket it waits in the buffers.
				go func() { quit <- snd.Quit() }()
			}
			assert.EqualValues(t, 3, reply("250 done\r\n"), "the final reply: none owed")
			if !snd.inline {
				go func() { quit <- snd.Quit() }()
			}
			assert.Equal(t, "QUIT\r\n", readLine())
			assert.EqualValues(t, 3, reply("221 bye\r\n"))
			require.NoError(t, <-quit)
			assert.Equal(t, []int{0, 0}, o.codes())
		})
	})
}
