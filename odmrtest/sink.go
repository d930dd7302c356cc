package odmrtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// maxMessage bounds a message the sink takes.
const maxMessage = 32 << 20

// quitWait bounds how long the suite waits, after its 221 to the
// provider's QUIT, for the provider to close the connection.
const quitWait = 2 * time.Second

// message is one message the suite queues. Each recipient's local part
// carries the token, so the sink recognizes the message at RCPT time, and
// so does the X-Odmrtest-Token header field at DATA time.
type message struct {
	token string
	from  string
	to    []string
	body  string
}

// newMessage composes a message with one recipient in each domain, and a
// body whose lines exercise dot-stuffing.
func (p *probe) newMessage(domains ...string) *message {
	token := fmt.Sprintf("%s-%d", p.run.id, p.run.seq.Add(1))
	m := &message{token: token, from: p.cfg.Sender}
	for i, d := range domains {
		m.to = append(m.to, fmt.Sprintf("odmrtest-%s-%d@%s", token, i+1, d))
	}
	lines := []string{
		"Date: " + time.Now().UTC().Format("Mon, 02 Jan 2006 15:04:05 -0700"),
		"From: <" + m.from + ">",
		"To: <" + strings.Join(m.to, ">, <") + ">",
		"Subject: odmrtest conformance message " + token,
		"Message-ID: <" + token + "@odmrtest.invalid>",
		"X-Odmrtest-Token: " + token,
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=us-ascii",
		"",
		"This message was queued by the odmrtest conformance suite (RFC 2645).",
		"The lines below must arrive unchanged; SMTP dot-stuffs those that start with a dot.",
		".",
		"..",
		".leading dot",
		"...three dots",
		" . a space then a dot",
		"trailing white space \t ",
		"",
		strings.Repeat("0123456789", 90),
		"last line",
	}
	m.body = strings.Join(lines, "\r\n") + "\r\n"
	return m
}

// newMessage8bit composes a message whose text has 8-bit bytes (UTF-8,
// declared in its header), for domains.
func (p *probe) newMessage8bit(domains ...string) *message {
	m := p.newMessage(domains...)
	m.body = strings.Replace(m.body, "charset=us-ascii", "charset=utf-8\r\nContent-Transfer-Encoding: 8bit", 1)
	m.body = strings.Replace(m.body, "last line\r\n", "Grüße aus Köln, 8-bit text\r\nlast line\r\n", 1)
	return m
}

// enqueue queues m through the configured hook.
func (p *probe) enqueue(m *message) error {
	if p.cfg.Enqueue == nil {
		return p.skipf("needs a queued message and the configuration has no Enqueue hook")
	}
	if err := p.cfg.Enqueue(m.from, m.to, m.body); err != nil {
		return p.failf("could not queue a message for %s: %v", strings.Join(m.to, ", "), err)
	}
	return nil
}

// enqueueNew queues m and returns it.
func (p *probe) enqueueNew(m *message) (*message, error) {
	return m, p.enqueue(m)
}

// queue composes and queues a message for domains.
func (p *probe) queue(domains ...string) (*message, error) {
	m := p.newMessage(domains...)
	return m, p.enqueue(m)
}

// sinkOptions shape the customer's SMTP server of the reversed state.
type sinkOptions struct {
	// greeted: the greeting was already sent, pipelined after ATRN.
	greeted bool
	// ext are the extension lines of the EHLO reply.
	ext []string
	// greeting, if set, replaces the customer's 220 greeting. A greeting
	// with another code refuses the session (RFC 5321 section 3.1): the
	// provider must send QUIT, and nothing else.
	greeting string
	// ehloReply, if set, is the reply to EHLO instead of 250.
	ehloReply string
	// cut, if set, is asked after the data of each message of the suite;
	// true closes the connection instead of replying.
	cut func(d *delivery) bool
	// maxSize, if positive, is the SIZE the customer declared: a MAIL
	// whose SIZE parameter exceeds it gets 552 (RFC 1870 section 6.2).
	maxSize int
	// mailReply, if set, picks the reply to the n-th MAIL of the
	// session, counted from 1; "" means accept.
	mailReply func(n int) string
	// rcptReply, if set, picks the reply to a RCPT; "" means accept.
	rcptReply func(rcpt string) string
	// dataReply, if set, picks the reply after the data of a message of
	// the suite; "" means accept.
	dataReply func(d *delivery) string
}

