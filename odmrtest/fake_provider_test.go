package odmrtest_test

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtest"
)

// fakeProvider is a minimal ODMR provider that trusts its queue: unlike
// this library's provider, it does not filter each message's recipients
// to the session's domains again before it sends them, so the bugs of a
// fakeQueue reach the wire, as they do in providers that were found with
// them. It speaks EHLO, AUTH CRAM-MD5, ATRN and QUIT, then delivers with
// go-smtp's client.
type fakeProvider struct {
	q        *fakeQueue
	accounts map[string]struct {
		secret  string
		domains []string
	}
}

// newFakeProvider serves a fakeProvider with q on a loopback port and
// returns the suite's configuration for it, with the fixture's accounts.
func newFakeProvider(t *testing.T, q *fakeQueue) odmrtest.ProviderConfig {
	fp := &fakeProvider{q: q, accounts: map[string]struct {
		secret  string
		domains []string
	}{
		odmrtest.FixtureUser:        {odmrtest.FixtureSecret, odmrtest.FixtureDomains},
		odmrtest.FixtureForeignUser: {odmrtest.FixtureForeignSecret, []string{odmrtest.FixtureForeignDomain}},
	}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				fp.serve(c)
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	addr := l.Addr().String()
	return odmrtest.ProviderConfig{
		Dial:          func() (net.Conn, error) { return net.Dial("tcp", addr) },
		User:          odmrtest.FixtureUser,
		Secret:        odmrtest.FixtureSecret,
		Domains:       odmrtest.FixtureDomains,
		ForeignDomain: odmrtest.FixtureForeignDomain,
		ForeignUser:   odmrtest.FixtureForeignUser,
		ForeignSecret: odmrtest.FixtureForeignSecret,
		Enqueue:       q.enqueue,
		Timeout:       5 * time.Second,
	}
}

// bufConn reads through the session's buffered reader.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (fp *fakeProvider) serve(c net.Conn) {
	br := bufio.NewReader(c)
	say := func(s string) { io.WriteString(c, s+"\r\n") }
	say("220 fake.example ODMR")
	var user string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			say("250-fake.example\r\n250-AUTH CRAM-MD5\r\n250 ATRN")
		case "AUTH":
			if user != "" {
				say("503 already authenticated")
				continue
			}
			chal := "<1.2@fake.example>"
			say("334 " + base64.StdEncoding.EncodeToString([]byte(chal)))
			resp, err := br.ReadString('\n')
			if err != nil {
				return
			}
			b, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(resp))
			name, digest, _ := strings.Cut(string(b), " ")
			a, ok := fp.accounts[name]
			m := hmac.New(md5.New, []byte(a.secret))
			m.Write([]byte(chal))
			if !ok || !hmac.Equal([]byte(digest), []byte(hex.EncodeToString(m.Sum(nil)))) {
				say("535 authentication failed")
				continue
			}
			user = name
			say("235 authenticated")
		case "ATRN":
			if user == "" {
				say("530 authentication required")
				continue
			}
			own := fp.accounts[user].domains
			domains := own
			if arg != "" {
				domains = strings.Split(arg, ",")
			}
			if slices.ContainsFunc(domains, func(d string) bool {
				return !slices.ContainsFunc(own, func(o string) bool { return strings.EqualFold(o, d) })
			}) {
				say("450 access denied")
				continue
			}
			if has, _ := fp.q.HasMail(context.Background(), domains); !has {
				say("453 no mail")
				continue
			}
			say("250 OK now reversing the connection")
			fp.deliver(bufConn{c, br}, domains)
			return
		case "QUIT":
			say("221 bye")
			return
		default:
			say("502 not implemented")
		}
	}
}

// deliver sends the batch for domains, each message to the recipients
// the queue gives, unchecked.
func (fp *fakeProvider) deliver(c net.Conn, domains []string) {
	ctx := context.Background()
	cl := smtp.NewClient(c)
	defer cl.Close()
	if err := cl.Hello("fake.example"); err != nil {
		return
	}
	b, _ := fp.q.Claim(ctx, domains)
	defer b.Close()
	for {
		msg, err := b.Next(ctx)
		if err != nil {
			break
		}
		env := msg.Envelope()
		results, err := send(cl, env, msg)
		msg.Complete(ctx, results)
		if err != nil {
			return
		}
	}
	cl.Quit()
}

// send runs one transaction and returns each recipient's result; an
// error means the connection is lost.
func send(cl *smtp.Client, env odmr.Envelope, msg odmr.Message) ([]odmr.RecipientResult, error) {
	var results []odmr.RecipientResult
	fail := func(rcpts []string, err error) {
		var se *smtp.SMTPError
		e := &odmr.Error{Code: 451}
		if errors.As(err, &se) {
			e.Code = se.Code
		}
		for _, r := range rcpts {
			results = append(results, odmr.RecipientResult{Recipient: r, Err: e})
		}
	}
	if err := cl.Mail(env.From, nil); err != nil {
		fail(env.To, err)
		return results, cl.Reset()
	}
	var accepted []string
	for _, r := range env.To {
		if err := cl.Rcpt(r, nil); err != nil {
			fail([]string{r}, err)
			continue
		}
		accepted = append(accepted, r)
	}
	if len(accepted) == 0 {
		return results, cl.Reset()
	}
	w, err := cl.Data()
	if err != nil {
		fail(accepted, err)
		return results, nil
	}
	body, _ := msg.Open()
	io.Copy(w, body)
	body.Close()
	if err := w.Close(); err != nil {
		fail(accepted, err)
		return results, nil
	}
	for _, r := range accepted {
		results = append(results, odmr.RecipientResult{Recipient: r})
	}
	return results, nil
}
