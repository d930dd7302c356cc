package odmrtest

// The checks of the role swap and the delivery after it (RFC 2645
// section 5.3), of other commands (5.4) and of the example session (6).

import (
	"fmt"
	"slices"
	"strings"
)

// pullDomain logs in and pulls domain with ATRN, the suite's customer
// shaped by o.
func (p *probe) pullDomain(domain string, o sinkOptions) (*pull, error) {
	return p.pullAs((*probe).dialLogin, domain, o)
}

// pullAs opens a session with login (dialLogin, or dialForeign for the
// second account) and pulls domain with ATRN, the suite's customer
// shaped by o.
func (p *probe) pullAs(login func(*probe) (*conn, error), domain string, o sinkOptions) (*pull, error) {
	c, err := login(p)
	if err != nil {
		return nil, err
	}
	return c.atrn("ATRN "+domain, []string{domain}, o)
}

// pullOne queues a message for domain, pulls it with ATRN and checks that
// it arrived intact.
func pullOne(p *probe, domain string, o sinkOptions) (*pull, error) {
	m, err := p.queue(domain)
	if err != nil {
		return nil, err
	}
	pl, err := p.pullDomain(domain, o)
	if err != nil {
		return pl, err
	}
	return pl, p.expectDelivered(pl, m, "mail was queued for "+domain)
}

func checkSingleLine250(p *probe) error {
	pl, err := pullOne(p, d1(p), sinkOptions{})
	if err != nil {
		return err
	}
	p.decide(pl.atrn)
	return nil
}

func checkGreetingThenEHLO(p *probe) error {
	pl, err := pullOne(p, d1(p), sinkOptions{})
	if err != nil {
		return err
	}
	p.decideText(pl.helo)
	if p.cfg.GreetingWait < 0 {
		p.note("the probe for a provider that speaks first is off (GreetingWait < 0)")
	}
	if saidHELO(pl) {
		p.note("the provider sent HELO, not EHLO: RFC5321/EHLO-after-swap judges that")
	}
	return nil
}

// saidHELO reports whether the provider greeted the customer with HELO
// though the customer did not refuse its EHLO: it then saw none of the
// customer's extensions.
func saidHELO(pl *pull) bool {
	return pl.helo != "" && !pl.refusedEHLO && !strings.HasPrefix(strings.ToUpper(pl.helo), "EHLO ")
}

func checkEHLOAfterSwap(p *probe) error {
	pl, err := pullOne(p, d1(p), sinkOptions{})
	if err != nil {
		return err
	}
	p.decideText(pl.helo)
	if saidHELO(pl) {
		return p.failf("the provider sent %q, not EHLO, to a customer that never refused EHLO: it cannot see the customer's extensions (RFC 5321 section 3.2, RFC 2645 section 5.3)", pl.helo)
	}
	return nil
}

func checkProviderQuits(p *probe) error {
	pl, err := pullOne(p, d1(p), sinkOptions{})
	if err != nil {
		return err
	}
	p.decideText("QUIT")
	if !pl.quit {
		return p.failf("the provider did not send QUIT")
	}
	return nil
}

