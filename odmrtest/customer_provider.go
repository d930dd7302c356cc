package odmrtest

// The provider the customer suite plays: a listener, one run of the
// customer against it, and the primitives of a scripted ODMR server
// before the role swap and of an SMTP client after it.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fetchGrace is how long the suite waits, after a check's deadline, for
// the customer's run to return.
const fetchGrace = 5 * time.Second

// maxInitialCommands bounds the commands a customer may send before ATRN.
const maxInitialCommands = 30

// defaultExt is the EHLO reply of the suite's provider after its host
// name: CRAM-MD5, the mechanism RFC 2645 makes mandatory, and ATRN.
var defaultExt = []string{"AUTH CRAM-MD5", "ENHANCEDSTATUSCODES", "ATRN"}

// The suite's replies to ATRN.
const (
	reply250 = "250 2.0.0 OK now reversing the connection"
	reply450 = "450 4.7.1 ATRN request refused"
	reply451 = "451 4.3.0 Unable to process ATRN request now"
	reply453 = "453 4.2.0 You have no mail"
	reply530 = "530 5.7.0 Authentication required"
	reply535 = "535 5.7.8 Authentication credentials invalid"
)

// cprobe is the state of one running check of the customer suite. It
// embeds a probe for the bookkeeping of the result; the probe's cfg
// carries the Hostname and Sender of the messages it composes.
type cprobe struct {
	probe
	ccfg *CustomerConfig

	deadline time.Time
	listener net.Listener
	accepted chan net.Conn
	acceptWG sync.WaitGroup
	extra    atomic.Int32 // connections after the first, closed at once
	cancel   context.CancelFunc
	done     chan CustomerOutcome
	out      *CustomerOutcome

	transcript strings.Builder
}

func newCProbe(ctx context.Context, cfg *CustomerConfig, run *runState) *cprobe {
	return &cprobe{
		probe: probe{ctx: ctx, run: run, cfg: &ProviderConfig{
			Hostname: cfg.Hostname, Sender: cfg.Sender, Timeout: cfg.Timeout,
		}},
		ccfg: cfg,
	}
}

// logLine adds a line to the transcript.
func (p *cprobe) logLine(prefix, line string) {
	p.transcript.WriteString(prefix)
	p.transcript.WriteString(line)
	p.transcript.WriteByte('\n')
}

func (p *cprobe) transcriptText() string { return p.transcript.String() }

// start listens, runs the customer against the listener and returns the
// first connection it makes, with the check's deadline.
func (p *cprobe) start() (*pconn, error) {
	if err := p.ctx.Err(); err != nil {
		return nil, p.skipf("not run: %v", err)
	}
	l, err := p.ccfg.Listen()
	if err != nil {
		return nil, p.failf("the suite cannot listen: %v", err)
	}
	p.listener = l
	p.deadline = time.Now().Add(p.ccfg.Timeout)
	fctx, cancel := context.WithDeadline(p.ctx, p.deadline)
	p.cancel = cancel
	p.done = make(chan CustomerOutcome, 1)
	p.accepted = make(chan net.Conn, 1)
	addr := l.Addr().String()
	go func() { p.done <- p.ccfg.Fetch(fctx, addr) }()
	p.acceptWG.Add(1)
	go func() {
		defer p.acceptWG.Done()
		for first := true; ; first = false {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			if first {
				p.accepted <- nc
				continue
			}
			p.extra.Add(1)
			nc.Close()
		}
	}()
	timer := time.NewTimer(time.Until(p.deadline))
	defer timer.Stop()
	select {
	case nc := <-p.accepted:
		p.conns = append(p.conns, nc)
		nc.SetDeadline(p.deadline)
		p.stops = append(p.stops, context.AfterFunc(p.ctx, func() { nc.SetDeadline(time.Unix(1, 0)) }))
		return &pconn{p: p, nc: nc, br: bufio.NewReaderSize(nc, 4096)}, nil
	case out := <-p.done:
		p.setOutcome(out)
		p.saw("(no connection)")
		return nil, p.failf("the customer finished without connecting to the suite's provider: %s", outcomeText(out))
	case <-timer.C:
		p.saw("(no connection)")
		return nil, p.failf("the customer did not connect within the check's timeout of %v", p.ccfg.Timeout)
	case <-p.ctx.Done():
		return nil, p.skipf("not run: %v", p.ctx.Err())
	}
}

