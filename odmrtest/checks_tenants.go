package odmrtest

// The checks that one customer's mail never reaches another, nor is lost
// on the way (RFC 2645 section 5.2.1): recipient filtering in every
// message of a run, anchored domain matching, refusals that hold for the
// session, and the second account of the fixture, which pulls its own
// mail to show that it is still queued.

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// queueMixed queues a message for recipients in domains; when the
// provider's intake refuses it, for instance because one domain is not
// local to it, the check is skipped.
func queueMixed(p *probe, domains ...string) (*message, error) {
	m := p.newMessage(domains...)
	if err := p.cfg.Enqueue(m.from, m.to, m.body); err != nil {
		return nil, p.skipf("a message for %s could not be queued: %v", strings.Join(domains, " and "), err)
	}
	return m, nil
}

// rcptsIn returns the recipients of m in domain.
func rcptsIn(m *message, domain string) []string {
	var out []string
	for _, r := range m.to {
		if inDomains(r, []string{domain}) {
			out = append(out, r)
		}
	}
	return out
}

// foreignStillQueued pulls ForeignDomain as the second account and fails
// unless each message of msgs arrives for its recipients there, intact:
// mail of the other customer was neither delivered to the first nor lost.
// Without a second account it notes that this was not checked.
func foreignStillQueued(p *probe, why string, msgs ...*message) error {
	if p.cfg.ForeignUser == "" {
		p.note("no second account (ForeignUser): that the other customer's mail is still queued was not checked")
		return nil
	}
	f := p.cfg.ForeignDomain
	pl, err := p.pullAs((*probe).dialForeign, f, sinkOptions{})
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if err := p.expectDeliveredTo(pl, m, rcptsIn(m, f), why); err != nil {
			return err
		}
	}
	return nil
}

func checkEveryMessageFiltered(p *probe) error {
	d, f := d1(p), p.cfg.ForeignDomain
	// A mixed message first, between, and last, with plain ones between.
	var msgs, mixed []*message
	for i, mix := range []bool{true, false, true, false, true} {
		var m *message
		var err error
		switch {
		case !mix:
			m, err = p.queue(d)
		case i == 2:
			m, err = queueMixed(p, f, d)
		default:
			m, err = queueMixed(p, d, f)
		}
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
		if mix {
			mixed = append(mixed, m)
		}
	}
	// The sink fails the check on any recipient outside d.
	pl, err := p.pullDomain(d, sinkOptions{})
	if err != nil {
		return err
	}
	for i, m := range msgs {
		if err := p.expectDeliveredTo(pl, m, rcptsIn(m, d), fmt.Sprintf("message %d of 5 in the run", i+1)); err != nil {
			return err
		}
	}
	decisive := pl.atrn
	if err := foreignStillQueued(p, "the other customer's recipients of a mixed message stay queued for it", mixed...); err != nil {
		return err
	}
	p.decide(decisive)
	return nil
}

func checkOthersStayQueued(p *probe) error {
	if p.cfg.ForeignUser == "" {
		return p.skipf("needs a second account that owns ForeignDomain (ForeignUser, ForeignSecret)")
	}
	d, f := d1(p), p.cfg.ForeignDomain
	a, err := queueMixed(p, d, f)
	if err != nil {
		return err
	}
	b, err := queueMixed(p, f, d, f)
	if err != nil {
		return err
	}
	pl, err := p.pullDomain(d, sinkOptions{})
	if err != nil {
		return err
	}
	for _, m := range []*message{a, b} {
		if err := p.expectDeliveredTo(pl, m, rcptsIn(m, d), "the recipient in "+d+" of a mixed message"); err != nil {
			return err
		}
	}
	decisive := pl.atrn
	if err := foreignStillQueued(p, "delivering a mixed message to one customer must leave the other's recipients queued", a, b); err != nil {
		return err
	}
	p.decide(decisive)
	return nil
}

// lookAlikes are domains that contain d without being d.
func lookAlikes(d string) []string {
	return []string{"x" + d, d + ".evil.test"}
}

func checkLookAlikeNotDelivered(p *probe) error {
	d := d1(p)
	m, err := p.queue(d)
	if err != nil {
		return err
	}
	queued := 0
	for _, la := range lookAlikes(d) {
		lm := p.newMessage(la)
		if err := p.cfg.Enqueue(lm.from, lm.to, lm.body); err != nil {
			p.note("a message for %s could not be queued (%v)", la, err)
			continue
		}
		queued++
	}
	if queued == 0 {
		return p.skipf("the provider queues no mail for domains that look like %s", d)
	}
	// The sink fails the check on any recipient outside d.
	pl, err := p.pullDomain(d, sinkOptions{})
	if err != nil {
		return err
	}
	if err := p.expectDelivered(pl, m, "mail was queued for "+d); err != nil {
		return err
	}
	p.decide(pl.atrn)
	return nil
}

// lookAlikeATRNSteps are ATRNs for domains that merely contain the
// account's first domain.
func lookAlikeATRNSteps(p *probe) []step {
	d := d1(p)
	var s []step
	for _, la := range append([]string{d + ".invalid"}, lookAlikes(d)...) {
		s = append(s, step{"ATRN " + la, la + " is not " + d + ": the account may not pull it, so 450, not 453 or 250", []int{450}})
	}
	return s
}