// checkRefusals returns the check of what a customer's refusals do: one
// message's only recipient is refused with rcptReply, another message
// with dataReply after its data. 4xx replies leave both queued for the
// next ATRN (RFC 5321 section 4.2.1); 5xx replies end them, never to be
// sent again (the bounce is the queue's job).
func checkRefusals(rcptReply, dataReply string) func(*probe) error {
	temporary := rcptReply[0] == '4'
	return func(p *probe) error {
		rcptFail, err := p.queue(d1(p))
		if err != nil {
			return err
		}
		dataFail, err := p.queue(d1(p))
		if err != nil {
			return err
		}
		pl, err := p.pullDomain(d1(p), sinkOptions{
			rcptReply: func(rcpt string) string {
				if strings.EqualFold(rcpt, rcptFail.to[0]) {
					return rcptReply
				}
				return ""
			},
			dataReply: func(d *delivery) string {
				if d.token == dataFail.token {
					return dataReply
				}
				return ""
			},
		})
		if err != nil {
			return err
		}
		if pl.atrn.Code != 250 {
			return p.failf("ATRN answered %d though mail was queued", pl.atrn.Code)
		}
		switch {
		case pl.find(dataFail) != nil:
		case temporary && tried(pl, rcptFail) && !tried(pl, dataFail):
			// A provider may end the run after a temporary failure
			// (RFC 5321 section 4.5.4.1); the second pull wants both.
			p.note("the run ended after the %s to RCPT, before the other message", rcptReply[:3])
		default:
			return p.failf("the message the suite meant to refuse after its data did not arrive")
		}
		if d := pl.find(rcptFail); d != nil {
			return p.failf("the provider sent the data of a message whose only recipient got %s", rcptReply[:3])
		}
		if temporary && p.cfg.RetryHeld {
			return p.skipf("the provider holds temporarily failed mail until a retry time (RetryHeld): a second delivery cannot be checked now")
		}
		pl, err = p.pullDomain(d1(p), sinkOptions{})
		if err != nil {
			return err
		}
		if temporary {
			for _, m := range []*message{rcptFail, dataFail} {
				if err := p.expectDelivered(pl, m, "a 4xx reply is a temporary failure and the message stays queued"); err != nil {
					return err
				}
			}
			p.decide(pl.atrn)
			return nil
		}
		p.decide(pl.atrn)
		for _, d := range pl.deliveries {
			for _, m := range []*message{rcptFail, dataFail} {
				if d.token == m.token || slices.ContainsFunc(d.rcpts, func(r string) bool { return strings.EqualFold(r, m.to[0]) }) {
					return p.failf("the provider retried %s after a permanent failure", m.to[0])
				}
			}
		}
		if pl.foreign > 0 {
			p.note("the provider also delivered %d messages the suite did not queue (a bounce?); they were left queued", pl.foreign)
		}
		return nil
	}
}

func checkSize(p *probe) error {
	m, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	limit := len(m.body) / 2
	pl, err := p.pullDomain(d1(p), sinkOptions{ext: []string{fmt.Sprintf("SIZE %d", limit)}, maxSize: limit})
	if err != nil {
		return err
	}
	if pl.atrn.Code != 250 {
		return p.failf("ATRN answered %d though mail was queued", pl.atrn.Code)
	}
	p.decide(pl.atrn)
	if saidHELO(pl) {
		return p.skipf("the provider said HELO, so it never saw the SIZE the customer declared; RFC5321/EHLO-after-swap judges that")
	}
	if d := pl.find(m); d != nil {
		return p.failf("the provider sent a %d-byte message to a customer that declared SIZE %d", len(d.data), limit)
	}
	if pl.refusedSize > 0 {
		p.note("the provider tried MAIL with a SIZE over the limit and was refused with 552")
	}
	return nil
}

func checkPipelinedGreeting(p *probe) error {
	if !p.cfg.ReplaysPipelined {
		return p.skipf("the configuration does not say the provider replays bytes pipelined after ATRN (ReplaysPipelined)")
	}
	pl, err := pullOne(p, d1(p), sinkOptions{greeted: true})
	if err != nil {
		return err
	}
	p.decide(pl.atrn)
	return nil
}

// otherCommands are the SMTP commands outside ODMR's four that section
// 5.4 lets a provider refuse with 502.
func otherCommands(p *probe) []string {
	return []string{
		"MAIL FROM:<" + p.cfg.Sender + ">",
		"RCPT TO:<odmrtest@" + d1(p) + ">",
		"DATA",
		"VRFY postmaster",
		"EXPN postmaster",
		"TURN",
		"ETRN " + d1(p),
	}
}

