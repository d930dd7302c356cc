package odmrtest

// The checks of the customer suite: the suite plays a provider, and each
// check judges one requirement of RFC 2645 (or of the RFCs it builds on)
// on the customer, from what it sends and from its own report.

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// closeWait bounds how long the suite waits for the customer, as the
// server of the reversed state, to close the connection after its 221.
const closeWait = 10 * time.Second

func customerChecks() []customerCheck {
	cc := func(section, name string, level Level, run func(*cprobe) error, req string) customerCheck {
		return customerCheck{Check: asCustomerCheck(Check{Section: section, Name: name, Level: level, Requirement: req}), run: run}
	}
	return []customerCheck{
		cc("4", "connects-and-reads-greeting", Must, checkCustGreeting,
			"The customer connects to the provider and waits for its 220 greeting before it sends a command (RFC 5321 section 3.1)."),
		cc("5.1.1", "sends-EHLO", Must, checkCustEHLO,
			"The customer opens the session with EHLO and its domain (RFC 5321 section 4.1.1.1): AUTH and ATRN are offered only in the EHLO reply, so a HELO cannot lead to ATRN."),
		cc("5.1.1", "refuses-provider-without-ATRN", Should, custEndsBeforeATRN(provOptions{ext: []string{"AUTH CRAM-MD5", "ENHANCEDSTATUSCODES"}}, OutcomeFailed, "an EHLO reply without ATRN", judgeNoATRN),
			"When the EHLO reply lacks ATRN the server is no ODMR provider (its reply MUST list ATRN): the customer neither authenticates nor sends ATRN, and reports a failure."),
		cc("5.1.2", "CRAM-MD5", Must, checkCustCRAM,
			"The customer authenticates with CRAM-MD5, the mechanism every implementation supports: its response is the user name, a space and the lower-case hex HMAC-MD5 of the challenge keyed with the secret (RFC 2195 section 2)."),
		cc("5.1.2", "no-PLAIN-in-clear", Should, checkCustNoPlain,
			"Offered only PLAIN and LOGIN on a connection without TLS, the customer does not send its secret (RFC 4954 section 4); it gives up and reports a failure."),
		cc("5.1.2", "no-ATRN-after-535", Must, custEndsBeforeATRN(provOptions{authReply: reply535}, OutcomeAuthFailed, "535 to AUTH", judge535),
			"The session is not authenticated until a success reply to AUTH: after 535 the customer does not send ATRN, and reports an authentication failure."),
		cc("5.2.1", "sends-ATRN-with-its-domains", Must, checkCustATRNSyntax,
			"After 235 the customer sends ATRN with the domains it is configured for, comma-separated, as the ABNF of section 5.2.1 has it (\"ATRN example.org,example.com\")."),
		cc("5.2.1", "waits-for-ATRN-reply", Must, checkCustWaits,
			"The customer waits for the reply to ATRN (RFC 2645 gives ATRN a timeout of at least 10 minutes; the suite waits CustomerConfig.ATRNDelay, 3 s by default), sending nothing meanwhile, and then collects its mail."),
		cc("5.2.1", "453-is-no-mail", Must, checkCust453,
			"A 453 to ATRN means there is no mail: the customer does not reverse the roles, ends the session and does not report a failure."),
		cc("5.2.1", "450-refused", Must, checkCust450,
			"A 450 to ATRN refuses the request: the customer does not reverse the roles, and reports the refusal, not success."),
		cc("5.2.1", "451-temporary", Must, checkCust451,
			"A 451 to ATRN means the provider cannot process it now: the customer does not reverse the roles, and reports a failure to retry later, not success."),
		cc("5.2.1", "530-not-authenticated", Must, checkCust530,
			"A 530 to ATRN says the session is not authenticated: the customer does not reverse the roles, and reports an authentication failure, not success."),
		cc("5.3", "sends-220-after-250", Must, checkCust220,
			"After the 250 to ATRN the roles reverse: the customer, now the SMTP server, sends a 220 greeting and answers the provider's EHLO with 250."),
		cc("5.2.1", "250-then-EHLO-QUIT-is-no-mail", Must, checkCust250Quit,
			"A provider without mail may answer ATRN with 250 and, after the role swap, send QUIT following its EHLO: the customer takes it as no mail, not as a failure."),
		cc("5.3", "receives-mail", Must, checkCustReceives,
			"After the role swap the customer receives mail as an SMTP server: it accepts MAIL, RCPT and DATA, acknowledges the text with 250, and its sink gets the message byte for byte, dot-stuffing undone and 8-bit text kept when it offered 8BITMIME (RFC 5321 section 4.5.2, RFC 6152)."),
		cc("5.3", "per-recipient-refusal", Should, checkCustRcptRefusal,
			"A customer that cannot take a recipient refuses it at RCPT with 4xx or 5xx and still takes the message for the others (RFC 5321 section 4.2.1); needs CustomerConfig.RefusedRecipient."),
		cc("5.3", "QUIT-221", Must, checkCustQuit,
			"The customer, as SMTP server, answers the provider's QUIT with 221 and then closes the connection (RFC 5321 section 4.1.1.10)."),
		cc("5.3", "250-then-QUIT-is-no-mail", Should, checkCustExim,
			"A provider that answers ATRN with 250 and sends QUIT at once, without waiting for the greeting, and half-closes (Exim 4.99 with mail not yet due) leaves the customer with no mail, not a failure."),
		cc("5.3", "provider-cuts-mid-DATA", Must, checkCustCut,
			"When the connection breaks in the middle of a message's text, the customer does not deliver the partial message (RFC 5321 sections 4.1.1.4 and 6.1)."),
		cc("RFC2920", "pipelined-commands-in-reversed-state", Must, checkCustPipelining,
			"A customer that offers PIPELINING in the reversed state answers MAIL, RCPT and DATA sent in one group, each in order, and takes the message (RFC 2920 section 3.1)."),
		cc("RFC3030", "receives-BDAT", Must, checkCustBDAT,
			"A customer that offers CHUNKING in the reversed state takes a message sent as BDAT chunks, the first ending in the middle of a line and the last marked LAST, and its sink gets the octets as sent: no dot-stuffing to undo (RFC 3030 sections 2 and 4). The chunks go in one write when the customer offers PIPELINING."),
		cc("RFC3030", "replies-to-each-chunk", Must, checkCustChunkReply,
			"The customer replies to a BDAT chunk once it has the chunk's octets, even when the chunk ends in the middle of a line and the provider waits for that reply before it sends the next (RFC 3030 section 2), as a provider without PIPELINING does."),
		cc("RFC3030", "provider-cuts-mid-BDAT", Must, checkCustCutBDAT,
			"When the connection breaks inside the last BDAT chunk, before all its octets came, the customer does not deliver the partial message (RFC 3030 section 3, RFC 5321 section 6.1)."),
	}
}

