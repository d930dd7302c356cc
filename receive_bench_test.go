package odmr

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// BenchmarkReceive measures the customer's side of the reversed session
// alone: a client on loopback pipelines b.N messages of 10 KiB, with DATA
// or with BDAT, into Customer.receive, whose sink drains them. The client
// writes the same bytes over and over and allocates nothing per message,
// so allocs/op and B/op are the customer's (and go-smtp's).
//
//	go test -run '^$' -bench Receive -benchmem
func BenchmarkReceive(b *testing.B) {
	for _, mode := range []string{"DATA", "BDAT"} {
		b.Run(mode, func(b *testing.B) {
			var msg bytes.Buffer
			msg.WriteString("MAIL FROM:<sender@x.test>\r\nRCPT TO:<u@example.org>\r\n")
			if mode == "DATA" {
				msg.WriteString("DATA\r\n")
				msg.Write(dotStuff(benchBody))
				msg.WriteString(".\r\n")
			} else {
				fmt.Fprintf(&msg, "BDAT %d LAST\r\n", len(benchBody))
				msg.Write(benchBody)
			}
			benchReceive(b, msg.Bytes())
		})
	}
}

// dotStuff doubles the dot that starts a line of body.
func dotStuff(body []byte) []byte {
	out := bytes.ReplaceAll(body, []byte("\r\n."), []byte("\r\n.."))
	if bytes.HasPrefix(out, []byte(".")) {
		out = append([]byte("."), out...)
	}
	return out
}

func benchReceive(b *testing.B, msg []byte) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	server, err := l.Accept()
	if err != nil {
		b.Fatal(err)
	}

	sink := &countingSink{}
	c := &Customer{Hostname: "customer.test", Sink: sink, Logger: slog.New(slog.DiscardHandler)}
	ctx := context.WithValue(context.Background(), acceptedDomainsKey{}, []string{"example.org"})
	rc := &idleConn{Conn: server, ctx: ctx, idle: time.Minute}

	// The replies are drained as they come; the client does not wait
	// for them, as a pipelining provider would not.
	drained := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, client)
		drained <- err
	}()
	sent := make(chan error, 1)
	b.SetBytes(int64(len(benchBody)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		if _, err := io.WriteString(client, "EHLO provider.test\r\n"); err != nil {
			sent <- err
			return
		}
		for range b.N {
			if _, err := client.Write(msg); err != nil {
				sent <- err
				return
			}
		}
		_, err := io.WriteString(client, "QUIT\r\n")
		sent <- err
	}()
	res := &FetchResult{}
	err = c.receive(ctx, rc, res, nil, c.logger())
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if err := <-sent; err != nil {
		b.Fatal(err)
	}
	client.Close()
	<-drained
	if res.Messages != b.N || sink.n != b.N {
		b.Fatalf("received %d messages, sink got %d, want %d", res.Messages, sink.n, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