func (p *cprobe) setOutcome(out CustomerOutcome) {
	p.out = &out
	p.logLine("# outcome: ", outcomeText(out))
	for _, m := range out.Messages {
		p.logLine("# received: ", fmt.Sprintf("from <%s> to <%s>, %d bytes", m.From, strings.Join(m.To, ">, <"), len(m.Body)))
	}
	if out.Log != "" {
		p.logLine("# customer log:\n", strings.TrimSuffix(out.Log, "\n"))
	}
}

func outcomeText(out CustomerOutcome) string {
	s := out.Kind.String()
	if out.Detail != "" {
		s += " (" + out.Detail + ")"
	}
	return s
}

// outcome ends the suite's side of the session and waits for the
// customer's run to return. A customer that does not return in time
// fails the check.
func (p *cprobe) outcome() (CustomerOutcome, error) {
	if p.out != nil {
		return *p.out, nil
	}
	for _, nc := range p.conns {
		endConn(nc)
	}
	timer := time.NewTimer(time.Until(p.deadline) + fetchGrace)
	defer timer.Stop()
	select {
	case out := <-p.done:
		p.setOutcome(out)
		if n := p.extra.Load(); n > 0 {
			p.note("the customer opened %d more connections, which the suite closed", n)
		}
		return out, nil
	case <-timer.C:
		return CustomerOutcome{}, p.failf("the customer's run did not return within the check's timeout of %v (Fetch must return once its context ends)", p.ccfg.Timeout)
	case <-p.ctx.Done():
		return CustomerOutcome{}, p.skipf("not finished: %v", p.ctx.Err())
	}
}

// endConn closes nc. A TCP connection is half-closed first and drained
// for a moment, so that bytes the customer sent last do not turn the
// close into a reset that destroys what the suite sent last.
func endConn(nc net.Conn) {
	if cw, ok := nc.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		nc.SetReadDeadline(time.Now().Add(quitWait))
		io.Copy(io.Discard, nc)
	}
	nc.Close()
}

// cleanup stops the customer's run if it is still going, and closes
// everything the check opened.
func (p *cprobe) cleanup() {
	if p.cancel != nil {
		p.cancel()
	}
	p.closeAll()
	if p.listener != nil {
		p.listener.Close()
		p.acceptWG.Wait()
		select {
		case nc := <-p.accepted:
			nc.Close()
		default:
		}
	}
	if p.done != nil && p.out == nil {
		timer := time.NewTimer(fetchGrace)
		defer timer.Stop()
		select {
		case out := <-p.done:
			p.setOutcome(out)
		case <-timer.C:
			p.logLine("# ", "the customer's run had not returned when the check ended")
		}
	}
}

// pconn is the suite's side, as the provider, of the customer's
// connection.
type pconn struct {
	p   *cprobe
	nc  net.Conn
	br  *bufio.Reader
	eof bool // the customer has closed the connection
}