// domainRE is a domain of the ATRN ABNF (RFC 2645 section 5.2.1).
var domainRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$`)

// labelRE is one label of it, a single-label name.
var labelRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$`)

// addressLiteralRE is an address literal of RFC 5321 section 4.1.3, loosely.
var addressLiteralRE = regexp.MustCompile(`^\[[0-9A-Fa-f:.]+\]$|^\[IPv6:[0-9A-Fa-f:.]+\]$`)

// decideEnding makes the way the customer ended the session the decisive
// line: its QUIT, or the connection closed.
func (p *cprobe) decideEnding(quit bool) {
	if quit {
		p.decideText("QUIT")
	} else {
		p.decideText("(connection closed)")
	}
}

// noMailEnd answers an ATRN, if the customer sent one, with 453, and
// returns the customer's outcome: for checks that judge only what comes
// before.
func (p *cprobe) noMailEnd(c *pconn, st *initial) (CustomerOutcome, error) {
	if st.atrn != "" {
		if _, err := c.refuse(reply453); err != nil {
			return CustomerOutcome{}, err
		}
	}
	return p.outcome()
}

// wantNoMail fails unless out reports success or no mail, and no
// message.
func (p *cprobe) wantNoMail(out CustomerOutcome, what string) error {
	switch out.Kind {
	case OutcomeNoMail:
	case OutcomeOK:
		p.note("the customer reports success (%s), not telling no mail from mail", out.Detail)
	case OutcomeUnknown:
		p.noteUnknown()
	default:
		return p.failf("the customer reports %s after %s; no mail is not a failure (RFC 2645 section 5.2.1)", outcomeText(out), what)
	}
	if len(out.Messages) > 0 {
		return p.failf("the customer's sink reports %d messages though the suite sent none", len(out.Messages))
	}
	return nil
}

