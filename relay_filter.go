package odmr

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The filtered relay. A Relay run by a Customer knows the domains the
// customer asked for, and passes the session to the local server command
// by command instead of byte for byte, so that a provider cannot use the
// local server as an open relay: a RCPT outside those domains gets
// 550 5.7.1 from the relay and never reaches the local server.
//
// It runs in lockstep: it reads one command from the provider, passes it
// on, and passes back the local server's reply before it reads the next.
// A provider that pipelines is served all the same, one command at a
// time. Only the commands a delivery needs are passed on (HELO, EHLO,
// MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT); STARTTLS, which would hide
// the rest of the session from the relay, and AUTH are refused, and
// dropped from the local server's EHLO reply. A message by DATA must have
// only CRLF line endings: at a bare CR or LF, which the local server might
// take for a line end where the relay does not (SMTP smuggling), the
// relay drops both connections and the message stays at the provider.

// Bounds of the filtered relay.
const (
	relayMaxCommand   = 4096             // a command line from the provider
	relayMaxReplyLine = 4096             // a reply line from the local server
	relayMaxReply     = 100              // lines of one reply
	relayReplyTimeout = 10 * time.Minute // for each reply of the local server (RFC 5321 4.5.3.2.6)
)

// relayCommands are the commands the filtered relay passes on.
var relayCommands = []string{"HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT"}

// relayHiddenExtensions are dropped from the local server's EHLO reply.
var relayHiddenExtensions = []string{"STARTTLS", "AUTH"}

// errRelayBareLineEnding ends a filtered relay at a bare CR or LF in DATA.
var errRelayBareLineEnding = errors.New("odmr: relay: the provider sent a bare CR or LF in a message; connection dropped")

