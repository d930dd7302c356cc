package odmrtest

// The checks of the role swap and the delivery after it (RFC 2645
// section 5.3), of other commands (5.4) and of the example session (6).

import (
	"fmt"
	"slices"
	"strings"
)

// pullOne queues a message for domain, pulls it with ATRN and checks that
// it arrived intact.
func pullOne(p *probe, domain string, o sinkOptions) (*pull, error) {
	m, err := p.queue(domain)
	if err != nil {
		return nil, err
	}
	c, err := p.dialLogin()
	if err != nil {
		return nil, err
	}
	pl, err := c.atrn("ATRN "+domain, []string{domain}, o)
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

func checkTempFailure(p *probe) error {
	rcptFail, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	dataFail, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{
		rcptReply: func(rcpt string) string {
			if strings.EqualFold(rcpt, rcptFail.to[0]) {
				return "450 4.2.1 Mailbox busy, try again later"
			}
			return ""
		},
		dataReply: func(d *delivery) string {
			if d.token == dataFail.token {
				return "451 4.3.0 Local error, try again later"
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
	if pl.find(dataFail) == nil {
		return p.failf("the message the suite meant to refuse after its data did not arrive")
	}
	if d := pl.find(rcptFail); d != nil {
		return p.failf("the provider sent the data of a message whose only recipient got 450")
	}
	if p.cfg.RetryHeld {
		return p.skipf("the provider holds temporarily failed mail until a retry time (RetryHeld): a second delivery cannot be checked now")
	}
	c, err = p.dialLogin()
	if err != nil {
		return err
	}
	pl, err = c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{})
	if err != nil {
		return err
	}
	for _, m := range []*message{rcptFail, dataFail} {
		if err := p.expectDelivered(pl, m, "a 4xx reply is a temporary failure and the message stays queued"); err != nil {
			return err
		}
	}
	p.decide(pl.atrn)
	return nil
}

func checkPermFailure(p *probe) error {
	rcptFail, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	dataFail, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{
		rcptReply: func(rcpt string) string {
			if strings.EqualFold(rcpt, rcptFail.to[0]) {
				return "550 5.1.1 No such user"
			}
			return ""
		},
		dataReply: func(d *delivery) string {
			if d.token == dataFail.token {
				return "554 5.6.0 Message refused"
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
	if pl.find(dataFail) == nil {
		return p.failf("the message the suite meant to refuse after its data did not arrive")
	}
	if d := pl.find(rcptFail); d != nil {
		return p.failf("the provider sent the data of a message whose only recipient got 550")
	}
	c, err = p.dialLogin()
	if err != nil {
		return err
	}
	pl, err = c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{})
	if err != nil {
		return err
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

func checkSize(p *probe) error {
	m, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	limit := len(m.body) / 2
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{ext: []string{fmt.Sprintf("SIZE %d", limit)}, maxSize: limit})
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
	c, err := p.dial()
	if err != nil {
		return err
	}
	info, err := c.ehlo()
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
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+domain, []string{domain}, sinkOptions{})
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
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{greeting: "554 5.3.2 " + p.cfg.Hostname + " not accepting mail now"})
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
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{cut: func(d *delivery) bool { return d.token == m.token }})
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
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{})
	if err != nil {
		return err
	}
	if err := p.expectDelivered(pl, m, "mail was queued"); err != nil {
		return err
	}
	c, err = p.dialLogin()
	if err != nil {
		return err
	}
	pl, err = c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{})
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
func checkOutcomes(p *probe, ext []string) error {
	d := d1(p)
	var all []*message
	queue := func(domains ...string) (*message, error) {
		m, err := p.queue(domains...)
		all = append(all, m)
		return m, err
	}
	ok, err := queue(d)
	if err != nil {
		return err
	}
	rcptTemp, _ := queue(d)
	rcptPerm, _ := queue(d)
	dataTemp, _ := queue(d)
	dataPerm, _ := queue(d)
	split, err := queue(d, d)
	if err != nil {
		return err
	}
	replies := map[string]string{
		rcptTemp.to[0]: "450 4.2.1 Mailbox busy, try again later",
		rcptPerm.to[0]: "550 5.1.1 No such user",
		split.to[1]:    "452 4.2.2 Mailbox full",
	}
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+d, []string{d}, sinkOptions{
		ext:       ext,
		rcptReply: func(rcpt string) string { return replies[strings.ToLower(rcpt)] },
		dataReply: func(dl *delivery) string {
			switch dl.token {
			case dataTemp.token:
				return "451 4.3.0 Local error, try again later"
			case dataPerm.token:
				return "554 5.6.0 Message refused"
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
	decisive := pl.atrn
	for _, m := range []*message{ok, dataTemp, dataPerm} {
		if err := p.expectDelivered(pl, m, "its recipient was accepted"); err != nil {
			return err
		}
	}
	for _, m := range []*message{rcptTemp, rcptPerm} {
		if pl.find(m) != nil {
			return p.failf("the provider sent the text of a message whose only recipient was refused")
		}
	}
	if dl := pl.find(split); dl == nil {
		return p.failf("the message with one accepted recipient of two did not arrive")
	} else if !sameSet(dl.rcpts, split.to[:1]) {
		return p.failf("the message for %s arrived for %s", strings.Join(split.to, ", "), strings.Join(dl.rcpts, ", "))
	} else if err := p.intact(split, dl); err != nil {
		return err
	}
	if hasExt(ext, "CHUNKING") {
		p.note("BDAT used: %v", pl.bdat)
	}
	if p.cfg.RetryHeld {
		p.note("the second delivery was not checked (RetryHeld)")
		p.decide(decisive)
		return nil
	}
	// The temporary failures come again, and only they.
	c, err = p.dialLogin()
	if err != nil {
		return err
	}
	pl, err = c.atrn("ATRN "+d, []string{d}, sinkOptions{ext: ext})
	if err != nil {
		return err
	}
	for _, m := range []*message{rcptTemp, dataTemp} {
		if err := p.expectDelivered(pl, m, "a 4xx reply leaves the message queued"); err != nil {
			return err
		}
	}
	if dl := pl.find(split); dl == nil || !sameSet(dl.rcpts, split.to[1:]) {
		return p.failf("the recipient %s that got 452 was not delivered again, alone", split.to[1])
	}
	for _, m := range []*message{ok, rcptPerm, dataPerm} {
		for _, dl := range pl.deliveries {
			if dl.token == m.token {
				return p.failf("message %s for %s was sent again", m.token, strings.Join(dl.rcpts, ", "))
			}
		}
	}
	p.decide(decisive)
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
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+d, []string{d}, sinkOptions{})
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
	c, err = p.dialLogin()
	if err != nil {
		return err
	}
	pl, err = c.atrn("ATRN "+d, []string{d}, sinkOptions{ext: []string{"8BITMIME"}})
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