func checkOtherCommands(p *probe) error {
	var decisive *reply
	for _, authenticated := range []bool{false, true} {
		state := "initial"
		var c *conn
		var err error
		if authenticated {
			state = "authenticated"
			c, err = p.dialLogin()
		} else if c, err = p.dial(); err == nil {
			_, err = c.ehlo()
		}
		if err != nil {
			return err
		}
		for _, line := range otherCommands(p) {
			r, err := c.cmd(line)
			if err != nil {
				return err
			}
			verb, _, _ := strings.Cut(line, " ")
			switch {
			case r.Code == 502:
				if decisive == nil {
					decisive = r
				}
				continue
			case verb == "DATA" && r.Code == 354:
				p.decide(r)
				return p.failf("DATA was answered 354 in the %s state: the ODMR port took a message", state)
			case verb == "TURN" && r.Code/100 == 2:
				p.decide(r)
				return p.failf("TURN was answered %d in the %s state: TURN reverses the connection without ATRN's checks", r.Code, state)
			case r.Code/100 == 3:
				p.decide(r)
				return p.failf("%s was answered %d in the %s state, opening an exchange ODMR does not have", verb, r.Code, state)
			}
			p.note("%s: %d in the %s state", verb, r.Code, state)
			decisive = r
		}
		if _, err := c.expect("ATRN "+p.cfg.ForeignDomain, "the session still works after the refused commands", map[bool]int{false: 530, true: 450}[authenticated]); err != nil {
			return err
		}
		if err := c.quit("the session still works after the refused commands"); err != nil {
			return err
		}
	}
	p.decide(decisive)
	return nil
}

func checkExampleSession(p *probe) error {
	domains := p.cfg.Domains[:min(2, len(p.cfg.Domains))]
	m, err := p.queue(domains[len(domains)-1])
	if err != nil {
		return err
	}
	c, info, err := p.dialInfo()
	if err != nil {
		return err
	}
	if !info.has("AUTH") || !info.has("ATRN") || !info.hasMech("CRAM-MD5") {
		return p.failf("the EHLO reply does not offer AUTH CRAM-MD5 and ATRN")
	}
	r, _, err := c.authCRAM(p.cfg.User, p.cfg.Secret)
	if err != nil {
		return err
	}
	if r.Code != 235 {
		p.decide(r)
		return p.failf("AUTH CRAM-MD5 answered %d, want 235", r.Code)
	}
	c.account = p.cfg.Domains
	pl, err := c.atrn("ATRN "+strings.Join(domains, ","), domains, sinkOptions{ext: []string{"SIZE"}})
	if err != nil {
		return err
	}
	if err := p.expectDelivered(pl, m, "the example session delivers"); err != nil {
		return err
	}
	if !pl.quit {
		return p.failf("the session did not end with the provider's QUIT")
	}
	p.decide(pl.atrn)
	return nil
}

// pullAgain pulls domain and fails unless m arrives intact; with
// RetryHeld it skips instead, since the provider may hold m for now.
func pullAgain(p *probe, domain string, m *message, why string) error {
	if p.cfg.RetryHeld {
		return p.skipf("the provider holds mail that was not delivered until a retry time (RetryHeld): the second delivery cannot be checked now")
	}
	pl, err := p.pullDomain(domain, sinkOptions{})
	if err != nil {
		return err
	}
	return p.expectDelivered(pl, m, why)
}

func checkRefusedGreeting(p *probe) error {
	m, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	pl, err := p.pullDomain(d1(p), sinkOptions{greeting: "554 5.3.2 " + p.cfg.Hostname + " not accepting mail now"})
	if err != nil {
		return err
	}
	if pl.atrn.Code != 250 {
		return p.failf("ATRN answered %d though mail was queued", pl.atrn.Code)
	}
	decisive := p.seen
	if err := pullAgain(p, d1(p), m, "the customer refused the session before any transaction, so the mail stays queued"); err != nil {
		return err
	}
	p.decideText(decisive)
	return nil
}

func checkHELOFallback(p *probe) error {
	pl, err := pullOne(p, d1(p), sinkOptions{ehloReply: "502 5.5.1 EHLO not implemented"})
	if err != nil {
		return err
	}
	p.decideText(pl.helo)
	if !strings.HasPrefix(strings.ToUpper(pl.helo), "HELO ") {
		return p.failf("after a 502 to EHLO the provider sent %q, want HELO", pl.helo)
	}
	return nil
}