// wantFailure fails unless out reports a failure; ideal is the kind that
// says exactly what happened.
func (p *cprobe) wantFailure(out CustomerOutcome, ideal OutcomeKind, what string) error {
	switch {
	case out.Kind == ideal:
	case out.Kind == OutcomeUnknown:
		p.noteUnknown()
	case out.Kind == OutcomeFailed:
		p.note("the customer reports a failure without saying which (%s)", out.Detail)
	case out.Kind.failure():
		p.note("the customer reports %s after %s", outcomeText(out), what)
	default:
		return p.failf("the customer reports %s after %s: a refusal is not success", outcomeText(out), what)
	}
	if len(out.Messages) > 0 {
		return p.failf("the customer's sink reports %d messages though the suite sent none", len(out.Messages))
	}
	return nil
}

// noteUnknown notes that the check could not judge the customer's own
// report.
func (p *cprobe) noteUnknown() {
	p.note("the customer's own report is unknown; only the wire and its sink were judged")
}

// wantMail fails unless out reports success.
func (p *cprobe) wantMail(out CustomerOutcome) error {
	switch out.Kind {
	case OutcomeOK:
		return nil
	case OutcomeUnknown:
		p.noteUnknown()
		return nil
	case OutcomeNoMail:
		return p.failf("the customer reports no mail though it accepted a message")
	}
	return p.failf("the customer reports %s though the session ran to its end", outcomeText(out))
}

func checkCustGreeting(p *cprobe) error {
	c, err := p.start()
	if err != nil {
		return err
	}
	st, err := c.serveInitial(provOptions{})
	if err != nil {
		return err
	}
	if len(st.verbs) == 0 {
		return p.failf("the customer closed the connection after the greeting without a command")
	}
	first := st.verbs[0]
	if _, err := p.noMailEnd(c, st); err != nil {
		return err
	}
	p.decideText(first)
	if p.ccfg.GreetingWait < 0 {
		p.note("the probe for a customer that speaks first is off (GreetingWait < 0)")
	}
	return nil
}

func checkCustEHLO(p *cprobe) error {
	c, err := p.start()
	if err != nil {
		return err
	}
	st, err := c.serveInitial(provOptions{})
	if err != nil {
		return err
	}
	if st.hello == "" {
		return p.failf("the customer sent no EHLO (commands: %s)", strings.Join(st.verbs, " "))
	}
	p.decideText(st.hello)
	verb, arg, _ := strings.Cut(st.hello, " ")
	switch {
	case strings.EqualFold(verb, "HELO"):
		return p.failf("the customer sent HELO: only the EHLO reply lists AUTH and ATRN (RFC 2645 section 5.1.1, RFC 4954 section 3)")
	case st.verbs[0] != "EHLO":
		return p.failf("the customer sent %s before EHLO", st.verbs[0])
	}
	switch arg = strings.TrimSpace(arg); {
	case domainRE.MatchString(arg), addressLiteralRE.MatchString(arg):
	case labelRE.MatchString(arg):
		p.note("EHLO gives a single-label name %q; RFC 5321 section 4.1.1.1 wants the fully-qualified domain name or an address literal", arg)
	default:
		return p.failf("EHLO gives %q, neither a domain nor an address literal (RFC 5321 section 4.1.1.1)", arg)
	}
	_, err = p.noMailEnd(c, st)
	return err
}

// loggedIn starts the customer and serves the initial state until it
// has authenticated and sent ATRN.
func (p *cprobe) loggedIn() (*pconn, *initial, error) {
	c, err := p.start()
	if err != nil {
		return nil, nil, err
	}
	st, err := c.login()
	return c, st, err
}