// delivery is one transaction the provider ran in the reversed state.
type delivery struct {
	from, params string
	rcpts        []string // accepted
	refused      []string
	data         []byte
	token        string
	reply        string // the reply sent after the data
}

// pull is what happened after an ATRN.
type pull struct {
	atrn        *reply
	helo        string // the provider's EHLO or HELO line
	deliveries  []*delivery
	foreign     int  // messages the suite did not queue, answered 451
	refusedSize int  // MAIL commands refused for their SIZE parameter
	dataRefused int  // DATA or BDAT commands refused for want of recipients
	mails       int  // MAIL commands seen
	bdat        bool // the provider used BDAT
	refusedEHLO bool // the sink answered EHLO with ehloReply
	cut         bool // the sink closed the connection in the middle
	quit        bool // the provider sent QUIT
	closed      bool // and closed the connection after the 221
}

// find returns the delivery of m, or nil.
func (pl *pull) find(m *message) *delivery {
	for _, d := range pl.deliveries {
		if d.token == m.token && d.data != nil {
			return d
		}
	}
	return nil
}

// noMail reports whether the provider reversed but sent no message: the
// 250+QUIT answer of section 5.2.1.
func (pl *pull) noMail() bool {
	return pl.atrn != nil && pl.atrn.Code == 250 && len(pl.deliveries) == 0
}

var tokenRE = regexp.MustCompile(`(?mi)^X-Odmrtest-Token: *([a-z0-9-]+)\r$`)

// atrn sends line (an ATRN command) and, on a 250, plays the customer's
// SMTP server until the provider ends the session. domains are the
// domains the ATRN asked for; a recipient outside them fails the check.
func (c *conn) atrn(line string, domains []string, o sinkOptions) (*pull, error) {
	send := line + "\r\n"
	if o.greeted {
		send += c.greetingLine() + "\r\n"
	}
	if err := c.write(send); err != nil {
		return nil, err
	}
	r, err := c.readReply()
	if err != nil {
		return nil, err
	}
	for try := 0; r.Code == 450 && c.permitted(domains) && try < 4 && c.p.cfg.RateLimitWait > 0; try++ {
		// A rate limit (section 5.2.1); the session is still authenticated.
		if o.greeted {
			// The greeting sent after the ATRN reached the provider as a
			// command of the authenticated state: read its refusal.
			if _, err := c.readReply(); err != nil {
				return nil, err
			}
		}
		if err := c.wait(c.p.cfg.RateLimitWait); err != nil {
			return nil, err
		}
		if err := c.write(send); err != nil {
			return nil, err
		}
		if r, err = c.readReply(); err != nil {
			return nil, err
		}
	}
	c.p.decide(r)
	pl := &pull{atrn: r}
	if r.Code == 450 && c.permitted(domains) {
		return pl, c.rateLimited(domains)
	}
	if r.Code != 250 {
		return pl, nil
	}
	if len(r.Lines) > 1 {
		return pl, c.p.failf("the 250 to ATRN has %d lines; customers such as fetchmail read one line and lose sync (RFC 2645 section 5.2.1 shows one)", len(r.Lines))
	}
	return pl, c.serve(pl, domains, o)
}

// rateLimited is the failure for a 450 to an ATRN for domains the
// account may pull, after the retries RateLimitWait allows.
func (c *conn) rateLimited(domains []string) error {
	return c.p.failf("ATRN for %s, which the account may pull, was refused with 450: the provider refuses frequent requests, as section 5.2.1 allows; relax its ATRN rate limit for the suite's account, or set RateLimitWait (-rate-limit-wait)", strings.Join(domains, ","))
}

