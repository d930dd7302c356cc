package odmrtest_test

import (
	"io"
	"net"
	"testing"

	"golang.org/x/net/nettest"

	"github.com/go-odmr/odmr"
)

// TestReverseConn checks that the reversed-state connection of odmr.Reverse
// behaves as a net.Conn should: over
// net.Pipe and over TCP, with nothing buffered, and with bytes that the
// command reader had read ahead, replayed and consumed before the
// connection is handed to the test.
func TestReverseConn(t *testing.T) {
	pipes := map[string]func() (net.Conn, net.Conn, error){
		"Pipe": func() (net.Conn, net.Conn, error) {
			c1, c2 := net.Pipe()
			return c1, c2, nil
		},
		"TCP": tcpPair,
	}
	for name, pair := range pipes {
		t.Run(name, func(t *testing.T) {
			t.Run("NothingBuffered", func(t *testing.T) {
				nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
					c1, c2, err := pair()
					if err != nil {
						return nil, nil, nil, err
					}
					r1, r2 := odmr.Reverse(c1, nil), odmr.Reverse(c2, nil)
					return r1, r2, func() { r1.Close(); r2.Close() }, nil
				})
			})
			t.Run("BufferedConsumed", func(t *testing.T) {
				nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
					c1, c2, err := pair()
					if err != nil {
						return nil, nil, nil, err
					}
					// Both ends had read ahead a greeting that the SMTP
					// stack now takes first.
					const ahead = "220 customer.example ready\r\n"
					r1, r2 := odmr.Reverse(c1, []byte(ahead)), odmr.Reverse(c2, []byte(ahead))
					for _, r := range []net.Conn{r1, r2} {
						buf := make([]byte, len(ahead))
						if _, err := io.ReadFull(r, buf); err != nil || string(buf) != ahead {
							return nil, nil, nil, err
						}
					}
					return r1, r2, func() { r1.Close(); r2.Close() }, nil
				})
			})
		})
	}
}

// TestReverseReplaysBufferedBytes checks the replay itself: what the
// command reader had buffered comes first, in order, split across reads
// as the reader asks, then the connection's own bytes.
func TestReverseReplaysBufferedBytes(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	r := odmr.Reverse(c1, []byte("220 pipelined\r\n"))
	go func() {
		c2.Write([]byte("EHLO x\r\n"))
	}()
	buf := make([]byte, 4)
	var got []byte
	for len(got) < len("220 pipelined\r\nEHLO x\r\n") {
		n, err := r.Read(buf)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "220 pipelined\r\nEHLO x\r\n" {
		t.Fatalf("read %q", got)
	}
}

func tcpPair() (net.Conn, net.Conn, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer l.Close()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		ch <- result{c, err}
	}()
	c1, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	r := <-ch
	if r.err != nil {
		c1.Close()
		return nil, nil, r.err
	}
	return c1, r.c, nil
}
