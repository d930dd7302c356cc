package odmr_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/go-odmr/odmr/internal/smtptest"
	"github.com/go-odmr/odmr/internal/testcert"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/memqueue"
)

// hostileProvider plays a provider that, after the swap, sends one
// message to rcpts and reports the code of each RCPT's reply.
func hostileProvider(t *testing.T, rcpts []string) (addr string, codes <-chan []int) {
	t.Helper()
	out := make(chan []int, 1)
	addr = fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		if !fakeReversed(c, raw) {
			return
		}
		var got []int
		defer func() { out <- got }()
		c.PrintfLine("MAIL FROM:<spammer@sender.test>")
		if _, _, err := c.ReadResponse(250); err != nil {
			return
		}
		accepted := false
		for _, r := range rcpts {
			c.PrintfLine("RCPT TO:<%s>", r)
			code, _, _ := c.ReadResponse(0)
			got = append(got, code)
			accepted = accepted || code == 250
		}
		if accepted {
			c.PrintfLine("DATA")
			if _, _, err := c.ReadResponse(354); err != nil {
				return
			}
			io.WriteString(raw, "Subject: relay me\r\n\r\nspam\r\n.\r\n")
			c.ReadResponse(250)
		}
		c.PrintfLine("QUIT")
		c.ReadResponse(221)
	})
	return addr, out
}

func TestCustomerRefusesRecipientsOutsideItsDomains(t *testing.T) {
	custNoLeaks(t)
	rcpts := []string{
		"x@evil.test",               // another domain altogether: 550 5.7.1
		"y@example.net",             // another customer's domain
		"u1@example.org",            // ours
		"U2@EXAMPLE.ORG.",           // ours, in capitals with the root's dot
		"z@sub.example.org",         // a subdomain is not the domain asked for
		`"q@evil.test"@example.org`, // routed: a local server would send it to evil.test
		"w@xn--bcher-kva.example",   // ours: Domains gives it in U-labels
		`"a b"@example.org`,         // ours, quoted
	}
	addr, codes := hostileProvider(t, rcpts)
	sink := &memSink{}
	res, err := custCustomer(addr, sink, "example.org", "bücher.example").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []int{550, 550, 250, 250, 550, 550, 250, 250}, <-codes)
	assert.Equal(t, 4, res.RefusedRecipients)
	msgs := sink.received()
	require.Len(t, msgs, 1)
	assert.Equal(t, []string{"u1@example.org", "U2@EXAMPLE.ORG.", "w@xn--bcher-kva.example", `"a b"@example.org`}, msgs[0].env.To,
		"the sink sees only the customer's own recipients, quoting kept")
}

func TestCustomerForeignRecipientIs550Enhanced571(t *testing.T) {
	// The reply is 550 with enhanced code 5.7.1 (relaying denied), so the
	// provider bounces the recipient instead of retrying it.
	addr := fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		if !fakeReversed(c, raw) {
			return
		}
		c.PrintfLine("MAIL FROM:<a@sender.test>")
		c.ReadResponse(250)
		c.PrintfLine("RCPT TO:<x@evil.test>")
		_, msg, err := c.ReadResponse(550)
		if assert.NoError(t, err) {
			assert.Contains(t, msg, "5.7.1 ")
		}
		c.PrintfLine("QUIT")
		c.ReadResponse(221)
	})
	_, err := custCustomer(addr, &memSink{}, "example.org").Fetch(context.Background())
	require.NoError(t, err)
}

func TestCustomerBareATRNNeedsAcceptDomains(t *testing.T) {
	dialed := false
	c := custCustomer("127.0.0.1:1", &memSink{})
	c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = true
		return nil, errors.New("not reached")
	}
	_, err := c.Fetch(context.Background())
	require.ErrorIs(t, err, odmr.ErrNoAcceptDomains)
	assert.False(t, dialed, "refused before it connects")
}

func TestCustomerBareATRNTakesOnlyAcceptDomains(t *testing.T) {
	custNoLeaks(t)
	addr, codes := hostileProvider(t, []string{"x@evil.test", "u1@example.org", "u2@example.com"})
	sink := &memSink{}
	c := custCustomer(addr, sink)
	c.AcceptDomains = []string{"example.org"}
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []int{550, 250, 550}, <-codes)
	assert.Equal(t, 2, res.RefusedRecipients)
	require.Len(t, sink.received(), 1)
	assert.Equal(t, []string{"u1@example.org"}, sink.received()[0].env.To)
}