// atrnReply sends line, an ATRN for domains, and returns the reply; a
// 450 for domains the account may pull is taken as a rate limit and the
// ATRN sent again after RateLimitWait, as atrn does. It is for ATRNs
// whose answer is not 250.
func (c *conn) atrnReply(line string, domains []string) (*reply, error) {
	r, err := c.cmd(line)
	for try := 0; err == nil && r.Code == 450 && c.permitted(domains) && try < 4 && c.p.cfg.RateLimitWait > 0; try++ {
		if err := c.wait(c.p.cfg.RateLimitWait); err != nil {
			return nil, err
		}
		r, err = c.cmd(line)
	}
	return r, err
}

// wait sleeps for d, or until the check is cancelled; the connection's
// deadline moves by d.
func (c *conn) wait(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.p.ctx.Done():
		return c.p.skipf("not finished: %v", c.p.ctx.Err())
	}
	c.deadline = c.deadline.Add(d)
	c.nc.SetDeadline(c.deadline)
	return nil
}

// permitted reports whether every domain is one the account may pull.
func (c *conn) permitted(domains []string) bool {
	for _, d := range domains {
		if !inDomains("@"+d, c.account) {
			return false
		}
	}
	return true
}

func (c *conn) greetingLine() string {
	return "220 " + c.p.cfg.Hostname + " ODMR conformance suite ready to receive mail"
}

// deadline returns the check's deadline for the connection.
func (c *conn) restoreDeadline() {
	c.nc.SetReadDeadline(c.deadline)
}

// serve plays the customer's SMTP server after the role swap.
func (c *conn) serve(pl *pull, domains []string, o sinkOptions) error {
	if !o.greeted {
		if done, err := c.greet(pl, o); done || err != nil {
			return err
		}
	}
	r := &reversed{c: c, pl: pl, domains: domains, o: o,
		pipelining: hasExt(o.ext, "PIPELINING"), chunking: hasExt(o.ext, "CHUNKING")}
	for {
		line, err := c.readLine()
		if err != nil {
			if c.eof {
				return c.p.failf("provider closed the connection in the reversed state without QUIT (RFC 5321 section 4.1.1.10); fetchmail waits for its QUIT")
			}
			return err
		}
		c.p.saw(line)
		if done, err := r.command(line); done || err != nil {
			return err
		}
	}
}

// greet plays the customer's greeting after the 250 to ATRN. It first
// listens for a provider that speaks before the greeting, which fails
// the check. A greeting other than 220 refuses the session and ends it
// (done).
func (c *conn) greet(pl *pull, o sinkOptions) (done bool, err error) {
	p := c.p
	if w := p.cfg.GreetingWait; w > 0 {
		c.nc.SetReadDeadline(time.Now().Add(w))
		_, err := c.br.Peek(1)
		c.restoreDeadline()
		if err == nil {
			early, _ := c.br.Peek(c.br.Buffered())
			p.saw(fmt.Sprintf("%q", early))
			p.decideText(p.seen)
			return true, p.failf("after its 250 to ATRN the provider sent %q before the customer's greeting; the customer speaks first after the role swap (RFC 2645 section 5.3, RFC 5321 section 3.1)", early)
		}
		if !isTimeout(err) {
			return true, c.readError(err, nil)
		}
	}
	greeting := o.greeting
	if greeting == "" {
		greeting = c.greetingLine()
	}
	if err := c.writeLine(greeting); err != nil {
		return true, err
	}
	if !strings.HasPrefix(greeting, "220") {
		return true, c.refused(pl)
	}
	return false, nil
}

// reversed is the customer's SMTP server of the reversed state, one
// method per command the provider may send.
type reversed struct {
	c       *conn
	pl      *pull
	domains []string // the domains the ATRN asked for
	o       sinkOptions

	pipelining, chunking bool      // offered in the EHLO reply
	tx                   *delivery // the transaction under way, if any
}