// swapped starts the customer, serves the initial state until its ATRN,
// answers 250 and, once the customer has greeted as the server of the
// reversed state, sends EHLO.
func (p *cprobe) swapped() (*pconn, *ehloInfo, error) {
	c, _, err := p.loggedIn()
	if err != nil {
		return nil, nil, err
	}
	if _, err := c.reverse(); err != nil {
		return nil, nil, err
	}
	info, err := c.ehlo()
	return c, info, err
}

// quitReceived ends the reversed session with QUIT, waits for the
// customer's outcome and fails unless its sink got m for rcpts, byte for
// byte.
func (p *cprobe) quitReceived(c *pconn, m *message, rcpts []string) (CustomerOutcome, error) {
	if _, _, err := c.quit(); err != nil {
		return CustomerOutcome{}, err
	}
	out, err := p.outcome()
	if err != nil {
		return out, err
	}
	return out, p.expectReceived(out, m, rcpts)
}

// custEndsBeforeATRN returns the check that the customer, served the
// initial state shaped by o, ends the session without ATRN and reports a
// failure, ideally of the kind ideal; what names the provider's answer
// for the report. judge looks at what the customer did meanwhile.
func custEndsBeforeATRN(o provOptions, ideal OutcomeKind, what string, judge func(*cprobe, *initial) error) func(*cprobe) error {
	return func(p *cprobe) error {
		c, err := p.start()
		if err != nil {
			return err
		}
		st, err := c.serveInitial(o)
		if err != nil {
			return err
		}
		if err := judge(p, st); err != nil {
			return err
		}
		out, err := p.outcome()
		if err != nil {
			return err
		}
		return p.wantFailure(out, ideal, what)
	}
}

// judgeNoATRN fails a customer that authenticated to a server without
// ATRN.
func judgeNoATRN(p *cprobe, st *initial) error {
	if len(st.mechs) > 0 {
		p.decideText("AUTH " + st.mechs[0])
		return p.failf("the customer sent AUTH %s to a server whose EHLO reply lacks ATRN, which is no ODMR provider (RFC 2645 section 5.1.1)", st.mechs[0])
	}
	if st.closed {
		p.note("the customer closed the connection without QUIT (RFC 5321 section 4.1.1.10 wants QUIT)")
	}
	p.decideEnding(!st.closed)
	return nil
}

func checkCustCRAM(p *cprobe) error {
	c, st, err := p.loggedIn()
	if err != nil {
		return err
	}
	if st.mechs[0] != "CRAM-MD5" {
		p.note("the customer first tried AUTH %s, which was not offered", st.mechs[0])
	}
	decisive := p.decisive
	if _, err := p.noMailEnd(c, st); err != nil {
		return err
	}
	p.decideText(decisive)
	return nil
}

func checkCustNoPlain(p *cprobe) error {
	if p.ccfg.InsecureAuth {
		return p.skipf("the configuration says the customer uses PLAIN or LOGIN without TLS (InsecureAuth)")
	}
	return custEndsBeforeATRN(provOptions{ext: []string{"AUTH PLAIN LOGIN", "ENHANCEDSTATUSCODES", "ATRN"}},
		OutcomeFailed, "an EHLO reply offering only PLAIN and LOGIN in clear text",
		func(p *cprobe, st *initial) error {
			for _, m := range st.mechs {
				p.note("the customer tried AUTH %s, which was not offered, and got 504", m)
			}
			p.decideEnding(!st.closed)
			return nil
		})(p)
}

// judge535 fails a customer that ended without trying AUTH.
func judge535(p *cprobe, st *initial) error {
	if len(st.mechs) == 0 {
		return p.failf("the customer ended the session without AUTH (commands: %s)", strings.Join(st.verbs, " "))
	}
	if n := len(st.mechs); n > 1 {
		p.note("the customer tried AUTH %d times (RFC 4954 section 4 allows it)", n)
	}
	if st.closed {
		p.note("the customer closed the connection without QUIT (RFC 5321 section 4.1.1.10 wants QUIT)")
	}
	p.decideText(reply535)
	return nil
}

