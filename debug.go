package odmr

import (
	"bytes"
	"log/slog"
	"net"
	"os"
	"strings"
)

// transcriptConn copies a session into a debug transcript line by line:
// what is read gets the prefix in, what is written the prefix out. Reads
// and writes keep separate buffers, so a relay may run them concurrently.
type transcriptConn struct {
	net.Conn
	in, out    string
	emit       func(prefix, line string)
	rbuf, wbuf []byte
}

func (c *transcriptConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.rbuf = c.lines(c.in, append(c.rbuf, p[:n]...))
	return n, err
}

func (c *transcriptConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.wbuf = c.lines(c.out, append(c.wbuf, p[:n]...))
	return n, err
}

// NetConn returns the connection underneath, for half-closes.
func (c *transcriptConn) NetConn() net.Conn { return c.Conn }

// lines emits the complete lines of buf and returns the rest, keeping at
// most a few KiB of an unfinished line.
func (c *transcriptConn) lines(prefix string, buf []byte) []byte {
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		c.emit(prefix, strings.TrimSuffix(string(buf[:i]), "\r"))
		buf = buf[i+1:]
	}
	if len(buf) > 4096 {
		c.emit(prefix, string(buf)+" [...]")
		buf = buf[:0]
	}
	return append([]byte(nil), buf...)
}

// hostnameOr returns name, or the system's host name, or "localhost".
func hostnameOr(name string) string {
	if name != "" {
		return name
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// loggerOr returns l, or slog.Default() for nil.
func loggerOr(l *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return slog.Default()
}