func TestIDNDomainIsOneDomainEndToEnd(t *testing.T) {
	// The account and the customer name the domain in U-labels, the
	// queue holds one recipient in each form: the ATRN goes out in
	// A-labels, the provider finds both recipients and the customer takes
	// both.
	custNoLeaks(t)
	q := &memqueue.Queue{}
	_, err := q.Enqueue(odmr.Envelope{From: "a@sender.test", To: []string{"x@bücher.example"}, UTF8: true}, strings.NewReader("Subject: 1\r\n\r\n1\r\n"))
	require.NoError(t, err)
	custEnqueue(t, q, "a@sender.test", "Subject: 2\r\n\r\n2\r\n", "y@XN--BCHER-KVA.example")
	accts := accounts.Map{custUser: {Name: custUser, Secret: custSecret, Domains: []string{"bücher.example"}}}
	addr := custProvider(t, q, func(p *odmr.Provider) { p.Authenticator, p.Authorizer = accts, accts })
	sink := &memSink{}
	res, err := custCustomer(addr, sink, "Bücher.example").Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"xn--bcher-kva.example"}, res.Domains)
	assert.Equal(t, 2, res.Messages)
	assert.Zero(t, res.RefusedRecipients)
	assert.Zero(t, q.Len())
}

func TestRelayRefusesRecipientsOutsideTheDomains(t *testing.T) {
	// Relay passes the session on command by command: a foreign RCPT gets
	// 550 5.7.1 from the relay and the local server never sees it.
	custNoLeaks(t)
	addr, codes := hostileProvider(t, []string{"x@evil.test", "u1@example.org", "y@example.net", `"a b"@EXAMPLE.org`})
	mta := &localMTA{}
	c := custCustomer(addr, nil, "example.org")
	c.Handler = odmr.Relay(startLocalMTA(t, mta, false, "tcp"))
	_, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []int{550, 250, 550, 250}, <-codes)
	got := mta.received()
	require.Len(t, got, 1)
	assert.Equal(t, []string{"u1@example.org", "a b@EXAMPLE.org"}, got[0].env.To) // (go-smtp's server unquotes)
}

func TestRelayHidesSTARTTLSAndAUTH(t *testing.T) {
	// STARTTLS would take the rest of the session out of the relay's
	// sight, and AUTH has no business in it: neither is offered, and both
	// are refused.
	custNoLeaks(t)
	cert, _ := testcert.SelfSigned(t, "provider.example.net")
	mta := &localMTA{}
	srv := smtp.NewServer(mta)
	srv.Domain = "local.example.org"
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	mtaAddr := smtptest.Serve(t, srv)

	type result struct {
		ehlo           string
		starttls, auth int
	}
	out := make(chan result, 1)
	addr := fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		var r result
		defer func() { out <- r }()
		if !fakeLogin(c) {
			return
		}
		c.ReadLine() // ATRN
		c.PrintfLine("250 OK now reversing the connection")
		c.ReadResponse(220)
		c.PrintfLine("EHLO fake.example.net")
		_, r.ehlo, _ = c.ReadResponse(250)
		c.PrintfLine("STARTTLS")
		r.starttls, _, _ = c.ReadResponse(0)
		c.PrintfLine("AUTH PLAIN AGFsaWNlAHMzY3JldA==")
		r.auth, _, _ = c.ReadResponse(0)
		c.PrintfLine("QUIT")
		c.ReadResponse(221)
	})
	c := custCustomer(addr, nil, "example.org")
	c.Handler = odmr.Relay(mtaAddr)
	_, err := c.Fetch(context.Background())
	require.NoError(t, err)
	r := <-out
	assert.NotContains(t, r.ehlo, "STARTTLS")
	assert.Contains(t, r.ehlo, "PIPELINING", "the other extensions are passed on")
	assert.Equal(t, 502, r.starttls)
	assert.Equal(t, 502, r.auth)
}

func TestRelayDropsABareLineEndingInData(t *testing.T) {
	// "\n.\n" could end the data for a local server that takes a bare LF
	// as a line end, and the RCPT after it would then be a command: the
	// relay drops the connection instead, and nothing is delivered.
	custNoLeaks(t)
	addr := fakeProvider(t, func(c *textproto.Conn, raw net.Conn) {
		if !fakeReversed(c, raw) {
			return
		}
		for _, cmd := range []string{"MAIL FROM:<a@sender.test>", "RCPT TO:<u1@example.org>", "DATA"} {
			c.PrintfLine("%s", cmd)
			if _, _, err := c.ReadResponse(0); err != nil {
				return
			}
		}
		io.WriteString(raw, "Subject: x\r\n\r\na\n.\nRCPT TO:<x@evil.test>\r\nDATA\r\nspam\r\n.\r\n")
		c.ReadResponse(0)
	})
	mta := &localMTA{}
	c := custCustomer(addr, nil, "example.org")
	c.Handler = odmr.Relay(startLocalMTA(t, mta, false, "tcp"))
	_, err := c.Fetch(context.Background())
	require.ErrorContains(t, err, "bare CR or LF")
	assert.Empty(t, mta.received())
}