// send writes lines, each with CRLF, in one write.
func (c *pconn) send(lines ...string) error {
	var b strings.Builder
	for _, l := range lines {
		c.p.logLine("P: ", l)
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	return c.write(b.String())
}

func (c *pconn) write(s string) error {
	if _, err := io.WriteString(c.nc, s); err != nil {
		if c.p.ctx.Err() != nil {
			return c.p.skipf("not finished: %v", c.p.ctx.Err())
		}
		return c.p.failf("writing to the customer: %v", err)
	}
	return nil
}

// readLine reads one CRLF-terminated line from the customer; when is
// what the suite was waiting for, for the error. A line that ends
// otherwise, or holds a bare CR or LF, fails the check (RFC 5321 section
// 2.3.8). At the end of the connection c.eof is set.
func (c *pconn) readLine(when string) (string, error) {
	return c.readLineAs(when, false)
}

// readSASL reads a SASL response, which the transcript redacts.
func (c *pconn) readSASL() (string, error) {
	return c.readLineAs("for the SASL response", true)
}

func (c *pconn) readLineAs(when string, redact bool) (string, error) {
	line, err := c.p.readWireLine(c.br, "the customer", func(err error, partial []byte) error {
		return c.readError(err, partial, when)
	})
	if err != nil {
		return "", err
	}
	if redact || c.p.leaksSecret(line) {
		c.p.logLine("C: ", redactAuth(line))
	} else {
		c.p.logLine("C: ", line)
	}
	return line, nil
}

// readError turns a read error into a failure that says what happened.
func (c *pconn) readError(err error, partial []byte, when string) error {
	p := c.p
	switch {
	case p.ctx.Err() != nil:
		return p.skipf("not finished: %v", p.ctx.Err())
	case isTimeout(err), errors.Is(err, os.ErrDeadlineExceeded):
		p.saw("(nothing)")
		if len(partial) > 0 {
			p.saw(fmt.Sprintf("%q (no CRLF)", partial))
		}
		return p.failf("the customer sent nothing %s within the check's timeout of %v", when, p.ccfg.Timeout)
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrClosedPipe):
		c.eof = true
		p.logLine("# ", "the customer closed the connection")
		p.saw("(connection closed)")
		if len(partial) > 0 {
			p.saw(fmt.Sprintf("%q (then closed)", partial))
		}
		return p.failf("the customer closed the connection %s", when)
	}
	p.saw("(" + err.Error() + ")")
	return p.failf("reading from the customer %s: %v", when, err)
}

// readReply reads one reply of the customer's SMTP server, single or
// multi-line, and checks its syntax (RFC 5321 section 4.2).
func (c *pconn) readReply(when string) (*reply, error) {
	r := &reply{}
	for range maxReplyLines {
		line, err := c.readLine(when)
		if err != nil {
			return nil, err
		}
		code, more, text, ok := parseReplyLine(line)
		if !ok {
			c.p.saw(line)
			return nil, c.p.failf("malformed reply line %q %s: want three digits, then a space or a hyphen (RFC 5321 section 4.2)", line, when)
		}
		if r.Code != 0 && code != r.Code {
			c.p.saw(r.String() + " | " + line)
			return nil, c.p.failf("multi-line reply changes its code from %d to %d (RFC 5321 section 4.2.1)", r.Code, code)
		}
		r.Code = code
		r.Lines = append(r.Lines, text)
		if !more {
			c.p.saw(r.String())
			return r, nil
		}
	}
	return nil, c.p.failf("a reply of more than %d lines %s", maxReplyLines, when)
}

// maxReplyLines bounds a reply of the customer.
const maxReplyLines = 100

// expectSilence waits d, during which the customer must say nothing: a
// byte from it, or the end of the connection, fails the check. what
// describes the situation, for the message.
func (c *pconn) expectSilence(d time.Duration, what string) error {
	c.nc.SetReadDeadline(time.Now().Add(d))
	_, err := c.br.Peek(1)
	c.nc.SetReadDeadline(c.p.deadline)
	switch {
	case err == nil:
		early, _ := c.br.Peek(c.br.Buffered())
		c.p.logLine("C: ", strings.TrimSuffix(string(early), "\r\n"))
		c.p.saw(fmt.Sprintf("%q", early))
		c.p.decideText(c.p.seen)
		return c.p.failf("the customer sent %q %s", early, what)
	case isTimeout(err):
		return nil
	}
	return c.readError(err, nil, what)
}

// provOptions shape the provider the suite plays before ATRN.
type provOptions struct {
	// ext are the keyword lines of the EHLO reply after the host name;
	// nil means defaultExt.
	ext []string
	// authReply, if set, is the reply to every AUTH once the customer has
	// sent its response, whatever the response.
	authReply string
}

// initial is what the customer did before ATRN.
type initial struct {
	hello  string   // the first EHLO or HELO line
	ehlo   bool     // the customer sent EHLO
	verbs  []string // the verbs of its commands, in order
	mechs  []string // the mechanisms of its AUTH commands, in order
	authed bool     // an AUTH got 235
	atrn   string   // the ATRN line; "" when the customer ended first
	quit   bool     // it sent QUIT, which got 221
	closed bool     // it closed the connection without QUIT
}

