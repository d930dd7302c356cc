// Package pipetest is a scripted SMTP server for testing SMTP clients
// that pipeline: it handles commands one at a time in the order they
// arrive, as real servers do with pipelined input, answers them as a
// script says, and records what it is sent.
package pipetest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server is one scripted SMTP session. Set its fields, then call Serve.
// A nil function field means the default answer.
type Server struct {
	// Ext are the EHLO extension lines; nil means PIPELINING only.
	Ext []string
	// HELOOnly makes the server refuse EHLO with 502, as an RFC 821
	// server does, so that the client falls back to HELO.
	HELOOnly bool

	// Mail picks the reply to MAIL (default "250 2.1.0 OK").
	Mail func(from string) string
	// Rcpt picks the reply to RCPT (default "250 2.1.5 OK").
	Rcpt func(to string) string
	// Data picks the reply to DATA from the number of recipients accepted
	// (default: 354, or 554 when none).
	Data func(accepted int) string
	// End picks the reply to the end of a message's data, the dot or
	// BDAT LAST (default "250 2.0.0 queued"; always 554 when no
	// recipient was accepted).
	End func(m Message) string
	// Chunk picks the reply to a BDAT chunk that is not the last
	// (default "250 2.0.0 chunk OK").
	Chunk func(n int) string
	// Hold, if set, is called before the reply to the end of a message
	// is written, with the server's input; it may wait for the client
	// to send more (see SentAhead).
	Hold func(br *bufio.Reader, conn net.Conn)
	// Gate, if set, makes the server wait before it answers the first
	// MAIL until the client has sent input containing Gate.
	Gate string
	// Cut, if set, is asked about every line received, commands and
	// data lines alike (with their CRLF for data lines, without for
	// commands); the server hangs up instead of handling a line for
	// which it returns true. It half-closes a TCP connection and reads
	// what is still in flight before it closes, so that the replies it
	// wrote before are not lost to a TCP reset.
	Cut func(line string) bool

	mu    sync.Mutex
	lines []string
	mails []Message
	reads []string
	gated bool
}

// Message is a message the server accepted.
type Message struct {
	From string
	To   []string
	Body string
}

// String formats the message for comparisons and failure reports.
func (m Message) String() string { return fmt.Sprintf("%s->%v %q", m.From, m.To, m.Body) }

// Commands returns the command lines received, in order.
func (s *Server) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// Delivered returns the messages whose end was answered 250.
func (s *Server) Delivered() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.mails...)
}

// Reads returns what each read from the connection returned: on a
// net.Pipe, one element per write of the client.
func (s *Server) Reads() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.reads...)
}

// Input returns everything the server read.
func (s *Server) Input() string { return strings.Join(s.Reads(), "") }

// Gated reports whether the input Gate waited for came.
func (s *Server) Gated() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gated
}

type recordingReader struct {
	r io.Reader
	s *Server
}

func (r recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.s.mu.Lock()
		r.s.reads = append(r.s.reads, string(p[:n]))
		r.s.mu.Unlock()
	}
	return n, err
}