func checkCutKeepsMail(p *probe) error {
	m, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	pl, err := p.pullDomain(d1(p), sinkOptions{cut: func(d *delivery) bool { return d.token == m.token }})
	if err != nil {
		return err
	}
	if !pl.cut {
		return p.failf("the message to cut the connection on did not arrive")
	}
	decisive := pl.atrn
	if err := pullAgain(p, d1(p), m, "the connection broke before the customer's 250 after the data, so the message was not delivered"); err != nil {
		return err
	}
	p.decide(decisive)
	return nil
}

func checkNotResent(p *probe) error {
	m, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	pl, err := p.pullDomain(d1(p), sinkOptions{})
	if err != nil {
		return err
	}
	if err := p.expectDelivered(pl, m, "mail was queued"); err != nil {
		return err
	}
	pl, err = p.pullDomain(d1(p), sinkOptions{})
	if err != nil {
		return err
	}
	p.decide(pl.atrn)
	for _, d := range pl.deliveries {
		if d.token == m.token {
			return p.failf("message %s was delivered again after the customer's 250", m.token)
		}
	}
	return nil
}

// checkOutcomes delivers messages that the customer answers in every way
// — accepted, refused temporarily or permanently at RCPT or after the
// data, one of two recipients refused — to a customer offering ext, and
// checks that each recipient gets what its reply says: done, queued for
// the next ATRN, or dropped.
//
// A provider may end a run after a refusal and leave the messages it has
// not tried for the next ATRN: RFC 2645 does not say that one ATRN
// empties the queue, RFC 5321 lets a client end a session between
// transactions, and its section 4.5.4.1 lets a client put off a
// destination that failed for now (Exim 4.99.1 sends QUIT after a 4xx,
// or a 5xx after the data). What is due is that no message is lost: the
// check pulls again until every message has had its first try and its
// retry, as long as each run makes progress, and a message left untried
// passes only when a refusal came before the end of its run.
func checkOutcomes(p *probe, ext []string) error {
	om, err := queueOutcomes(p)
	if err != nil {
		return err
	}
	var decisive *reply
	for run := 1; ; run++ {
		pl, err := p.pullDomain(d1(p), om.sinkOptions(ext))
		if err != nil {
			return err
		}
		if pl.atrn.Code != 250 {
			return p.failf("ATRN answered %d though mail was queued", pl.atrn.Code)
		}
		if run == 1 {
			decisive = pl.atrn
			if hasExt(ext, "CHUNKING") {
				p.note("BDAT used: %v", pl.bdat)
			}
		}
		progress, refusal, err := om.judge(p, pl)
		if err != nil {
			return err
		}
		untried, pending := om.left()
		if untried+pending == 0 {
			break
		}
		if untried > 0 && refusal {
			p.note("run %d ended after a refusal, %d of the messages untried; they waited for the next ATRN", run, untried)
		}
		if !progress || untried > 0 && !refusal || run > len(om.all) {
			return om.missing(p, run)
		}
		if p.cfg.RetryHeld {
			p.note("the later deliveries were not checked (RetryHeld)")
			break
		}
	}
	p.decide(decisive)
	return nil
}

// The states of a message of checkOutcomes.
const (
	outcomeUntried = iota // not yet sent
	outcomePending        // refused for now: its retry is due
	outcomeDone
)

// outcomeMessages are the messages of checkOutcomes, one per way the
// customer answers, and where each one stands.
type outcomeMessages struct {
	ok                 *message // accepted
	rcptTemp, rcptPerm *message // its only recipient refused with 4xx, 5xx
	dataTemp, dataPerm *message // refused with 4xx, 5xx after its text
	split              *message // two recipients, the second refused with 452
	rcptReplies        map[string]string
	all                []*message
	state              map[*message]int
}