func checkCustATRNSyntax(p *cprobe) error {
	c, st, err := p.loggedIn()
	if err != nil {
		return err
	}
	p.decideText(st.atrn)
	verb, arg, hasArg := strings.Cut(st.atrn, " ")
	if verb != "ATRN" {
		p.note("the verb is %q; verbs are case-insensitive (RFC 5321 section 2.4)", verb)
	}
	if !hasArg || arg == "" {
		return p.failf("the customer sent a bare ATRN, which asks for every domain of the account; it is configured for %s", strings.Join(p.ccfg.Domains, ","))
	}
	var got []string
	for _, d := range strings.Split(arg, ",") {
		switch {
		case domainRE.MatchString(d):
		case labelRE.MatchString(d) && slices.ContainsFunc(p.ccfg.Domains, func(x string) bool { return strings.EqualFold(x, d) }):
			p.note("%q is a single-label name, outside the ABNF (which wants two labels or more), as configured", d)
		default:
			return p.failf("%q is not a comma-separated list of domains as the ABNF of RFC 2645 section 5.2.1 has it (no spaces, no empty or trailing labels)", arg)
		}
		got = append(got, d)
	}
	if !sameSet(got, p.ccfg.Domains) || len(got) != len(p.ccfg.Domains) {
		return p.failf("the customer asked for %s; it is configured for %s", arg, strings.Join(p.ccfg.Domains, ","))
	}
	_, err = p.noMailEnd(c, st)
	return err
}

// deliverOne plays a provider with one message for the customer's
// domains: 250 to ATRN, EHLO, the message (MAIL, RCPT and DATA in one
// group when pipelined is set and the customer offers PIPELINING), QUIT.
// It fails unless the customer acknowledges the message with 250.
func (p *cprobe) deliverOne(c *pconn, pipelined bool) (*message, *reply, bool, CustomerOutcome, error) {
	var out CustomerOutcome
	if _, err := c.reverse(); err != nil {
		return nil, nil, false, out, err
	}
	info, err := c.ehlo()
	if err != nil {
		return nil, nil, false, out, err
	}
	m := p.newMessage(p.ccfg.Domains...)
	if info.has("8BITMIME") {
		m = p.newMessage8bit(p.ccfg.Domains...)
	} else {
		p.note("the customer does not offer 8BITMIME: the message was 7-bit")
	}
	s, err := c.deliver(m, m.to, info, pipelined && info.has("PIPELINING"))
	if err != nil {
		return nil, nil, false, out, err
	}
	if len(s.accepted) != len(m.to) {
		return nil, nil, false, out, p.failf("the customer refused recipients in its own domains: %s", replyCodes(s.rcpts))
	}
	if s.final == nil {
		p.decide(s.data)
		return nil, nil, false, out, p.failf("the customer answered DATA with %d, want 354", s.data.Code)
	}
	if s.final.Code != 250 {
		p.decide(s.final)
		return nil, nil, false, out, p.failf("the customer answered the message's text with %d, want 250", s.final.Code)
	}
	p.decide(s.final)
	q, closed, err := c.quit()
	if err != nil {
		return nil, nil, false, out, err
	}
	out, err = p.outcome()
	return m, q, closed, out, err
}

func replyCodes(rs []*reply) string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprint(r.Code))
	}
	return strings.Join(s, ", ")
}

func checkCustWaits(p *cprobe) error {
	c, _, err := p.loggedIn()
	if err != nil {
		return err
	}
	d := p.ccfg.ATRNDelay
	if err := c.expectSilence(d, fmt.Sprintf("while the provider took %v to answer ATRN; the customer waits for the reply at least 10 minutes (RFC 2645 section 5.2.1)", d)); err != nil {
		return err
	}
	m, _, _, out, err := p.deliverOne(c, false)
	if err != nil {
		return err
	}
	if err := p.expectReceived(out, m, m.to); err != nil {
		return err
	}
	p.note("the suite waited %v before its 250, not the 10 minutes of the RFC", d)
	return p.wantMail(out)
}

// refusal runs a session whose ATRN gets reply, and returns the outcome.
func (p *cprobe) refusal(reply string) (CustomerOutcome, error) {
	c, _, err := p.loggedIn()
	if err != nil {
		return CustomerOutcome{}, err
	}
	e, err := c.refuse(reply)
	if err != nil {
		return CustomerOutcome{}, err
	}
	p.noteEnding(e)
	p.decideEnding(e.quit)
	return p.outcome()
}