// command answers one command line and reports whether the session is
// over.
func (r *reversed) command(line string) (done bool, err error) {
	verb, arg, _ := strings.Cut(line, " ")
	switch strings.ToUpper(verb) {
	case "EHLO", "HELO":
		return false, r.hello(line, verb, arg)
	case "MAIL":
		return false, r.mail(line, arg)
	case "RCPT":
		return false, r.rcpt(line, arg)
	case "DATA":
		return r.data()
	case "BDAT":
		return r.bdat(line, arg)
	case "RSET":
		r.keepUnsent()
		return false, r.c.writeReply(250, "2.0.0 Reset")
	case "NOOP":
		return false, r.c.writeReply(250, "2.0.0 OK")
	case "QUIT":
		return true, r.quit()
	}
	// Most likely message text sent after a refused DATA.
	return true, r.c.p.failf("provider sent %q in the reversed state, not an SMTP command it should send", redact(line))
}

// keepUnsent records a transaction that ends without its text, for the
// checks that look at the recipients, and ends it.
func (r *reversed) keepUnsent() {
	if r.tx != nil && r.tx.data == nil {
		r.pl.deliveries = append(r.pl.deliveries, r.tx)
	}
	r.tx = nil
}

func (r *reversed) hello(line, verb, arg string) error {
	c, p, pl := r.c, r.c.p, r.pl
	if strings.TrimSpace(arg) == "" {
		return p.failf("provider sent %q without a domain (RFC 5321 section 4.1.1.1)", line)
	}
	r.tx = nil
	ehlo := strings.EqualFold(verb, "EHLO")
	if ehlo && r.o.ehloReply != "" {
		pl.refusedEHLO = true
		return c.write(r.o.ehloReply + "\r\n")
	}
	pl.helo = line
	if ehlo {
		return c.writeReply(250, append([]string{p.cfg.Hostname}, r.o.ext...)...)
	}
	return c.writeReply(250, p.cfg.Hostname)
}

func (r *reversed) mail(line, arg string) error {
	c, p, pl := r.c, r.c.p, r.pl
	if pl.helo == "" {
		return p.failf("provider sent %q before EHLO (RFC 5321 section 4.1.4)", line)
	}
	if r.tx != nil {
		return p.failf("provider sent MAIL inside a transaction (RFC 5321 section 4.1.4)")
	}
	path, params, ok := parsePath(arg, "FROM:")
	if !ok {
		return p.failf("malformed MAIL command %q (RFC 5321 section 4.1.1.2)", line)
	}
	if r.o.maxSize > 0 && sizeParam(params) > r.o.maxSize {
		pl.refusedSize++
		return c.writeReply(552, "5.3.4 Message size exceeds fixed maximum message size")
	}
	pl.mails++
	if r.o.mailReply != nil {
		if answer := r.o.mailReply(pl.mails); answer != "" {
			return c.write(answer + "\r\n")
		}
	}
	r.tx = &delivery{from: path, params: params}
	return c.writeReply(250, "2.1.0 Sender OK")
}

func (r *reversed) rcpt(line, arg string) error {
	p := r.c.p
	if r.tx == nil {
		return p.failf("provider sent RCPT without MAIL (RFC 5321 section 4.1.4)")
	}
	rcpt, _, ok := parsePath(arg, "TO:")
	if !ok || rcpt == "" {
		return p.failf("malformed RCPT command %q (RFC 5321 section 4.1.1.3)", line)
	}
	if !inDomains(rcpt, r.domains) {
		return p.failf("provider sent a recipient %s, outside the domains the ATRN asked for (%s)", rcpt, strings.Join(r.domains, ","))
	}
	answer := ""
	if r.o.rcptReply != nil {
		answer = r.o.rcptReply(rcpt)
	}
	if answer == "" {
		answer = "250 2.1.5 Recipient OK"
	}
	if strings.HasPrefix(answer, "2") {
		r.tx.rcpts = append(r.tx.rcpts, rcpt)
	} else {
		r.tx.refused = append(r.tx.refused, rcpt)
	}
	return r.c.write(answer + "\r\n")
}