// serveInitial greets the customer and plays the provider of the initial
// and authenticated states until the customer sends ATRN, QUIT or closes
// the connection. A customer that speaks before the greeting, sends ATRN
// before it has authenticated, picks PLAIN or LOGIN without TLS, or sends
// a CRAM-MD5 response that does not verify fails the check.
func (c *pconn) serveInitial(o provOptions) (*initial, error) {
	p := c.p
	if w := p.ccfg.GreetingWait; w > 0 {
		if err := c.expectSilence(w, "before the provider's greeting; a client waits for the greeting (RFC 5321 section 3.1)"); err != nil {
			return nil, err
		}
	}
	if err := c.send("220 " + p.ccfg.Hostname + " ODMR conformance suite (provider) ready"); err != nil {
		return nil, err
	}
	if o.ext == nil {
		o.ext = defaultExt
	}
	st := &initial{}
	for range maxInitialCommands {
		line, err := c.readLine("after the provider's last reply")
		if err != nil {
			if c.eof {
				st.closed = true
				return st, nil
			}
			return nil, err
		}
		if p.leaksSecret(line) {
			p.saw(redactAuth(line))
			p.decideText(p.seen)
			return nil, p.failf("the customer sent its secret in clear text")
		}
		p.saw(line)
		if done, err := c.initialCommand(st, o, line); done || err != nil {
			return st, err
		}
	}
	return nil, p.failf("the customer sent %d commands without ATRN or QUIT", maxInitialCommands)
}

// initialCommand answers one command of the initial or authenticated
// state and reports whether the state is over: ATRN or QUIT.
func (c *pconn) initialCommand(st *initial, o provOptions, line string) (done bool, err error) {
	p := c.p
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	st.verbs = append(st.verbs, verb)
	switch verb {
	case "EHLO", "HELO":
		if strings.TrimSpace(arg) == "" {
			p.decideText(line)
			return true, p.failf("the customer sent %q without a domain (RFC 5321 section 4.1.1.1)", line)
		}
		if st.hello == "" {
			st.hello = line
		}
		if verb == "HELO" {
			return false, c.send("250 " + p.ccfg.Hostname)
		}
		st.ehlo = true
		return false, c.sendReply(250, append([]string{p.ccfg.Hostname}, o.ext...)...)
	case "AUTH":
		return c.auth(st, o, line, arg)
	case "ATRN":
		if !st.authed {
			p.decideText(line)
			return true, p.failf("the customer sent ATRN though it has not authenticated; the session is not authenticated until a success reply to AUTH (RFC 2645 section 5.1.2)")
		}
		st.atrn = line
		return true, nil
	case "QUIT":
		st.quit = true
		return true, c.send("221 2.0.0 " + p.ccfg.Hostname + " closing connection")
	case "NOOP", "RSET":
		return false, c.send("250 2.0.0 OK")
	case "STARTTLS":
		return false, c.send("454 4.7.0 TLS not available")
	}
	return false, c.send("502 5.5.1 Command not implemented; ODMR accepts EHLO, AUTH, ATRN and QUIT")
}

// auth answers AUTH: CRAM-MD5 is verified, a mechanism not offered gets
// 504, and PLAIN or LOGIN without TLS fails the check.
func (c *pconn) auth(st *initial, o provOptions, line, arg string) (done bool, err error) {
	p := c.p
	mech, ir, _ := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	st.mechs = append(st.mechs, mech)
	var offered []string
	for _, e := range o.ext {
		if kw, params, _ := strings.Cut(e, " "); strings.EqualFold(kw, "AUTH") {
			offered = strings.Fields(strings.ToUpper(params))
		}
	}
	switch {
	case !st.ehlo:
		return false, c.send("503 5.5.1 Send EHLO first")
	case st.authed:
		return false, c.send("503 5.5.1 Already authenticated")
	case !slices.Contains(offered, mech):
		return false, c.send("504 5.5.4 Unrecognized authentication mechanism")
	case mech == "PLAIN" || mech == "LOGIN":
		p.decideText(redactAuth(line))
		if ir != "" {
			return true, p.failf("the customer sent AUTH %s with its credentials on a connection without TLS (RFC 4954 section 4)", mech)
		}
		return true, p.failf("the customer chose AUTH %s on a connection without TLS; its next line would carry the secret (RFC 4954 section 4)", mech)
	case mech == "CRAM-MD5":
		return false, c.cram(st, o, ir)
	}
	return false, c.send("504 5.5.4 Unrecognized authentication mechanism")
}