// serveFiltered relays conn to local, refusing recipients outside accept.
func (r *relay) serveFiltered(ctx context.Context, conn, local net.Conn, accept []string) error {
	routing, _ := ctx.Value(routedLocalPartsKey{}).(bool)
	pr := bufio.NewReaderSize(conn, 4096)
	lr := bufio.NewReaderSize(local, 4096)
	f := &relayFilter{conn: conn, local: local, lw: bufio.NewWriterSize(local, 32<<10), pr: pr, lr: lr, accept: accept, routing: routing,
		counts: countsFromContext(ctx)}
	// The local server's greeting is the customer's.
	if err := f.passReply(""); err != nil {
		return err
	}
	for {
		line, err := f.readCommand()
		switch {
		case err == io.EOF:
			return nil
		case errors.Is(err, errRelayLineTooLong):
			if err := f.reply("500 5.5.2 Line too long"); err != nil {
				return err
			}
			continue
		case err != nil:
			return fmt.Errorf("odmr: relay: provider side: %w", err)
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		switch {
		case !slices.Contains(relayCommands, verb):
			err = f.reply("502 5.5.1 Command not available")
		case verb == "RCPT" && strings.HasPrefix(rcptPath(arg), "@"):
			// A source route (RFC 5321 appendix C): the local server
			// might follow it.
			f.counts.count(func(hc *handlerCounts) { hc.refusedRcpts++ })
			err = f.reply("550 5.7.1 Relaying denied: no source routes")
		case verb == "RCPT" && recipientRefusal(rcptPath(arg), accept, f.routing) != "":
			f.counts.count(func(hc *handlerCounts) { hc.refusedRcpts++ })
			err = f.reply("550 5.7.1 " + recipientRefusal(rcptPath(arg), accept, f.routing))
		case verb == "BDAT":
			err = f.bdat(line, arg)
		case verb == "MAIL":
			f.from = rcptPath(arg)
			err = f.pass(line, verb)
		default:
			err = f.pass(line, verb)
		}
		if err != nil {
			return err
		}
		if verb == "QUIT" {
			return nil
		}
	}
}

var errRelayLineTooLong = errors.New("line too long")

type relayFilter struct {
	conn, local net.Conn
	lw          *bufio.Writer // to local, flushed before each reply is read
	pr, lr      *bufio.Reader
	accept      []string
	routing     bool // Customer.AllowRoutedLocalParts

	counts *handlerCounts
	rcpts  int    // recipients the local server took in this transaction
	size   int64  // bytes of the message under way
	last   *Error // the local server's last reply
	// For the log: the sender of the transaction under way and the text
	// of the local server's last reply.
	from      string
	lastReply string
}

// counted counts the local server's reply code to verb: recipients and
// messages it took or refused.
func (f *relayFilter) counted(verb string, code int, end bool) {
	refusal := func(hc *handlerCounts) {
		hc.localRefused++
		if hc.localErr == nil {
			hc.localErr = f.last
		}
	}
	switch {
	case verb == "MAIL" || verb == "RSET" || verb == "EHLO" || verb == "HELO":
		f.rcpts, f.size = 0, 0
	case verb == "RCPT" && code < 400:
		f.rcpts++
	case verb == "RCPT":
		f.counts.count(func(hc *handlerCounts) { hc.refusedRcpts++; refusal(hc) })
	case (verb == "DATA" || verb == "BDAT") && code >= 400 && f.rcpts > 0:
		f.counts.count(func(hc *handlerCounts) { hc.refused++; refusal(hc) })
		f.rcpts, f.size = 0, 0
	case (verb == "DATA" || verb == "BDAT") && end && code < 400:
		f.counts.log.Debug("odmr: message relayed", "from", f.from, "rcpts", f.rcpts, "bytes", f.size, "reply", f.lastReply)
		f.counts.taken(f.rcpts, f.size)
		f.rcpts, f.size = 0, 0
	}
}

// readCommand reads a command line from the provider, without its line
// ending.
func (f *relayFilter) readCommand() (string, error) {
	line, err := readBoundedLine(f.pr, relayMaxCommand)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// readBoundedLine reads a line with its line ending; one over max bytes
// is read to its end and dropped, and errRelayLineTooLong returned.
func readBoundedLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) <= max {
			line = append(line, frag...)
		} else {
			line = line[:0:0]
			max = -1 // too long: drop the rest of the line
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err != nil && len(line) == 0 && max >= 0:
			return nil, err
		case err != nil:
			return nil, io.ErrUnexpectedEOF
		case max < 0:
			return nil, errRelayLineTooLong
		}
		return line, nil
	}
}

// reply sends a reply of the relay's own to the provider.
func (f *relayFilter) reply(s string) error {
	if _, err := io.WriteString(f.conn, s+"\r\n"); err != nil {
		return fmt.Errorf("odmr: relay: provider side: %w", err)
	}
	return nil
}

// pass sends a command to the local server and its reply to the
// provider; after 354 to DATA, the message too, and the reply to its end.
func (f *relayFilter) pass(line, verb string) error {
	if _, err := io.WriteString(f.lw, line+"\r\n"); err != nil {
		return localErrorf("odmr: relay: local server side: %w", err)
	}
	code, err := f.passReplyCode(verb)
	if err != nil {
		return err
	}
	if verb != "DATA" || code != 354 {
		f.counted(verb, code, false)
		return nil
	}
	for {
		l, err := readBoundedLine(f.pr, maxLineLength)
		if err != nil {
			return fmt.Errorf("odmr: relay: provider side: in a message: %w", err)
		}
		body := l[:len(l)-1]
		if len(l) < 2 || l[len(l)-2] != '\r' || bytes.IndexByte(body[:len(body)-1], '\r') >= 0 {
			return errRelayBareLineEnding
		}
		if _, err := f.lw.Write(l); err != nil {
			return localErrorf("odmr: relay: local server side: %w", err)
		}
		if string(l) == ".\r\n" {
			code, err := f.passReplyCode("")
			if err == nil {
				f.counted("DATA", code, true)
			}
			return err
		}
		f.size += int64(len(l))
		if l[0] == '.' {
			f.size-- // dot-stuffing
		}
	}
}