func (r *reversed) data() (done bool, err error) {
	c := r.c
	if r.tx == nil || len(r.tx.rcpts) == 0 {
		if !r.pipelining {
			return true, c.p.failf("provider sent DATA without an accepted recipient (RFC 5321 section 3.3); the customer did not offer PIPELINING")
		}
		// RFC 2920 section 3.1: a pipelined DATA after refused
		// recipients is refused, and no text may follow.
		r.pl.dataRefused++
		r.keepUnsent()
		return false, c.writeReply(554, "5.5.1 No valid recipients")
	}
	if err := c.writeReply(354, "Start mail input; end with <CRLF>.<CRLF>"); err != nil {
		return true, err
	}
	data, err := c.readData()
	if err != nil {
		return true, err
	}
	r.tx.data = data
	return r.endOfMessage()
}

// endOfMessage answers the end of the transaction's text and ends the
// transaction.
func (r *reversed) endOfMessage() (done bool, err error) {
	done, err = r.c.endOfMessage(r.pl, r.tx, r.o)
	r.tx = nil
	return done || err != nil, err
}

func (r *reversed) bdat(line, arg string) (done bool, err error) {
	c, p := r.c, r.c.p
	if !r.chunking {
		return true, p.failf("provider sent BDAT though the customer did not offer CHUNKING (RFC 3030 section 2)")
	}
	size, last, ok := parseBDAT(arg)
	if !ok {
		return true, p.failf("malformed BDAT command %q (RFC 3030 section 2)", line)
	}
	if size > maxMessage {
		return true, p.failf("BDAT chunk of %d bytes", size)
	}
	chunk := make([]byte, size)
	if _, err := io.ReadFull(c.br, chunk); err != nil {
		return true, c.readError(err, nil)
	}
	r.pl.bdat = true
	if r.tx == nil || len(r.tx.rcpts) == 0 {
		// RFC 3030 section 2: the chunk is read, then refused.
		r.pl.dataRefused++
		r.keepUnsent()
		return false, c.writeReply(554, "5.5.1 No valid recipients")
	}
	r.tx.data = append(r.tx.data, chunk...)
	if len(r.tx.data) > maxMessage {
		return true, p.failf("message longer than %d bytes", maxMessage)
	}
	if !last {
		return false, c.writeReply(250, fmt.Sprintf("2.0.0 %d octets received", size))
	}
	if r.tx.data == nil {
		r.tx.data = []byte{}
	}
	return r.endOfMessage()
}

// quit answers QUIT with 221 and waits a moment for the provider to
// close the connection.
func (r *reversed) quit() error {
	c, p, pl := r.c, r.c.p, r.pl
	r.keepUnsent()
	pl.quit = true
	if err := c.writeReply(221, "2.0.0 "+p.cfg.Hostname+" closing connection"); err != nil {
		return err
	}
	c.nc.SetReadDeadline(time.Now().Add(min(quitWait, p.cfg.Timeout)))
	b, err := c.br.ReadByte()
	c.restoreDeadline()
	switch {
	case err == nil:
		p.saw(fmt.Sprintf("%q...", b))
		return p.failf("provider sent more after QUIT and the customer's 221")
	case isTimeout(err):
		p.note("the provider did not close the connection after the 221 to its QUIT; the suite closed it")
	default:
		pl.closed = true
	}
	return nil
}

// refused plays a customer that refused the session in its greeting: the
// provider, as an SMTP client, sends QUIT and nothing else (RFC 5321
// section 3.1), and the customer answers 221.
func (c *conn) refused(pl *pull) error {
	p := c.p
	line, err := c.readLine()
	if err != nil {
		if c.eof {
			return p.failf("after the customer's refusing greeting the provider closed the connection without QUIT; RFC 5321 section 3.1 makes the server wait for QUIT")
		}
		return err
	}
	p.saw(line)
	if !strings.EqualFold(line, "QUIT") {
		return p.failf("after the customer's refusing greeting the provider sent %q, want QUIT (RFC 5321 section 3.1)", redact(line))
	}
	pl.quit = true
	return c.writeReply(221, "2.0.0 "+p.cfg.Hostname+" closing connection")
}

