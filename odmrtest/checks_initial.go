package odmrtest

// The checks of the initial state: greeting, EHLO, AUTH (RFC 2645 section
// 5.1, RFC 4954, RFC 2195), QUIT, and the SMTP rules every command follows.

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
)

var msgIDRE = regexp.MustCompile(`^<[^<>@\s]+@[^<>@\s]+>$`)

func checkGreeting(p *probe) error {
	c, err := p.dialNoGreeting()
	if err != nil {
		return err
	}
	r, err := c.readReply()
	if err != nil {
		return err
	}
	p.decide(r)
	if r.Code != 220 {
		return p.failf("the greeting is %d, want 220", r.Code)
	}
	if err := c.quit("QUIT is valid in the initial state (RFC 2645 section 5.1.3)"); err != nil {
		return err
	}
	p.decide(r)
	return nil
}

func checkEHLO(p *probe) error {
	_, info, err := p.dialInfo()
	if err != nil {
		return err
	}
	var missing []string
	for _, kw := range []string{"AUTH", "ATRN"} {
		if !info.has(kw) {
			missing = append(missing, kw)
		}
	}
	if len(missing) > 0 {
		return p.failf("the EHLO reply lacks %s", strings.Join(missing, " and "))
	}
	return nil
}

func checkCRAMOffered(p *probe) error {
	_, info, err := p.dialInfo()
	if err != nil {
		return err
	}
	if !info.hasMech("CRAM-MD5") {
		return p.failf("the AUTH keyword lists %q, without CRAM-MD5", strings.Join(info.mechs, " "))
	}
	return nil
}

func checkCRAM(p *probe) error {
	c, err := p.dialEHLO()
	if err != nil {
		return err
	}
	r, chal, err := c.authCRAM(p.cfg.User, p.cfg.Secret)
	if err != nil {
		return err
	}
	p.decide(r)
	if !msgIDRE.Match(chal) {
		return p.failf("the challenge %q is not in msg-id form <random.timestamp@hostname> (RFC 2195 section 2)", chal)
	}
	if r.Code != 235 {
		return p.failf("the correct CRAM-MD5 response for challenge %q was answered %d, want 235", chal, r.Code)
	}
	return nil
}

func checkChallengeUnique(p *probe) error {
	var chals []string
	for range 2 {
		c, err := p.dial()
		if err != nil {
			return err
		}
		if _, err := c.ehlo(); err != nil {
			return err
		}
		r, chal, err := c.authCRAM(p.cfg.User, p.cfg.Secret)
		if err != nil {
			return err
		}
		if r.Code != 235 {
			p.decide(r)
			return p.failf("the correct CRAM-MD5 response was answered %d, want 235", r.Code)
		}
		chals = append(chals, string(chal))
	}
	p.decideText(fmt.Sprintf("challenges %q and %q", chals[0], chals[1]))
	if chals[0] == chals[1] {
		return p.failf("two sessions got the same challenge %q: a recorded response can be replayed", chals[0])
	}
	return nil
}

// cramRefused returns the check that AUTH CRAM-MD5 with the account's
// user or an unknown one (unknownUser), and the account's secret or a
// wrong one, fails with 535; what names the mistake in the failure.
func cramRefused(unknownUser, wrongSecret bool, what string) func(*probe) error {
	return func(p *probe) error {
		c, err := p.dialEHLO()
		if err != nil {
			return err
		}
		user, secret := p.cfg.User, p.cfg.Secret
		if unknownUser {
			user = "odmrtest-no-such-user"
		}
		if wrongSecret {
			secret += "-wrong"
		}
		r, _, err := c.authCRAM(user, secret)
		if err != nil {
			return err
		}
		p.decide(r)
		if r.Code != 535 {
			return p.failf("%s was answered %d, want 535", what, r.Code)
		}
		return nil
	}
}

func checkRetryAfterFailure(p *probe) error {
	c, err := p.dialEHLO()
	if err != nil {
		return err
	}
	r, _, err := c.authCRAM(p.cfg.User, p.cfg.Secret+"-wrong")
	if err != nil {
		return err
	}
	if r.Code != 535 {
		p.decide(r)
		return p.failf("a wrong secret was answered %d, want 535", r.Code)
	}
	r, _, err = c.authCRAM(p.cfg.User, p.cfg.Secret)
	if err != nil {
		return err
	}
	p.decide(r)
	if r.Code != 235 {
		return p.failf("AUTH with the right secret after a failure was answered %d, want 235", r.Code)
	}
	return nil
}

func checkNotAuthenticated(p *probe) error {
	c, err := p.dialEHLO()
	if err != nil {
		return err
	}
	// A cancelled exchange.
	if _, err := c.expect("AUTH CRAM-MD5", "a challenge (RFC 4954 section 4)", 334); err != nil {
		return err
	}
	if _, err := c.expect("*", "a cancelled AUTH is rejected with 501 (RFC 4954 section 4)", 501); err != nil {
		return err
	}
	if _, err := c.expect("ATRN "+d1(p), "the AUTH was cancelled, so the session is not authenticated", 530); err != nil {
		return err
	}
	// A failed exchange.
	r, _, err := c.authCRAM(p.cfg.User, p.cfg.Secret+"-wrong")
	if err != nil {
		return err
	}
	if r.Code != 535 {
		p.decide(r)
		return p.failf("a wrong secret was answered %d, want 535", r.Code)
	}
	_, err = c.expect("ATRN "+d1(p), "the AUTH failed, so the session is not authenticated", 530)
	return err
}