func queueOutcomes(p *probe) (*outcomeMessages, error) {
	d := d1(p)
	var om outcomeMessages
	for _, mp := range []**message{&om.ok, &om.rcptTemp, &om.rcptPerm, &om.dataTemp, &om.dataPerm} {
		m, err := p.queue(d)
		if err != nil {
			return nil, err
		}
		*mp = m
	}
	var err error
	if om.split, err = p.queue(d, d); err != nil {
		return nil, err
	}
	om.rcptReplies = map[string]string{
		om.rcptTemp.to[0]: "450 4.2.1 Mailbox busy, try again later",
		om.rcptPerm.to[0]: "550 5.1.1 No such user",
		om.split.to[1]:    "452 4.2.2 Mailbox full",
	}
	om.all = []*message{om.ok, om.rcptTemp, om.rcptPerm, om.dataTemp, om.dataPerm, om.split}
	om.state = make(map[*message]int)
	return &om, nil
}

// owner returns the message with recipient rcpt or token, or nil.
func (om *outcomeMessages) owner(rcpt, token string) *message {
	for _, m := range om.all {
		if m.token == token || slices.ContainsFunc(m.to, func(r string) bool { return strings.EqualFold(r, rcpt) }) {
			return m
		}
	}
	return nil
}

// sinkOptions answers a message's first try as its kind wants, and
// accepts its retry.
func (om *outcomeMessages) sinkOptions(ext []string) sinkOptions {
	return sinkOptions{
		ext: ext,
		rcptReply: func(rcpt string) string {
			if m := om.owner(rcpt, ""); m != nil && om.state[m] == outcomeUntried {
				return om.rcptReplies[strings.ToLower(rcpt)]
			}
			return ""
		},
		dataReply: func(dl *delivery) string {
			if m := om.owner("", dl.token); m == nil || om.state[m] != outcomeUntried {
				return ""
			}
			switch dl.token {
			case om.dataTemp.token:
				return "451 4.3.0 Local error, try again later"
			case om.dataPerm.token:
				return "554 5.6.0 Message refused"
			}
			return ""
		},
	}
}

// tried reports whether the provider ran a transaction for m in pl.
func tried(pl *pull, m *message) bool {
	return slices.ContainsFunc(pl.deliveries, func(d *delivery) bool {
		return d.token == m.token || slices.ContainsFunc(append(slices.Clone(d.rcpts), d.refused...), func(r string) bool {
			return slices.ContainsFunc(m.to, func(t string) bool { return strings.EqualFold(r, t) })
		})
	})
}

// judge checks what each message tried in pl got, moves it on, and
// reports whether any message moved and whether the customer refused
// anything in the run.
func (om *outcomeMessages) judge(p *probe, pl *pull) (progress, refusal bool, err error) {
	for _, m := range om.all {
		if !tried(pl, m) {
			continue
		}
		dl := pl.find(m)
		switch om.state[m] {
		case outcomeDone:
			return false, false, p.failf("message %s for %s was sent again", m.token, strings.Join(m.to, ", "))
		case outcomeUntried:
			temp, err := om.first(p, pl, m, dl)
			if err != nil {
				return false, false, err
			}
			refusal = refusal || m != om.ok
			om.state[m] = outcomeDone
			if temp {
				om.state[m] = outcomePending
			}
		case outcomePending:
			if m == om.split {
				if dl == nil || !sameSet(dl.rcpts, m.to[1:]) {
					return false, false, p.failf("the recipient %s that got 452 was not delivered again, alone", m.to[1])
				}
			} else if err := p.expectDelivered(pl, m, "a 4xx reply leaves the message queued"); err != nil {
				return false, false, err
			}
			om.state[m] = outcomeDone
		}
		progress = true
	}
	return progress, refusal, nil
}

// first checks the first try of m: what the customer accepted arrived,
// whole, and what it refused at RCPT did not. temporary says the try
// ended in a temporary failure, so m is due again.
func (om *outcomeMessages) first(p *probe, pl *pull, m *message, dl *delivery) (temporary bool, err error) {
	switch m {
	case om.rcptTemp, om.rcptPerm:
		if dl != nil {
			return false, p.failf("the provider sent the text of a message whose only recipient was refused")
		}
		return m == om.rcptTemp, nil
	case om.split:
		switch {
		case dl == nil:
			return false, p.failf("the message with one accepted recipient of two did not arrive")
		case !sameSet(dl.rcpts, m.to[:1]):
			return false, p.failf("the message for %s arrived for %s", strings.Join(m.to, ", "), strings.Join(dl.rcpts, ", "))
		}
		return true, p.intact(m, dl)
	}
	return m == om.dataTemp, p.expectDelivered(pl, m, "its recipient was accepted")
}