func checkCust453(p *cprobe) error {
	out, err := p.refusal(reply453)
	if err != nil {
		return err
	}
	return p.wantNoMail(out, "453 to ATRN")
}

func checkCust450(p *cprobe) error {
	out, err := p.refusal(reply450)
	if err != nil {
		return err
	}
	return p.wantFailure(out, OutcomeRefused, "450 to ATRN")
}

func checkCust451(p *cprobe) error {
	out, err := p.refusal(reply451)
	if err != nil {
		return err
	}
	return p.wantFailure(out, OutcomeTryLater, "451 to ATRN")
}

func checkCust530(p *cprobe) error {
	out, err := p.refusal(reply530)
	if err != nil {
		return err
	}
	return p.wantFailure(out, OutcomeAuthFailed, "530 to ATRN")
}

// swapThenQuit answers ATRN with 250, reads the greeting, sends EHLO and
// QUIT, and returns the greeting and the outcome.
func (p *cprobe) swapThenQuit() (*reply, CustomerOutcome, error) {
	c, _, err := p.loggedIn()
	if err != nil {
		return nil, CustomerOutcome{}, err
	}
	g, err := c.reverse()
	if err != nil {
		return nil, CustomerOutcome{}, err
	}
	if _, err := c.ehlo(); err != nil {
		return nil, CustomerOutcome{}, err
	}
	if _, _, err := c.quit(); err != nil {
		return nil, CustomerOutcome{}, err
	}
	out, err := p.outcome()
	return g, out, err
}

func checkCust220(p *cprobe) error {
	g, _, err := p.swapThenQuit()
	if err != nil {
		return err
	}
	p.decide(g)
	return nil
}

func checkCust250Quit(p *cprobe) error {
	_, out, err := p.swapThenQuit()
	if err != nil {
		return err
	}
	p.decideText("QUIT")
	return p.wantNoMail(out, "250 to ATRN, then EHLO and QUIT")
}

func checkCustReceives(p *cprobe) error {
	c, _, err := p.loggedIn()
	if err != nil {
		return err
	}
	m, _, _, out, err := p.deliverOne(c, false)
	if err != nil {
		return err
	}
	if err := p.expectReceived(out, m, m.to); err != nil {
		return err
	}
	return p.wantMail(out)
}

func checkCustRcptRefusal(p *cprobe) error {
	refused := p.ccfg.RefusedRecipient
	if refused == "" {
		return p.skipf("the configuration names no recipient the customer refuses (RefusedRecipient)")
	}
	c, info, err := p.swapped()
	if err != nil {
		return err
	}
	m := p.newMessage(p.ccfg.Domains...)
	s, err := c.deliver(m, append(slices.Clone(m.to), refused), info, false)
	if err != nil {
		return err
	}
	last := s.rcpts[len(s.rcpts)-1]
	p.decide(last)
	switch {
	case last.Code/100 == 2:
		return p.failf("the customer accepted RCPT TO:<%s>, which the configuration says it refuses", refused)
	case len(s.accepted) != len(m.to):
		return p.failf("the customer refused recipients in its own domains: %s", replyCodes(s.rcpts))
	case s.final == nil || s.final.Code != 250:
		return p.failf("after refusing one recipient the customer did not take the message for the others")
	}
	out, err := p.quitReceived(c, m, m.to)
	if err != nil {
		return err
	}
	p.decide(last)
	return p.wantMail(out)
}

func checkCustQuit(p *cprobe) error {
	c, _, err := p.loggedIn()
	if err != nil {
		return err
	}
	_, q, closed, _, err := p.deliverOne(c, false)
	if err != nil {
		return err
	}
	p.decide(q)
	switch {
	case q.Code != 221:
		return p.failf("the customer answered QUIT with %d, want 221", q.Code)
	case !closed:
		return p.failf("the customer did not close the connection after its 221 (RFC 5321 section 4.1.1.10: the receiver sends 221 and then closes)")
	}
	return nil
}