// endOfMessage answers the end of a message's text, by DATA or BDAT
// LAST, and reports whether the session is over (the sink cut it).
func (c *conn) endOfMessage(pl *pull, tx *delivery, o sinkOptions) (bool, error) {
	if m := tokenRE.FindSubmatch(headerOf(tx.data)); m != nil {
		tx.token = string(m[1])
	}
	if tx.token != "" && o.cut != nil && o.cut(tx) {
		tx.reply = "(connection closed)"
		pl.deliveries = append(pl.deliveries, tx)
		pl.cut = true
		c.nc.Close()
		return true, nil
	}
	answer := ""
	switch {
	case tx.token == "":
		pl.foreign++
		answer = "451 4.3.0 Not a message of the ODMR conformance suite: keep it queued"
	case o.dataReply != nil:
		answer = o.dataReply(tx)
	}
	if answer == "" {
		answer = "250 2.0.0 Message accepted"
	}
	tx.reply = answer
	pl.deliveries = append(pl.deliveries, tx)
	return false, c.write(answer + "\r\n")
}

// parseBDAT parses the argument of BDAT: a size, then LAST or nothing.
func parseBDAT(arg string) (size int, last, ok bool) {
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 {
		return 0, false, false
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n < 0 {
		return 0, false, false
	}
	if len(f) == 2 {
		if !strings.EqualFold(f[1], "LAST") {
			return 0, false, false
		}
		last = true
	}
	return n, last, true
}

// readData reads message text up to the lone dot and undoes
// dot-stuffing. Every line must end in CRLF.
func (c *conn) readData() ([]byte, error) {
	var out bytes.Buffer
	for {
		line, err := c.readLine()
		if err != nil {
			return nil, err
		}
		if line == "." {
			return out.Bytes(), nil
		}
		line = strings.TrimPrefix(line, ".")
		out.WriteString(line)
		out.WriteString("\r\n")
		if out.Len() > maxMessage {
			return nil, c.p.failf("message longer than %d bytes", maxMessage)
		}
	}
}

// writeReply writes a reply, multi-line when given several lines, in one
// write.
func (c *conn) writeReply(code int, lines ...string) error {
	var b strings.Builder
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		fmt.Fprintf(&b, "%03d%s%s\r\n", code, sep, l)
	}
	return c.write(b.String())
}

// hasExt reports whether the EHLO extension lines include keyword.
func hasExt(ext []string, keyword string) bool {
	for _, e := range ext {
		if kw, _, _ := strings.Cut(e, " "); strings.EqualFold(kw, keyword) {
			return true
		}
	}
	return false
}

// sizeParam returns the value of the SIZE parameter of MAIL, or 0.
func sizeParam(params string) int {
	for _, f := range strings.Fields(params) {
		if k, v, ok := strings.Cut(f, "="); ok && strings.EqualFold(k, "SIZE") {
			n, err := strconv.Atoi(v)
			if err == nil {
				return n
			}
		}
	}
	return 0
}

// headerOf returns the header section of a message, with its last CRLF.
func headerOf(data []byte) []byte {
	if i := bytes.Index(data, []byte("\r\n\r\n")); i >= 0 {
		return data[:i+2]
	}
	return data
}

// parsePath parses "FROM:<path> params" or "TO:<path> params". A space
// after the colon, as in RFC 821's examples, is tolerated.
func parsePath(arg, prefix string) (path, params string, ok bool) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", "", false
	}
	rest := strings.TrimLeft(arg[len(prefix):], " ")
	if !strings.HasPrefix(rest, "<") {
		return "", "", false
	}
	end := strings.IndexByte(rest, '>')
	if end < 0 {
		return "", "", false
	}
	path = rest[1:end]
	// A source route (RFC 5321 section 4.1.2) is ignored.
	if strings.HasPrefix(path, "@") {
		if i := strings.IndexByte(path, ':'); i >= 0 {
			path = path[i+1:]
		}
	}
	return path, strings.TrimSpace(rest[end+1:]), true
}