func TestQuotedLocalPartsSurviveDelivery(t *testing.T) {
	// Queued with their quotes (as the intake now keeps them), the
	// addresses go on the wire and reach the customer's sink as they are:
	// "q@example.net"@example.org never becomes q@example.net@example.org.
	custNoLeaks(t)
	q := &memqueue.Queue{}
	to := []string{`"a b"@example.org`, `"q@example.net"@example.org`, `"x\"y"@example.org`}
	custEnqueue(t, q, `"s p"@sender.test`, "Subject: q\r\n\r\nq\r\n", to...)
	sink := &memSink{}
	c := custCustomer(custProvider(t, q), sink, "example.org")
	c.AllowRoutedLocalParts = true // for "q@example.net"@example.org
	res, err := c.Fetch(context.Background())
	require.NoError(t, err)
	assert.Zero(t, res.RefusedRecipients)
	msgs := sink.received()
	require.Len(t, msgs, 1)
	assert.Equal(t, `"s p"@sender.test`, msgs[0].env.From)
	assert.Equal(t, to, msgs[0].env.To)
	assert.Zero(t, q.Len())
}

// routedAndMapped are recipients that look like the customer's
// (example.org, bücher.example) to a check that maps or strips, but that
// a local mail server trusting the customer may send elsewhere. Each was
// taken by odmr-customer -domains example.org from a hostile provider and
// handed to the local server of -smtp and -relay as it was.
var routedAndMapped = []string{
	"x%evil.test@example.org",     // percent hack: Postfix's allow_percent_hack
	"evil.test!x@example.org",     // bang path: Postfix's swap_bangpath
	`"x@evil.test"@example.org`,   // the address inside, once the local domain is stripped
	`"x\"@evil.test"@example.org`, // the same, with an escaped quote
	"x@ｅｘａｍｐｌｅ.org",               // fullwidth letters: example.org only under the UTS #46 mapping
	"x@example。org",               // an ideographic full stop, likewise
	"x@BÜCHER.example",            // upper case U-labels, likewise
}

func TestCustomerRefusesRoutedAndMappedRecipients(t *testing.T) {
	custNoLeaks(t)
	rcpts := append(slices.Clone(routedAndMapped), "u1@example.org", "u2@bücher.example", "u3@EXAMPLE.org.")
	addr, codes := hostileProvider(t, rcpts)
	sink := &memSink{}
	res, err := custCustomer(addr, sink, "example.org", "bücher.example").Fetch(context.Background())
	require.NoError(t, err)
	want := slices.Repeat([]int{550}, len(routedAndMapped))
	assert.Equal(t, append(want, 250, 250, 250), <-codes)
	assert.Equal(t, len(routedAndMapped), res.RefusedRecipients)
	msgs := sink.received()
	require.Len(t, msgs, 1)
	assert.Equal(t, []string{"u1@example.org", "u2@bücher.example", "u3@EXAMPLE.org."}, msgs[0].env.To)
}

func TestRelayRefusesRoutedAndMappedRecipients(t *testing.T) {
	// The relay passes RCPT lines as they are, so it also refuses a source
	// route, which go-smtp strips for a Sink but a local server might
	// follow.
	custNoLeaks(t)
	rcpts := append(slices.Clone(routedAndMapped), "@evil.test:x@example.org", "u1@example.org")
	addr, codes := hostileProvider(t, rcpts)
	mta := &localMTA{}
	c := custCustomer(addr, nil, "example.org", "bücher.example")
	c.Handler = odmr.Relay(startLocalMTA(t, mta, false, "tcp"))
	_, err := c.Fetch(context.Background())
	require.NoError(t, err)
	want := slices.Repeat([]int{550}, len(routedAndMapped)+1)
	assert.Equal(t, append(want, 250), <-codes)
	got := mta.received()
	require.Len(t, got, 1)
	assert.Equal(t, []string{"u1@example.org"}, got[0].env.To)
}