// sendReply writes a reply, multi-line when given several lines.
func (c *pconn) sendReply(code int, lines ...string) error {
	out := make([]string, len(lines))
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		out[i] = fmt.Sprintf("%03d%s%s", code, sep, l)
	}
	return c.send(out...)
}

// redactAuth hides a SASL response: the initial response of an AUTH
// line, or a whole line that is not AUTH.
func redactAuth(line string) string {
	verb, arg, ok := strings.Cut(line, " ")
	if !strings.EqualFold(verb, "AUTH") {
		return "<redacted>"
	}
	if mech, _, hasIR := strings.Cut(arg, " "); ok && hasIR {
		return verb + " " + mech + " <redacted>"
	}
	return line
}

// leaksSecret reports whether line carries the configured secret, as it
// is or in base64 (PLAIN's or LOGIN's encoding).
func (p *cprobe) leaksSecret(line string) bool {
	s := p.ccfg.Secret
	if s == "" {
		return false
	}
	if line == s || (len(s) >= 8 && strings.Contains(line, s)) {
		return true
	}
	for _, f := range strings.Fields(line) {
		dec, err := base64.StdEncoding.DecodeString(f)
		if err != nil {
			continue
		}
		d := string(dec)
		if d == s || strings.HasSuffix(d, "\x00"+s) {
			return true
		}
	}
	return false
}

// cram runs the provider's side of AUTH CRAM-MD5 (RFC 2195): a msg-id
// challenge, and a check of the response against the configured
// credentials.
func (c *pconn) cram(st *initial, o provOptions, ir string) error {
	p := c.p
	if ir != "" {
		p.note("the customer sent an initial response with AUTH CRAM-MD5, which has none (RFC 2195)")
		return c.send("501 5.5.2 CRAM-MD5 takes no initial response")
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(1e9))
	chal := fmt.Sprintf("<%d.%d@%s>", n, time.Now().Unix(), p.ccfg.Hostname)
	if err := c.send("334 " + base64.StdEncoding.EncodeToString([]byte(chal))); err != nil {
		return err
	}
	line, err := c.readSASL()
	if err != nil {
		return err
	}
	if line == "*" {
		p.note("the customer cancelled AUTH CRAM-MD5")
		return c.send("501 5.0.0 Authentication cancelled")
	}
	dec, err := base64.StdEncoding.DecodeString(line)
	if err != nil {
		p.saw("(a response that is not base64)")
		c.send("501 5.5.2 Invalid base64 data")
		return p.failf("the customer's CRAM-MD5 response is not base64 (RFC 4954 section 4)")
	}
	i := bytes.LastIndexByte(dec, ' ')
	if i < 0 {
		p.saw("(a response without a space)")
		c.send("501 5.5.2 Malformed CRAM-MD5 response")
		return p.failf("the customer's CRAM-MD5 response is not a user name, a space and a digest (RFC 2195 section 2)")
	}
	user, digest := string(dec[:i]), string(dec[i+1:])
	p.saw(fmt.Sprintf("%s <digest>", user))
	if o.authReply != "" {
		return c.send(o.authReply)
	}
	want := cramResponse(p.ccfg.User, p.ccfg.Secret, []byte(chal))
	_, want, _ = strings.Cut(want, " ")
	switch {
	case user != p.ccfg.User:
		c.send(reply535)
		return p.failf("the customer authenticated as %q; its configured user is %q", user, p.ccfg.User)
	case digest != want && strings.EqualFold(digest, want):
		c.send(reply535)
		return p.failf("the customer's CRAM-MD5 digest is in upper-case hex; RFC 2195 section 2 wants lower case")
	case digest != want:
		c.send(reply535)
		return p.failf("the customer's CRAM-MD5 response does not verify against the configured secret for challenge %q (RFC 2195 section 2)", chal)
	}
	p.decideText(fmt.Sprintf("%s <digest verified>", user))
	st.authed = true
	return c.send("235 2.7.0 Authentication successful")
}

// login serves the initial state with the defaults and fails unless the
// customer authenticates and sends ATRN.
func (c *pconn) login() (*initial, error) {
	st, err := c.serveInitial(provOptions{})
	if err != nil {
		return nil, err
	}
	return st, c.p.wantATRN(st)
}