// inDomains reports whether addr's domain is one of domains, ignoring
// case and a trailing dot.
func inDomains(addr string, domains []string) bool {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return false
	}
	d := strings.TrimSuffix(addr[i+1:], ".")
	for _, x := range domains {
		if strings.EqualFold(d, strings.TrimSuffix(x, ".")) {
			return true
		}
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// intact checks that d is m as queued, byte for byte. Header fields that
// the provider's intake prepended (trace fields such as Received) are
// allowed and noted.
func (p *probe) intact(m *message, d *delivery) error {
	got := string(d.data)
	if got == m.body {
		return nil
	}
	if pre, ok := strings.CutSuffix(got, m.body); ok && headerBlockRE.MatchString(pre) {
		var names []string
		for _, l := range strings.Split(strings.TrimSuffix(pre, "\r\n"), "\r\n") {
			if n, _, ok := strings.Cut(l, ":"); ok && l[0] != ' ' && l[0] != '\t' {
				names = append(names, n)
			}
		}
		p.note("the provider prepended header fields %s", strings.Join(names, ", "))
		return nil
	}
	sent, recv := strings.SplitAfter(m.body, "\r\n"), strings.SplitAfter(got, "\r\n")
	for i := range min(len(sent), len(recv)) {
		if sent[i] != recv[i] {
			p.saw(fmt.Sprintf("%q", recv[i]))
			p.decideText(p.seen)
			return p.failf("message %s arrived altered: line %d was sent as %q and received as %q (RFC 5321 section 4.5.2 dot-stuffing, section 2.3.8 CRLF)", m.token, i+1, sent[i], recv[i])
		}
	}
	return p.failf("message %s arrived altered: %d bytes were sent, %d received", m.token, len(m.body), len(got))
}

var headerBlockRE = regexp.MustCompile(`^([!-9;-~]+:[^\r\n]*\r\n([ \t][^\r\n]*\r\n)*)+$`)

// expectDeliveredTo fails unless m arrived intact in pl for exactly
// rcpts, some of its recipients.
func (p *probe) expectDeliveredTo(pl *pull, m *message, rcpts []string, why string) error {
	if pl.atrn.Code != 250 {
		return p.failf("ATRN answered %d though a message was queued for the domains: %s", pl.atrn.Code, why)
	}
	d := pl.find(m)
	if d == nil {
		return p.failf("the message queued for %s did not arrive for %s: %s", strings.Join(m.to, ", "), strings.Join(rcpts, ", "), why)
	}
	if err := p.intact(m, d); err != nil {
		return err
	}
	if !sameSet(d.rcpts, rcpts) {
		return p.failf("message %s arrived for %s, want %s: %s", m.token, strings.Join(d.rcpts, ", "), strings.Join(rcpts, ", "), why)
	}
	return nil
}

// expectDelivered fails unless m arrived intact in pl.
func (p *probe) expectDelivered(pl *pull, m *message, why string) error {
	if pl.atrn.Code != 250 {
		return p.failf("ATRN answered %d though a message was queued for the domains: %s", pl.atrn.Code, why)
	}
	d := pl.find(m)
	if d == nil {
		return p.failf("the message queued for %s did not arrive: %s", strings.Join(m.to, ", "), why)
	}
	if err := p.intact(m, d); err != nil {
		return err
	}
	if !sameSet(d.rcpts, m.to) {
		return p.failf("message %s arrived for %s, queued for %s", m.token, strings.Join(d.rcpts, ", "), strings.Join(m.to, ", "))
	}
	return nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		found := false
		for _, y := range b {
			found = found || strings.EqualFold(x, y)
		}
		if !found {
			return false
		}
	}
	return true
}