func checkCustExim(p *cprobe) error {
	c, _, err := p.loggedIn()
	if err != nil {
		return err
	}
	if err := c.send(reply250, "QUIT"); err != nil {
		return err
	}
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		p.logLine("# ", "the suite half-closed the connection")
	} else {
		p.note("the connection cannot half-close; the suite kept it open")
	}
	// Whatever the customer sends now (a greeting, a 221) is read until
	// it closes; none of it is judged.
	var seen []string
	c.nc.SetReadDeadline(time.Now().Add(min(closeWait, time.Until(p.deadline)/2)))
	for range maxReplyLines {
		line, err := c.readLine("after 250 and QUIT")
		if err != nil {
			break
		}
		seen = append(seen, line)
	}
	c.nc.SetReadDeadline(p.deadline)
	if len(seen) > 0 {
		p.decideText(strings.Join(seen, " | "))
	} else {
		p.decideText("(nothing)")
	}
	out, err := p.outcome()
	if err != nil {
		return err
	}
	return p.wantNoMail(out, "250 to ATRN and an immediate QUIT")
}

func checkCustCut(p *cprobe) error {
	c, _, err := p.loggedIn()
	if err != nil {
		return err
	}
	if _, err := c.reverse(); err != nil {
		return err
	}
	if _, err := c.ehlo(); err != nil {
		return err
	}
	m := p.newMessage(p.ccfg.Domains...)
	if _, err := c.expect("MAIL FROM:<"+m.from+">", 250, "the customer takes mail"); err != nil {
		return err
	}
	for _, r := range m.to {
		if _, err := c.expect("RCPT TO:<"+r+">", 250, "the recipient is in the customer's domains"); err != nil {
			return err
		}
	}
	if _, err := c.expect("DATA", 354, "recipients were accepted"); err != nil {
		return err
	}
	lines := dotStuff(m.body)
	if err := c.send(lines[:len(lines)/2]...); err != nil {
		return err
	}
	p.logLine("# ", "the suite closes the connection in the middle of the text")
	return p.cutOff(c, m, "text")
}

// cutOff closes the connection in the middle of m's what and checks that
// the customer delivered nothing.
func (p *cprobe) cutOff(c *pconn, m *message, what string) error {
	c.nc.Close()
	out, err := p.outcome()
	if err != nil {
		return err
	}
	p.decideText(fmt.Sprintf("outcome %s, %d messages", out.Kind, len(out.Messages)))
	if received(out, m) != nil {
		return p.failf("the customer's sink got the message whose %s was cut off: a partial message was delivered", what)
	}
	if len(out.Messages) > 0 {
		return p.failf("the customer's sink reports %d messages though none was completed", len(out.Messages))
	}
	p.note("the customer reports %s", outcomeText(out))
	return nil
}

func checkCustPipelining(p *cprobe) error {
	c, info, err := p.swapped()
	if err != nil {
		return err
	}
	if !info.has("PIPELINING") {
		return p.skipf("the customer does not offer PIPELINING")
	}
	m := p.newMessage(p.ccfg.Domains...)
	if info.has("8BITMIME") {
		m = p.newMessage8bit(p.ccfg.Domains...)
	}
	s, err := c.deliver(m, m.to, info, true)
	if err != nil {
		return err
	}
	if len(s.accepted) != len(m.to) {
		return p.failf("the customer refused pipelined recipients in its own domains: %s", replyCodes(s.rcpts))
	}
	if s.final == nil || s.final.Code != 250 {
		p.decide(s.final)
		return p.failf("the customer did not acknowledge the pipelined message with 250")
	}
	out, err := p.quitReceived(c, m, m.to)
	if err != nil {
		return err
	}
	p.decide(s.final)
	return p.wantMail(out)
}