// left counts the messages not tried yet and those whose retry is due.
func (om *outcomeMessages) left() (untried, pending int) {
	for _, m := range om.all {
		switch om.state[m] {
		case outcomeUntried:
			untried++
		case outcomePending:
			pending++
		}
	}
	return untried, pending
}

// missing is the failure for the first message that a run should have
// sent and did not.
func (om *outcomeMessages) missing(p *probe, run int) error {
	for _, m := range om.all {
		switch st := om.state[m]; {
		case st == outcomeUntried:
			return p.failf("the message queued for %s did not arrive in run %d, which no refusal ended", strings.Join(m.to, ", "), run)
		case st == outcomePending && m == om.split:
			return p.failf("the recipient %s that got 452 was not delivered again, alone", m.to[1])
		case st == outcomePending:
			return p.failf("the message queued for %s did not arrive: a 4xx reply leaves the message queued", strings.Join(m.to, ", "))
		}
	}
	return nil
}

func checkPipelining(p *probe) error {
	return checkOutcomes(p, []string{"PIPELINING", "8BITMIME", "SIZE 10240000"})
}

func checkChunking(p *probe) error {
	return checkOutcomes(p, []string{"PIPELINING", "CHUNKING", "8BITMIME", "SIZE 10240000"})
}

func checkPlainOutcomes(p *probe) error {
	return checkOutcomes(p, nil)
}

func has8bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

func check8BitMIME(p *probe) error {
	d := d1(p)
	// To a customer without 8BITMIME: no 8-bit byte may go out.
	m := p.newMessage8bit(d)
	if err := p.enqueue(m); err != nil {
		return err
	}
	pl, err := p.pullDomain(d, sinkOptions{})
	if err != nil {
		return err
	}
	if pl.atrn.Code != 250 {
		return p.failf("ATRN answered %d though mail was queued", pl.atrn.Code)
	}
	if dl := pl.find(m); dl != nil && has8bit(dl.data) {
		p.saw(fmt.Sprintf("%d-byte message with 8-bit text", len(dl.data)))
		return p.failf("the provider sent 8-bit text to a customer that did not offer 8BITMIME (RFC 6152 section 3)")
	} else if dl != nil {
		p.note("the message was converted to 7 bits for the customer without 8BITMIME")
	} else {
		p.note("the message was not sent to the customer without 8BITMIME")
	}
	decisive := pl.atrn
	// To a customer with 8BITMIME: it arrives byte for byte.
	m8, err := p.enqueueNew(p.newMessage8bit(d))
	if err != nil {
		return err
	}
	pl, err = p.pullDomain(d, sinkOptions{ext: []string{"8BITMIME"}})
	if err != nil {
		return err
	}
	if saidHELO(pl) {
		// A provider that says HELO sees no 8BITMIME: the first rule
		// applies. RFC5321/EHLO-after-swap judges the HELO.
		if dl := pl.find(m8); dl != nil && has8bit(dl.data) {
			return p.failf("the provider said HELO, so it was offered no 8BITMIME, and sent 8-bit text (RFC 6152 section 3)")
		}
		p.note("the provider said HELO and so never saw 8BITMIME; the 8-bit delivery was not checked")
		p.decide(decisive)
		return nil
	}
	if err := p.expectDelivered(pl, m8, "the customer offers 8BITMIME"); err != nil {
		return err
	}
	if dl := pl.find(m8); !strings.Contains(strings.ToUpper(dl.params), "BODY=8BITMIME") {
		p.note("MAIL for the 8-bit message had no BODY=8BITMIME parameter: %q", dl.params)
	}
	p.decide(decisive)
	return nil
}
