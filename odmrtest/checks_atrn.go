package odmrtest

// The checks of ATRN in the authenticated state (RFC 2645 sections 5.2
// and 5.2.1).

import (
	"strings"
)

func checkATRNBeforeAuth(p *probe) error {
	if p.cfg.Enqueue != nil {
		// With mail queued, a provider that does not check would deliver.
		if _, err := p.queue(d1(p)); err != nil {
			return err
		}
	}
	why := "ATRN MUST be rejected with 530 when the session is not authenticated"
	return exchange((*probe).dial, "the session is still in the initial state", steps(
		step{"ATRN " + d1(p), why + " (here before EHLO)", []int{530}},
		step{"EHLO " + p.cfg.Hostname, "EHLO is the same as in ESMTP (RFC 2645 section 5.1.1)", []int{250}},
		step{"ATRN " + d1(p), why, []int{530}},
		step{"ATRN", why + " (here a bare ATRN)", []int{530}},
	))(p)
}

// invalidDomainSteps are ATRNs whose arguments break the ABNF of RFC
// 2645 section 5.2.1.
func invalidDomainSteps(p *probe) []step {
	var s []step
	for _, arg := range []string{"exa_mple.org", "example..org", "-example.org", d1(p) + ",,"} {
		s = append(s, step{"ATRN " + arg, "an argument outside the ABNF is a syntax error", []int{501, 450}})
	}
	return s
}

// foreignDomainSteps is an ATRN for the domain the account may not pull.
func foreignDomainSteps(p *probe) []step {
	f := p.cfg.ForeignDomain
	return []step{{"ATRN " + f, "the account may not pull " + f, []int{450}}}
}

func checkUnauthorizedDomain(p *probe) error {
	m, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	both := []string{d1(p), p.cfg.ForeignDomain}
	pl, err := c.atrn("ATRN "+strings.Join(both, ","), both, sinkOptions{})
	if err != nil {
		return err
	}
	decisive := pl.atrn
	if pl.atrn.Code != 450 {
		return p.failf("ATRN naming %s, which the account may not pull, was answered %d, want 450 and no mail for any domain", p.cfg.ForeignDomain, pl.atrn.Code)
	}
	// After the 450 the provider is still the server: QUIT gets 221.
	if err := c.quit("after a 450 the session is still in the authenticated state, no delivery started"); err != nil {
		return err
	}
	// The mail is still queued: a correct ATRN gets it.
	pl, err = p.pullDomain(d1(p), sinkOptions{})
	if err != nil {
		return err
	}
	if err := p.expectDelivered(pl, m, "the refused ATRN must leave the mail queued"); err != nil {
		return err
	}
	p.decide(decisive)
	return nil
}

// drain pulls the domains until the provider says it has no mail, taking
// the suite's own leftover messages. It returns the decisive no-mail
// answer: a 453 reply, or a 250 reply followed by EHLO and QUIT.
func drain(p *probe, domains []string) (*conn, *pull, error) {
	line := "ATRN " + strings.Join(domains, ",")
	for range 3 {
		c, err := p.dialLogin()
		if err != nil {
			return nil, nil, err
		}
		pl, err := c.atrn(line, domains, sinkOptions{})
		if err != nil {
			return nil, nil, err
		}
		switch {
		case pl.atrn.Code == 453:
			return c, pl, nil
		case pl.atrn.Code != 250:
			return nil, nil, p.failf("ATRN for %s was answered %d, want 453 (no mail) or 250", strings.Join(domains, ","), pl.atrn.Code)
		case pl.noMail():
			return c, pl, nil
		case pl.foreign > 0:
			return nil, nil, p.skipf("the provider holds %d messages for %s that the suite did not queue; they were left queued", pl.foreign, strings.Join(domains, ","))
		}
		// Only the suite's own leftovers came: try again.
	}
	return nil, nil, p.failf("the provider still delivered mail for %s after three ATRNs that took everything", strings.Join(domains, ","))
}

// checkNoMailAnswer fails unless pl is a no-mail answer the
// configuration allows.
func checkNoMailAnswer(p *probe, pl *pull) error {
	p.decide(pl.atrn)
	switch {
	case pl.atrn.Code == 453 && p.cfg.NoMail == NoMail250Quit:
		return p.failf("the configuration says the provider answers 250+QUIT for no mail, it answered 453")
	case pl.atrn.Code == 453:
		return nil
	case p.cfg.NoMail == NoMail453:
		return p.failf("with no mail queued the provider answered 250 and then QUIT, which section 5.2.1 allows, but the configuration says 453 (set NoMail)")
	case pl.helo == "":
		return p.failf("with no mail the provider answered 250 and sent QUIT without EHLO; section 5.2.1 says QUIT follows the EHLO")
	}
	p.note("250, then EHLO and QUIT after the role swap")
	return nil
}