// bdat passes a BDAT command and its chunk on, octets as they are: the
// local server counts them, so there is no end of data to mistake.
func (f *relayFilter) bdat(line, arg string) error {
	sizeArg, _, _ := strings.Cut(strings.TrimSpace(arg), " ")
	size, err := strconv.ParseInt(sizeArg, 10, 64)
	if err != nil || size < 0 {
		// The chunk's length is unknown: the rest of the stream cannot be
		// told from commands.
		f.reply("501 5.5.4 Malformed BDAT")
		return fmt.Errorf("odmr: relay: malformed BDAT from the provider")
	}
	if _, err := io.WriteString(f.lw, line+"\r\n"); err != nil {
		return localErrorf("odmr: relay: local server side: %w", err)
	}
	if _, err := io.CopyN(f.lw, f.pr, size); err != nil {
		return fmt.Errorf("odmr: relay: in a BDAT chunk: %w", err)
	}
	f.size += size
	code, err := f.passReplyCode("")
	if err == nil {
		last := slices.Contains(strings.Fields(strings.ToUpper(arg))[1:], "LAST")
		f.counted("BDAT", code, last)
	}
	return err
}

func (f *relayFilter) passReply(verb string) error {
	_, err := f.passReplyCode(verb)
	return err
}

// passReplyCode reads one reply of the local server, drops the hidden
// extensions from an EHLO reply, and sends it to the provider.
func (f *relayFilter) passReplyCode(verb string) (int, error) {
	if err := f.lw.Flush(); err != nil {
		return 0, localErrorf("odmr: relay: local server side: %w", err)
	}
	f.local.SetReadDeadline(time.Now().Add(relayReplyTimeout))
	var lines []string
	for {
		l, err := readBoundedLine(f.lr, relayMaxReplyLine)
		if err != nil {
			return 0, localErrorf("odmr: relay: local server side: %w", err)
		}
		s := strings.TrimRight(string(l), "\r\n")
		if len(s) < 3 || len(lines) >= relayMaxReply {
			return 0, localErrorf("odmr: relay: local server side: malformed reply %q", oneLine(s))
		}
		lines = append(lines, s)
		if len(s) == 3 || s[3] != '-' {
			break
		}
	}
	code, _ := strconv.Atoi(lines[0][:3])
	f.lastReply = oneLine(lines[0])
	if code >= 400 {
		text := make([]string, len(lines))
		for i, l := range lines {
			text[i] = l[min(4, len(l)):]
		}
		f.last = parseReplyText(code, strings.Join(text, " "))
	}
	if verb == "EHLO" && code == 250 {
		kept := lines[:1]
		for _, l := range lines[1:] {
			kw, _, _ := strings.Cut(strings.ToUpper(l[min(4, len(l)):]), " ")
			if !slices.Contains(relayHiddenExtensions, kw) {
				kept = append(kept, l)
			}
		}
		lines = kept
	}
	var b strings.Builder
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		b.WriteString(l[:3] + sep + l[min(4, len(l)):] + "\r\n")
	}
	if _, err := io.WriteString(f.conn, b.String()); err != nil {
		return 0, fmt.Errorf("odmr: relay: provider side: %w", err)
	}
	return code, nil
}

// rcptPath returns the address of a RCPT argument ("TO:<a@b> NOTIFY=..."):
// what is between the angle brackets, a quoted '>' left in.
func rcptPath(arg string) string {
	_, path, ok := strings.Cut(arg, ":")
	if !ok {
		return ""
	}
	path = strings.TrimLeft(path, " ")
	if !strings.HasPrefix(path, "<") {
		p, _, _ := strings.Cut(path, " ")
		return p
	}
	quoted := false
	for i := 1; i < len(path); i++ {
		switch c := path[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == '>' && !quoted:
			return path[1:i]
		}
	}
	return ""
}