// step is one line of a scripted exchange, the codes that may answer it,
// and why, for the failure.
type step struct {
	line string
	why  string
	want []int
}

// script gives the steps of an exchange, which may depend on the
// configuration.
type script func(*probe) []step

// steps is the script of steps that do not depend on the configuration.
func steps(s ...step) script { return func(*probe) []step { return s } }

// exchange returns the check that opens a session with open (a probe's
// dial, dialEHLO or dialLogin) and sends each step of the script, failing
// unless the reply has one of the step's codes. With quitWhy set the
// session then ends with QUIT, which must be answered 221 and followed by
// the close; the last step's reply stays the decisive one.
func exchange(open func(*probe) (*conn, error), quitWhy string, sc script) func(*probe) error {
	return func(p *probe) error {
		c, err := open(p)
		if err != nil {
			return err
		}
		last, err := c.play(sc(p))
		if err != nil || quitWhy == "" {
			return err
		}
		if err := c.quit(quitWhy); err != nil {
			return err
		}
		p.decide(last)
		return nil
	}
}

// play sends each step's line and fails unless the reply has one of the
// step's codes. It returns the last reply.
func (c *conn) play(steps []step) (*reply, error) {
	var last *reply
	for _, s := range steps {
		r, err := c.expect(s.line, s.why, s.want...)
		if err != nil {
			return nil, err
		}
		last = r
	}
	return last, nil
}

func plainResponse(user, secret string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + secret))
}

func checkNoPlaintext(p *probe) error {
	if p.cfg.InsecureAuth {
		return p.skipf("the configuration says the provider offers PLAIN or LOGIN without TLS (InsecureAuth)")
	}
	c, info, err := p.dialInfo()
	if err != nil {
		return err
	}
	for _, m := range []string{"PLAIN", "LOGIN"} {
		if info.hasMech(m) {
			return p.failf("%s is offered on a connection without TLS", m)
		}
	}
	_, err = c.expect("AUTH PLAIN "+plainResponse(p.cfg.User, p.cfg.Secret),
		"PLAIN without TLS is refused as unsupported (504) or as needing encryption (538)", 504, 538)
	return err
}

func checkPlain(p *probe) error {
	c, info, err := p.dialInfo()
	if err != nil {
		return err
	}
	if !info.hasMech("PLAIN") {
		return p.skipf("PLAIN is not offered on this connection")
	}
	if _, err := c.expect("AUTH PLAIN "+plainResponse(p.cfg.User, p.cfg.Secret), "PLAIN with the account's credentials succeeds", 235); err != nil {
		return err
	}
	r, err := c.expect("ATRN "+p.cfg.ForeignDomain, "the session is authenticated, and the domain is not the account's", 450)
	p.decide(r)
	return err
}

func checkCaseInsensitive(p *probe) error {
	c, err := p.dial()
	if err != nil {
		return err
	}
	if _, err := c.ehloAs("ehlo " + p.cfg.Hostname); err != nil {
		return err
	}
	if _, err := c.expect("auth cram-md5", "verbs and mechanism names are case-insensitive", 334); err != nil {
		return err
	}
	// Finish the exchange with the challenge just received.
	chal, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(p.seen, "334 "))
	if err != nil {
		return p.failf("the 334 challenge is not base64: %v", err)
	}
	if _, err := c.expect(base64.StdEncoding.EncodeToString([]byte(cramResponse(p.cfg.User, p.cfg.Secret, chal))), "the correct response", 235); err != nil {
		return err
	}
	r, err := c.expect("atrn "+p.cfg.ForeignDomain, "lower-case atrn is ATRN, and the domain is not the account's", 450)
	if err != nil {
		return err
	}
	if _, err := c.expect("quit", "lower-case quit is QUIT", 221); err != nil {
		return err
	}
	if err := c.expectClosed("after its 221 reply to quit"); err != nil {
		return err
	}
	p.decide(r)
	return nil
}

func checkUnknownCommand(p *probe) error {
	c, err := p.dial()
	if err != nil {
		return err
	}
	r, err := c.expect("XODMRTEST", "an unrecognized command gets 500 (or 502, RFC 2645 section 5.4)", 500, 502)
	if err != nil {
		return err
	}
	if _, err := c.ehlo(); err != nil {
		return err
	}
	p.decide(r)
	return nil
}

func checkLongLine(p *probe) error {
	c, err := p.dial()
	if err != nil {
		return err
	}
	if err := c.writeLine("NOOP " + strings.Repeat("x", 10000)); err != nil {
		return err
	}
	r, err := c.readReply()
	if err != nil {
		return err
	}
	p.decide(r)
	switch r.Code {
	case 500, 501:
		if _, err := c.ehlo(); err != nil {
			return err
		}
		p.decide(r)
		return nil
	case 421:
		p.note("the provider closed the session")
		return c.expectClosed("after 421")
	case 250:
		// RFC 5321 section 4.5.3.1 lets a server take longer lines; what
		// matters is that the line is one command, answered once.
		if _, err := c.ehlo(); err != nil {
			return err
		}
		p.decide(r)
		p.note("the provider took the long line, as RFC 5321 section 4.5.3.1 lets a server")
		return nil
	}
	return p.failf("a 10005-byte command line was answered %d, want 500 (line too long)", r.Code)
}

func checkQuitInitial(p *probe) error {
	c, err := p.dialEHLO()
	if err != nil {
		return err
	}
	return c.quit("QUIT is valid in the initial state")
}

func checkQuitAuthenticated(p *probe) error {
	c, err := p.dialLogin()
	if err != nil {
		return err
	}
	return c.quit("QUIT is valid in the authenticated state")
}