// wantATRN fails unless st ended with an ATRN.
func (p *cprobe) wantATRN(st *initial) error {
	switch {
	case st.atrn != "":
		return nil
	case !st.authed && len(st.mechs) == 0:
		return p.failf("the customer ended the session without AUTH (commands: %s)", strings.Join(st.verbs, " "))
	case !st.authed:
		return p.failf("the customer did not authenticate with CRAM-MD5, which the provider offered (it tried %s)", strings.Join(st.mechs, ", "))
	}
	return p.failf("the customer authenticated, then ended the session without ATRN")
}

// ending is how a customer ended the session after a refused ATRN.
type ending struct {
	quit   bool // QUIT, answered 221
	closed bool // closed without QUIT
}

// refuse answers ATRN with reply, then plays the provider of the
// authenticated state until the customer ends the session. A customer
// may send ATRN again (it gets the same reply, twice at most). A
// customer that answers as an SMTP server, as if the roles had reversed,
// fails the check.
func (c *pconn) refuse(reply string) (*ending, error) {
	p := c.p
	if err := c.send(reply); err != nil {
		return nil, err
	}
	again := 0
	for range maxInitialCommands {
		line, err := c.readLine("after the refusal of its ATRN")
		if err != nil {
			if c.eof {
				return &ending{closed: true}, nil
			}
			return nil, err
		}
		p.saw(line)
		if _, _, _, ok := parseReplyLine(line); ok {
			p.decideText(line)
			return nil, p.failf("after %q the customer sent %q: it took the roles as reversed, which only a 250 does (RFC 2645 section 5.3)", reply[:3], line)
		}
		verb, _, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "QUIT":
			return &ending{quit: true}, c.send("221 2.0.0 " + p.ccfg.Hostname + " closing connection")
		case "ATRN":
			if again++; again > 2 {
				return nil, p.failf("the customer sent ATRN again and again after %q", reply[:3])
			}
			err = c.send(reply)
		case "NOOP", "RSET":
			err = c.send("250 2.0.0 OK")
		case "AUTH":
			err = c.send("503 5.5.1 Already authenticated")
		default:
			err = c.send("502 5.5.1 Command not implemented; ODMR accepts EHLO, AUTH, ATRN and QUIT")
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, p.failf("the customer sent %d commands after %q without QUIT", maxInitialCommands, reply[:3])
}

// noteEnding notes how the customer ended the session.
func (p *cprobe) noteEnding(e *ending) {
	if e.closed {
		p.note("the customer closed the connection without QUIT (RFC 5321 section 4.1.1.10 wants QUIT)")
	}
}

// reverse answers ATRN with a 250 and reads the customer's greeting as
// the server of the reversed state, which must be a 220 reply (RFC 2645
// section 5.3).
func (c *pconn) reverse() (*reply, error) {
	if err := c.send(reply250); err != nil {
		return nil, err
	}
	r, err := c.readReply("as its greeting after the 250 to ATRN (RFC 2645 section 5.3)")
	if err != nil {
		return nil, err
	}
	if r.Code != 220 {
		c.p.decide(r)
		return r, c.p.failf("after the 250 to ATRN the customer greeted with %d, want 220 (RFC 2645 section 5.3, RFC 5321 section 4.2)", r.Code)
	}
	return r, nil
}

// cmd sends one SMTP command of the reversed state and reads the reply.
func (c *pconn) cmd(line string) (*reply, error) {
	if err := c.send(line); err != nil {
		return nil, err
	}
	verb, _, _ := strings.Cut(line, " ")
	return c.readReply("in reply to " + verb)
}

// expect sends line and fails unless the reply has the code want.
func (c *pconn) expect(line string, want int, why string) (*reply, error) {
	r, err := c.cmd(line)
	if err != nil {
		return nil, err
	}
	if r.Code != want {
		c.p.decide(r)
		return r, c.p.failf("%s was answered %d, want %d: %s", redact(line), r.Code, want, why)
	}
	return r, nil
}

// ehlo sends the suite's EHLO as the SMTP client of the reversed state.
func (c *pconn) ehlo() (*ehloInfo, error) {
	r, err := c.expect("EHLO "+c.p.ccfg.Hostname, 250, "the customer is an SMTP server after the role swap (RFC 2645 section 5.3)")
	if err != nil {
		return nil, err
	}
	info := &ehloInfo{reply: r, keywords: make(map[string]string)}
	for _, l := range r.Lines[1:] {
		kw, params, _ := strings.Cut(l, " ")
		info.keywords[strings.ToUpper(kw)] = params
	}
	return info, nil
}

// sent is what the customer answered to one message.
type sent struct {
	mail     *reply
	rcpts    []*reply // in the order of the recipients
	data     *reply   // to DATA
	final    *reply   // after the text; nil when DATA was refused
	accepted []string // recipients answered 2xx
}

// deliver sends m, with rcpts as its recipients, through the customer's
// SMTP server: MAIL, RCPT, DATA and the dot-stuffed text. With pipelined
// set (the customer offered PIPELINING) MAIL, the RCPTs and DATA go in
// one write (RFC 2920 section 3.1). It sends the 8-bit parameter when the
// text has 8-bit bytes and SIZE when the customer offered it.
func (c *pconn) deliver(m *message, rcpts []string, info *ehloInfo, pipelined bool) (*sent, error) {
	mail := "MAIL FROM:<" + m.from + ">"
	if has8bit([]byte(m.body)) {
		mail += " BODY=8BITMIME"
	}
	if info.has("SIZE") {
		mail += fmt.Sprintf(" SIZE=%d", len(m.body))
	}
	cmds := []string{mail}
	for _, r := range rcpts {
		cmds = append(cmds, "RCPT TO:<"+r+">")
	}
	cmds = append(cmds, "DATA")
	s := &sent{}
	var replies []*reply
	if pipelined {
		if err := c.send(cmds...); err != nil {
			return nil, err
		}
		for _, cmd := range cmds {
			verb, _, _ := strings.Cut(cmd, " ")
			r, err := c.readReply("in reply to the pipelined " + verb)
			if err != nil {
				return nil, err
			}
			replies = append(replies, r)
		}
	} else {
		for i, cmd := range cmds {
			r, err := c.cmd(cmd)
			if err != nil {
				return nil, err
			}
			replies = append(replies, r)
			if i == 0 && r.Code/100 != 2 {
				c.p.decide(r)
				return nil, c.p.failf("the customer answered %s with %d", mail, r.Code)
			}
			if i == len(rcpts) && len(s.accepted) == 0 && replies[i].Code/100 != 2 {
				// Every recipient refused: no DATA.
				s.mail, s.rcpts = replies[0], replies[1:]
				return s, nil
			}
			if i > 0 && i <= len(rcpts) && r.Code/100 == 2 {
				s.accepted = append(s.accepted, rcpts[i-1])
			}
		}
	}
	s.mail, s.rcpts, s.data = replies[0], replies[1:len(rcpts)+1], replies[len(rcpts)+1]
	if pipelined {
		if s.mail.Code/100 != 2 {
			c.p.decide(s.mail)
			return nil, c.p.failf("the customer answered %s with %d", mail, s.mail.Code)
		}
		for i, r := range s.rcpts {
			if r.Code/100 == 2 {
				s.accepted = append(s.accepted, rcpts[i])
			}
		}
	}
	if s.data.Code != 354 {
		if len(s.accepted) > 0 {
			c.p.decide(s.data)
			return nil, c.p.failf("the customer answered DATA with %d after accepting a recipient, want 354", s.data.Code)
		}
		return s, nil
	}
	if len(s.accepted) == 0 {
		c.p.decide(s.data)
		return nil, c.p.failf("the customer answered DATA with 354 though it refused every recipient (RFC 2920 section 3.1)")
	}
	if err := c.send(dotStuff(m.body)...); err != nil {
		return nil, err
	}
	r, err := c.readReply("after the message's text")
	if err != nil {
		return nil, err
	}
	s.final = r
	return s, nil
}

// dotStuff returns the lines of body, dot-stuffed, and the lone dot that
// ends the text (RFC 5321 section 4.5.2). body ends with CRLF.
func dotStuff(body string) []string {
	lines := strings.Split(strings.TrimSuffix(body, "\r\n"), "\r\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") {
			lines[i] = "." + l
		}
	}
	return append(lines, ".")
}