func checkNoMail(p *probe) error {
	c, pl, err := drain(p, p.cfg.Domains)
	if err != nil {
		return err
	}
	if err := checkNoMailAnswer(p, pl); err != nil {
		return err
	}
	if pl.atrn.Code != 453 {
		return nil
	}
	if err := c.quit("453 leaves the session in the authenticated state"); err != nil {
		return err
	}
	// A bare ATRN, all the domains, has no mail either. It goes in a
	// session of its own: whether a second ATRN is taken after a 453 is
	// ATRN-again-after-453's question, not this one's.
	c, err = p.dialLogin()
	if err != nil {
		return err
	}
	r, err := c.atrnReply("ATRN", p.cfg.Domains)
	if err != nil {
		return err
	}
	p.decide(r)
	if r.Code == 450 {
		return c.rateLimited(p.cfg.Domains)
	}
	if r.Code != 453 {
		return p.failf("a bare ATRN answered %d, want 453: it asks for every domain of the account, which have no mail", r.Code)
	}
	if err := c.quit("453 leaves the session in the authenticated state"); err != nil {
		return err
	}
	p.decide(r)
	return nil
}

func checkATRNAgain(p *probe) error {
	if p.cfg.NoMail == NoMail250Quit {
		return p.skipf("the provider answers 250+QUIT when there is no mail, which ends the session")
	}
	c, pl, err := drain(p, []string{d1(p)})
	if err != nil {
		return err
	}
	if pl.atrn.Code != 453 {
		return p.skipf("the provider answered 250+QUIT when there was no mail, which ends the session")
	}
	m, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	pl, err = c.atrn("ATRN "+d1(p), []string{d1(p)}, sinkOptions{})
	if err != nil {
		return err
	}
	return p.expectDelivered(pl, m, "the second ATRN of the session")
}

func checkBareATRN(p *probe) error {
	var msgs []*message
	for _, d := range p.cfg.Domains {
		m, err := p.queue(d)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN", p.cfg.Domains, sinkOptions{})
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if err := p.expectDelivered(pl, m, "a bare ATRN asks for every domain of the account"); err != nil {
			return err
		}
	}
	p.decide(pl.atrn)
	return nil
}

func checkDomainList(p *probe) error {
	if len(p.cfg.Domains) < 2 {
		return p.skipf("needs two domains, the configuration has one")
	}
	two := p.cfg.Domains[:2]
	m, err := p.queue(two[1])
	if err != nil {
		return err
	}
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	pl, err := c.atrn("ATRN "+strings.Join(two, ","), two, sinkOptions{})
	if err != nil {
		return err
	}
	if err := p.expectDelivered(pl, m, "the second domain of the list has mail"); err != nil {
		return err
	}
	p.decide(pl.atrn)
	return nil
}

func checkDomainCase(p *probe) error {
	m, err := p.queue(d1(p))
	if err != nil {
		return err
	}
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	upper := strings.ToUpper(d1(p))
	pl, err := c.atrn("ATRN "+upper, []string{d1(p)}, sinkOptions{})
	if err != nil {
		return err
	}
	if err := p.expectDelivered(pl, m, upper+" is the same domain as "+d1(p)); err != nil {
		return err
	}
	p.decide(pl.atrn)
	return nil
}

func checkOnlyRequested(p *probe) error {
	// A message for the account's domain and another customer's.
	shared := p.newMessage(d1(p), p.cfg.ForeignDomain)
	if err := p.cfg.Enqueue(shared.from, shared.to, shared.body); err != nil {
		p.note("a message with a recipient in %s could not be queued (%v): that part was not checked", p.cfg.ForeignDomain, err)
		shared = nil
	}
	// A message for another domain of the account.
	var other *message
	if len(p.cfg.Domains) > 1 {
		var err error
		if other, err = p.queue(p.cfg.Domains[1]); err != nil {
			return err
		}
	}
	if shared == nil && other == nil {
		return p.skipf("needs a second domain, or a message with a recipient in ForeignDomain")
	}
	// The sink fails the check on any recipient outside d1.
	pl, err := p.pullDomain(d1(p), sinkOptions{})
	if err != nil {
		return err
	}
	if pl.atrn.Code != 250 && shared != nil {
		return p.failf("ATRN for %s was answered %d, but a message was queued for it", d1(p), pl.atrn.Code)
	}
	if shared != nil {
		d := pl.find(shared)
		if d == nil {
			return p.failf("the message for %s and %s did not arrive", shared.to[0], shared.to[1])
		}
		if !sameSet(d.rcpts, shared.to[:1]) {
			return p.failf("the message for %s and %s arrived for %s", shared.to[0], shared.to[1], strings.Join(d.rcpts, ", "))
		}
		// The intake may rewrite nothing else.
		if err := p.intact(shared, d); err != nil {
			return err
		}
	}
	decisive := pl.atrn
	if other != nil {
		// The other domain's mail is still queued.
		c, err := p.dialLogin()
		if err != nil {
			return err
		}
		pl, err := c.atrn("ATRN "+p.cfg.Domains[1], p.cfg.Domains[1:2], sinkOptions{})
		if err != nil {
			return err
		}
		if err := p.expectDelivered(pl, other, "it was left queued by the ATRN for "+d1(p)); err != nil {
			return err
		}
	}
	p.decide(decisive)
	return nil
}