// Serve runs the session on conn, greeting first, until QUIT or an
// error, then closes conn.
func (s *Server) Serve(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReaderSize(recordingReader{conn, s}, 64<<10)
	reply := func(l string) bool {
		_, err := io.WriteString(conn, l+"\r\n")
		return err == nil
	}
	if !reply("220 server.test ready") {
		return
	}
	var cur Message
	var accepted int
	var inMail, chunkFailed bool
	var chunks bytes.Buffer
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		s.mu.Lock()
		s.lines = append(s.lines, line)
		s.mu.Unlock()
		if s.Cut != nil && s.Cut(line) {
			hangUp(conn)
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		var ok bool
		switch strings.ToUpper(verb) {
		case "EHLO":
			if s.HELOOnly {
				ok = reply("502 5.5.1 Command not implemented")
				break
			}
			ext := s.Ext
			if ext == nil {
				ext = []string{"PIPELINING"}
			}
			r := "250-server.test"
			for i, e := range ext {
				if i == len(ext)-1 {
					r += "\r\n250 " + e
				} else {
					r += "\r\n250-" + e
				}
			}
			if len(ext) == 0 {
				r = "250 server.test"
			}
			ok = reply(r)
		case "HELO":
			ok = reply("250 server.test")
		case "MAIL":
			if s.Gate != "" {
				g := SentAhead(br, conn, s.Gate)
				s.mu.Lock()
				s.gated, s.Gate = g, ""
				s.mu.Unlock()
			}
			if inMail {
				ok = reply("503 5.5.1 nested MAIL")
				break
			}
			from := strings.TrimPrefix(arg, "FROM:<")
			if i := strings.IndexByte(from, '>'); i >= 0 {
				from = from[:i]
			}
			r := "250 2.1.0 OK"
			if s.Mail != nil {
				r = s.Mail(from)
			}
			if strings.HasPrefix(r, "2") {
				cur, accepted, inMail, chunkFailed = Message{From: from}, 0, true, false
				chunks.Reset()
			}
			ok = reply(r)
		case "RCPT":
			if !inMail {
				ok = reply("503 5.5.1 need MAIL")
				break
			}
			to := strings.TrimSuffix(strings.TrimPrefix(arg, "TO:<"), ">")
			r := "250 2.1.5 OK"
			if s.Rcpt != nil {
				r = s.Rcpt(to)
			}
			if strings.HasPrefix(r, "25") {
				cur.To = append(cur.To, to)
				accepted++
			}
			ok = reply(r)
		case "DATA":
			r := "354 go ahead"
			if s.Data != nil {
				r = s.Data(accepted)
			} else if !inMail || accepted == 0 {
				r = "554 5.5.1 no valid recipients"
			}
			if !reply(r) {
				return
			}
			ok = true
			if !strings.HasPrefix(r, "354") {
				break
			}
			var body strings.Builder
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if s.Cut != nil && s.Cut(l) {
					hangUp(conn)
					return
				}
				if l == ".\r\n" {
					break
				}
				body.WriteString(strings.TrimPrefix(l, "."))
			}
			cur.Body = body.String()
			ok = s.end(br, conn, cur, inMail && accepted > 0, reply)
			inMail = false
		case "BDAT":
			f := strings.Fields(arg)
			n, _ := strconv.Atoi(f[0])
			last := len(f) > 1 && strings.EqualFold(f[1], "LAST")
			if _, err := io.CopyN(&chunks, br, int64(n)); err != nil {
				return
			}
			switch {
			case !inMail || accepted == 0:
				ok = reply("503 5.5.1 no valid recipients")
			case chunkFailed:
				ok = reply("503 5.5.1 transaction failed")
			case last:
				cur.Body = chunks.String()
				ok = s.end(br, conn, cur, true, reply)
				inMail = false
			default:
				r := "250 2.0.0 chunk OK"
				if s.Chunk != nil {
					r = s.Chunk(n)
				}
				chunkFailed = !strings.HasPrefix(r, "2")
				ok = reply(r)
			}
		case "RSET":
			inMail = false
			ok = reply("250 2.0.0 OK")
		case "NOOP":
			ok = reply("250 2.0.0 OK")
		case "QUIT":
			reply("221 2.0.0 bye")
			return
		default:
			ok = reply("502 5.5.1 unknown command")
		}
		if !ok {
			return
		}
	}
}

func (s *Server) end(br *bufio.Reader, conn net.Conn, m Message, valid bool, reply func(string) bool) bool {
	if s.Hold != nil {
		s.Hold(br, conn)
	}
	r := "250 2.0.0 queued"
	switch {
	case !valid:
		r = "554 5.5.1 no valid recipients"
	case s.End != nil:
		r = s.End(m)
	}
	if strings.HasPrefix(r, "250") {
		s.mu.Lock()
		s.mails = append(s.mails, m)
		s.mu.Unlock()
	}
	return reply(r)
}

// hangUp ends the session at once without losing what was written.
func hangUp(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, conn)
	}
}

// SentAhead waits until the client has sent input that contains want,
// without the server answering anything meanwhile. It gives up after
// three seconds, which a client that waits for each reply makes it do.
func SentAhead(br *bufio.Reader, conn net.Conn, want string) bool {
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	for {
		b, _ := br.Peek(br.Buffered())
		if bytes.Contains(b, []byte(want)) {
			return true
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return false
		}
	}
}
