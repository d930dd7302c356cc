package odmr

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"sync"
)

// redacted stands in the customer's log and debug transcript for what
// the SASL exchange carries.
const redacted = "<redacted>"

// customerDebugMu serializes the lines of every customer's debug
// transcript, so that concurrent fetches writing to one Debug writer
// never mix their lines.
var customerDebugMu sync.Mutex

// debug writes one line of the transcript, if there is one. The caller
// has redacted it.
func (s *customerSession) debug(prefix, line string) {
	if s.c.Debug == nil {
		return
	}
	customerDebugMu.Lock()
	defer customerDebugMu.Unlock()
	fmt.Fprintf(s.c.Debug, "%s %s%s\n", s.addr, prefix, line)
}

// debugReversedConn copies the reversed session into the customer's
// debug transcript, line by line: what the customer reads is the
// provider's ("P: "), what it writes its own ("C: "). Reads and writes
// keep separate buffers, so a relay may run them concurrently.
type debugReversedConn struct {
	net.Conn
	s          *customerSession
	rbuf, wbuf []byte
}

func (c *debugReversedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.rbuf = c.lines("P: ", append(c.rbuf, p[:n]...))
	return n, err
}

func (c *debugReversedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.wbuf = c.lines("C: ", append(c.wbuf, p[:n]...))
	return n, err
}

// NetConn returns the connection underneath, for half-closes.
func (c *debugReversedConn) NetConn() net.Conn { return c.Conn }

// lines writes the complete lines of buf and returns the rest, keeping at
// most a few KiB of an unfinished line.
func (c *debugReversedConn) lines(prefix string, buf []byte) []byte {
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		c.s.debug(prefix, strings.TrimSuffix(string(buf[:i]), "\r"))
		buf = buf[i+1:]
	}
	if len(buf) > 4096 {
		c.s.debug(prefix, string(buf)+" [...]")
		buf = buf[:0]
	}
	return append([]byte(nil), buf...)
}