// quit sends QUIT as the client of the reversed state and reads the
// reply; then it waits a moment for the customer, the server, to close
// the connection. It reports the reply and whether the customer closed.
func (c *pconn) quit() (*reply, bool, error) {
	r, err := c.cmd("QUIT")
	if err != nil {
		return nil, false, err
	}
	closed, err := c.closedWithin(min(closeWait, time.Until(c.p.deadline)/2))
	return r, closed, err
}

// closedWithin waits up to d for the customer to close the connection.
// Anything it sends meanwhile fails the check.
func (c *pconn) closedWithin(d time.Duration) (bool, error) {
	c.nc.SetReadDeadline(time.Now().Add(d))
	b, err := c.br.ReadByte()
	c.nc.SetReadDeadline(c.p.deadline)
	switch {
	case err == nil:
		rest, _ := c.br.Peek(c.br.Buffered())
		c.p.saw(fmt.Sprintf("%q", append([]byte{b}, rest...)))
		return false, c.p.failf("the customer sent more after its 221 reply to QUIT")
	case isTimeout(err):
		return false, nil
	}
	c.eof = true
	c.p.logLine("# ", "the customer closed the connection")
	return true, nil
}

// received finds the message m among those the customer's sink got.
func received(out CustomerOutcome, m *message) *Message {
	for i, got := range out.Messages {
		if sm := tokenRE.FindStringSubmatch(string(headerOf([]byte(got.Body)))); sm != nil && sm[1] == m.token {
			return &out.Messages[i]
		}
	}
	return nil
}