// chunkedStart plays a provider up to the BDAT of one message for the
// customer's domains, with MAIL and RCPT sent and accepted. It skips when
// the customer does not offer CHUNKING.
func (p *cprobe) chunkedStart() (*pconn, *message, *ehloInfo, error) {
	c, info, err := p.swapped()
	if err != nil {
		return nil, nil, nil, err
	}
	if !info.has("CHUNKING") {
		return nil, nil, nil, p.skipf("the customer does not offer CHUNKING")
	}
	m := p.newMessage(p.ccfg.Domains...)
	mail := "MAIL FROM:<" + m.from + ">"
	if info.has("8BITMIME") {
		m = p.newMessage8bit(p.ccfg.Domains...)
		mail += " BODY=8BITMIME"
	}
	if _, err := c.expect(mail, 250, "the customer takes mail"); err != nil {
		return nil, nil, nil, err
	}
	for _, r := range m.to {
		if _, err := c.expect("RCPT TO:<"+r+">", 250, "the recipient is in the customer's domains"); err != nil {
			return nil, nil, nil, err
		}
	}
	return c, m, info, nil
}

// chunk sends one BDAT command and its chunk, in one write, and reads
// the reply.
func (c *pconn) chunk(data string, last bool) (*reply, error) {
	line := fmt.Sprintf("BDAT %d", len(data))
	verb := "BDAT"
	if last {
		line += " LAST"
		verb = "BDAT LAST"
	}
	c.p.logLine("P: ", line)
	c.p.logLine("# ", fmt.Sprintf("%d octets of the message", len(data)))
	if err := c.write(line + "\r\n" + data); err != nil {
		return nil, err
	}
	return c.readReply("in reply to " + verb)
}

func checkCustBDAT(p *cprobe) error {
	c, m, info, err := p.chunkedStart()
	if err != nil {
		return err
	}
	return p.twoChunks(c, m, info.has("PIPELINING"))
}

func checkCustChunkReply(p *cprobe) error {
	c, m, _, err := p.chunkedStart()
	if err != nil {
		return err
	}
	return p.twoChunks(c, m, false)
}

// twoChunks sends m's text as two BDAT chunks, the first ending in the
// middle of a line: in one write when pipelined, else waiting for the
// reply to the first before sending the second. It fails unless both are
// answered 250; then it ends the session and checks that the sink got m.
func (p *cprobe) twoChunks(c *pconn, m *message, pipelined bool) error {
	half := len(m.body) / 2
	var r1, r2 *reply
	var err error
	if pipelined {
		line1, line2 := fmt.Sprintf("BDAT %d", half), fmt.Sprintf("BDAT %d LAST", len(m.body)-half)
		p.logLine("P: ", line1)
		p.logLine("# ", fmt.Sprintf("%d octets of the message, ending mid-line", half))
		p.logLine("P: ", line2)
		p.logLine("# ", fmt.Sprintf("the other %d octets, in the same write", len(m.body)-half))
		if err := c.write(line1 + "\r\n" + m.body[:half] + line2 + "\r\n" + m.body[half:]); err != nil {
			return err
		}
		if r1, err = c.readReply("in reply to BDAT"); err != nil {
			return err
		}
	} else if r1, err = c.chunk(m.body[:half], false); err != nil {
		return err
	}
	if r1.Code != 250 {
		p.decide(r1)
		return p.failf("the customer answered a BDAT chunk ending mid-line with %d, want 250 (RFC 3030 section 2)", r1.Code)
	}
	if pipelined {
		r2, err = c.readReply("in reply to BDAT LAST")
	} else {
		r2, err = c.chunk(m.body[half:], true)
	}
	if err != nil {
		return err
	}
	p.decide(r2)
	if r2.Code != 250 {
		return p.failf("the customer answered BDAT LAST with %d, want 250", r2.Code)
	}
	out, err := p.quitReceived(c, m, m.to)
	if err != nil {
		return err
	}
	return p.wantMail(out)
}

func checkCustCutBDAT(p *cprobe) error {
	c, m, _, err := p.chunkedStart()
	if err != nil {
		return err
	}
	// Announce the whole message as the last chunk, send half and close:
	// the customer reads a clean end of stream inside the chunk.
	half := len(m.body) / 2
	line := fmt.Sprintf("BDAT %d LAST", len(m.body))
	p.logLine("P: ", line)
	p.logLine("# ", fmt.Sprintf("%d of the %d octets, then the suite closes the connection", half, len(m.body)))
	if err := c.write(line + "\r\n" + m.body[:half]); err != nil {
		return err
	}
	return p.cutOff(c, m, "last chunk")
}