func checkRefusalHolds(p *probe) error {
	f := p.cfg.ForeignDomain
	m, err := queueMixed(p, f)
	if err != nil {
		return err
	}
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	var script []step
	for _, arg := range []string{f, f, d1(p) + "," + f, f} {
		script = append(script, step{"ATRN " + arg, "the account may not pull " + f + ", however often it asks in the session", []int{450}})
	}
	if _, err := c.play(script); err != nil {
		return err
	}
	decisive := p.decisive
	if err := c.quit("after a 450 the session is still in the authenticated state"); err != nil {
		return err
	}
	if err := foreignStillQueued(p, "the refused ATRNs must leave the other customer's mail queued", m); err != nil {
		return err
	}
	p.decideText(decisive)
	return nil
}

func checkTempFailStaysInDomain(p *probe) error {
	// The other domain: the second account's, or another of the account's.
	other, foreign := p.cfg.ForeignDomain, true
	if p.cfg.ForeignUser == "" {
		if len(p.cfg.Domains) < 2 {
			return p.skipf("needs a second account (ForeignUser) or a second domain")
		}
		other, foreign = p.cfg.Domains[1], false
	}
	d := d1(p)
	m, err := queueMixed(p, d, other)
	if err != nil {
		return err
	}
	pl, err := p.pullDomain(d, sinkOptions{
		rcptReply: func(string) string { return "450 4.2.1 Mailbox busy, try again later" },
	})
	if err != nil {
		return err
	}
	if pl.atrn.Code != 250 {
		return p.failf("ATRN answered %d though mail was queued", pl.atrn.Code)
	}
	decisive := pl.atrn
	// The other domain's pull must carry its own recipient alone: the
	// sink fails the check on the recipient in d.
	login := (*probe).dialLogin
	if foreign {
		login = (*probe).dialForeign
	}
	pl, err = p.pullAs(login, other, sinkOptions{})
	if err != nil {
		return err
	}
	if err := p.expectDeliveredTo(pl, m, rcptsIn(m, other), "the recipient in "+other+" was never tried"); err != nil {
		return err
	}
	if !p.cfg.RetryHeld {
		if err := pullAgain2(p, d, m, rcptsIn(m, d), "the recipient that got 450 stays queued for its own domain"); err != nil {
			return err
		}
	}
	p.decide(decisive)
	return nil
}

// pullAgain2 pulls domain and fails unless m arrives intact for rcpts.
func pullAgain2(p *probe, domain string, m *message, rcpts []string, why string) error {
	pl, err := p.pullDomain(domain, sinkOptions{})
	if err != nil {
		return err
	}
	return p.expectDeliveredTo(pl, m, rcpts, why)
}

func checkMAIL4xx(p *probe) error {
	m, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	pl, err := p.pullDomain(d1(p), sinkOptions{
		mailReply: func(n int) string {
			if n == 1 {
				return "451 4.3.0 Sender refused for now, try again later"
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
	if pl.mails == 0 {
		return p.failf("the provider sent no MAIL though mail was queued")
	}
	decisive := pl.atrn
	if err := pullAgain(p, d1(p), m, "a 451 to MAIL is a temporary failure: the message stays queued, it is not bounced"); err != nil {
		return err
	}
	p.decide(decisive)
	return nil
}

func checkBDATOctets(p *probe) error {
	m, err := p.enqueueNew(p.newMessage8bit(d1(p)))
	if err != nil {
		return err
	}
	// A BDAT size that counts characters, not octets, ends the chunk
	// early: the sink then reads the rest of the text as a command.
	pl, err := p.pullDomain(d1(p), sinkOptions{ext: []string{"PIPELINING", "CHUNKING", "8BITMIME", "SIZE 10240000"}})
	if err != nil {
		return err
	}
	if saidHELO(pl) {
		p.decideText(pl.helo)
		return p.skipf("the provider said HELO, so it saw neither CHUNKING nor 8BITMIME; RFC5321/EHLO-after-swap judges that")
	}
	if err := p.expectDelivered(pl, m, "the customer offers CHUNKING and 8BITMIME"); err != nil {
		return err
	}
	p.decide(pl.atrn)
	if !pl.bdat {
		return p.skipf("the provider sent the 8-bit message with DATA, not BDAT")
	}
	return nil
}

func checkShortDigest(p *probe) error {
	c, err := p.dialEHLO()
	if err != nil {
		return err
	}
	var last *reply
	for _, short := range []func(full string) string{
		func(string) string { return "" },
		func(full string) string { return full[:len(full)/2] },
	} {
		r, err := c.cmd("AUTH CRAM-MD5")
		if err != nil {
			return err
		}
		if r.Code != 334 {
			p.decide(r)
			return p.failf("AUTH CRAM-MD5 answered %d, want 334", r.Code)
		}
		chal, err := base64.StdEncoding.DecodeString(r.Lines[0])
		if err != nil {
			return p.failf("the 334 challenge is not base64: %v", err)
		}
		full := cramResponse(p.cfg.User, p.cfg.Secret, chal)
		user, digest, _ := strings.Cut(full, " ")
		resp := user + " " + short(digest)
		why := fmt.Sprintf("a digest of %d hex digits, a prefix of the right one, is wrong: RFC 2195 section 2 sends all 32", len(short(digest)))
		if last, err = c.expect(base64.StdEncoding.EncodeToString([]byte(resp)), why, 535, 501); err != nil {
			return err
		}
	}
	p.decide(last)
	return nil
}