// expectReceived fails unless the customer's sink got m for rcpts, byte
// for byte.
func (p *cprobe) expectReceived(out CustomerOutcome, m *message, rcpts []string) error {
	got := received(out, m)
	if got == nil {
		if len(out.Messages) == 0 {
			return p.failf("the customer acknowledged the message with 250, but its sink reports no message (outcome: %s)", outcomeText(out))
		}
		return p.failf("the customer acknowledged the message with 250, but its sink did not get it; it got %d other messages", len(out.Messages))
	}
	if got.From != m.from {
		return p.failf("the sink got the message from <%s>, sent from <%s>", got.From, m.from)
	}
	if !sameSet(got.To, rcpts) {
		return p.failf("the sink got the message for <%s>, sent for <%s>", strings.Join(got.To, ">, <"), strings.Join(rcpts, ">, <"))
	}
	if got.Body == m.body {
		return nil
	}
	if prefix, ok := strings.CutSuffix(got.Body, m.body); ok {
		if n, ok := traceFields(prefix); ok {
			p.note("the sink got the message with %d trace header fields in front (RFC 5321 section 4.4)", n)
			return nil
		}
	}
	sentLines, recv := strings.SplitAfter(m.body, "\r\n"), strings.SplitAfter(got.Body, "\r\n")
	for i := range min(len(sentLines), len(recv)) {
		if sentLines[i] != recv[i] {
			p.saw(fmt.Sprintf("%q", recv[i]))
			p.decideText(p.seen)
			return p.failf("the message arrived altered: line %d was sent as %q and the sink got %q (RFC 5321 section 4.5.2 dot-stuffing, section 2.3.8 CRLF)", i+1, sentLines[i], recv[i])
		}
	}
	return p.failf("the message arrived altered: %d bytes were sent, the sink got %d", len(m.body), len(got.Body))
}

// traceFields reports whether prefix is only header fields that a server
// puts in front of a message it receives or delivers (RFC 5321 section
// 4.4: Received:, Return-Path:; and Delivered-To:, X-Original-To: of
// common MTAs), and how many.
func traceFields(prefix string) (int, bool) {
	n := 0
	for _, line := range strings.SplitAfter(prefix, "\r\n") {
		switch {
		case line == "":
			// after the last CRLF
		case !strings.HasSuffix(line, "\r\n"):
			return 0, false
		case line[0] == ' ' || line[0] == '\t':
			if n == 0 {
				return 0, false
			}
		default:
			name, _, ok := strings.Cut(line, ":")
			switch strings.ToLower(name) {
			case "received", "return-path", "delivered-to", "x-original-to":
			default:
				return 0, false
			}
			if !ok {
				return 0, false
			}
			n++
		}
	}
	return n, n > 0
}
