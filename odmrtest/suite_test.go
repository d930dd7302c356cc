package odmrtest_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-odmr/odmr/odmrtest"
)

// The suite must catch broken providers, not only pass a good one. These
// tests run checks against this library's provider seen through a proxy
// that breaks one thing in what the provider sends.

// mutatingDial returns a Dial function that connects to cfg's provider
// through a proxy applying mutate to each line the provider sends (CRLF
// included); the customer's bytes pass unchanged.
func mutatingDial(t *testing.T, cfg odmrtest.ProviderConfig, mutate func(line string) string) func() (net.Conn, error) {
	return mutatingDialEach(t, cfg, func() func(string) string { return mutate })
}

// mutatingDialEach is mutatingDial with a mutate function of its own for
// each connection, made by newMutate, for a provider whose fault depends
// on what came before in the session.
func mutatingDialEach(t *testing.T, cfg odmrtest.ProviderConfig, newMutate func() func(line string) string) func() (net.Conn, error) {
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	return func() (net.Conn, error) {
		up, err := cfg.Dial()
		if err != nil {
			return nil, err
		}
		near, far := net.Pipe()
		mutate := newMutate()
		wg.Add(2)
		go func() {
			defer wg.Done()
			defer up.Close()
			io.Copy(up, far)
		}()
		go func() {
			defer wg.Done()
			defer far.Close()
			br := bufio.NewReader(up)
			for {
				line, err := br.ReadString('\n')
				if line != "" {
					if _, err := io.WriteString(far, mutate(line)); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		return near, nil
	}
}

func findCheck(t *testing.T, id string) odmrtest.Check {
	t.Helper()
	for _, c := range odmrtest.ProviderChecks() {
		if c.ID() == id {
			return c
		}
	}
	t.Fatalf("no check %s", id)
	return odmrtest.Check{}
}

func TestSuiteCatchesBrokenProviders(t *testing.T) {
	tests := []struct {
		check  string
		why    string
		mutate func(string) string
	}{
		{"4/greeting-220", "a 554 greeting",
			replace("220 provider.example on-demand", "554 provider.example on-demand")},
		{"4/greeting-220", "a greeting ending in a bare LF",
			func(l string) string {
				if strings.HasPrefix(l, "220 ") {
					return strings.TrimSuffix(l, "\r\n") + "\n"
				}
				return l
			}},
		{"5.1.1/EHLO-lists-AUTH-and-ATRN", "no ATRN keyword",
			replace("250 ATRN\r\n", "250 X-NOTHING\r\n")},
		{"5.1.1/EHLO-lists-AUTH-and-ATRN", "a multi-line reply that changes its code",
			replace("250-ENHANCEDSTATUSCODES", "251-ENHANCEDSTATUSCODES")},
		{"5.1.2/CRAM-MD5-offered", "no CRAM-MD5 in AUTH",
			replace(" CRAM-MD5", " X-CRAM")},
		{"RFC4954/second-AUTH-503", "a second AUTH answered 334",
			replace("503 5.5.1 Already authenticated", "334 PGZvb0BiYXI+")},
		{"5.2.1/no-mail-453", "450 for no mail",
			replace("453 4.2.0 You have no mail", "450 4.7.1 Try later")},
		{"5.2.1/250-single-line-then-reverse", "a multi-line 250 to ATRN",
			replace("250 2.0.0 OK now reversing the connection\r\n", "250-2.0.0 OK\r\n250 now reversing\r\n")},
		{"5.2.1/250-single-line-then-reverse", "a dot-stuffed line sent unstuffed",
			replace("..leading dot\r\n", ".leading dot\r\n")},
		{"5.2.1/250-single-line-then-reverse", "a bare LF in the message",
			replace("last line\r\n", "last line\n")},
		{"5.3/greeting-then-EHLO", "EHLO sent before the customer's greeting",
			replace("250 2.0.0 OK now reversing the connection\r\n", "250 2.0.0 OK now reversing the connection\r\nEHLO provider.example\r\n")},
		{"5.2.1/only-requested-domains", "a recipient outside the requested domain",
			func(l string) string {
				if strings.HasPrefix(l, "RCPT TO:<") {
					return strings.Replace(l, "@example.org>", "@example.com>", 1)
				}
				return l
			}},
		{"5.4/other-commands-502", "TURN accepted",
			func() func(string) string {
				// The provider answers the commands in order; the sixth is TURN.
				n := 0
				return func(l string) string {
					if strings.HasPrefix(l, "502 ") {
						if n++; n == 6 {
							return "250 OK turning\r\n"
						}
					}
					return l
				}
			}()},
		{"5.2.1/unauthorized-domain-450-and-no-mail", "453 instead of 450",
			replace("450 4.7.1 Access to domain example.net denied", "453 4.2.0 You have no mail")},
		{"RFC5321/unknown-command-500-or-502", "a reply without a code",
			replace("502 5.5.1 Command not implemented", "hello")},
	}
	for _, tt := range tests {
		t.Run(tt.check+"/"+tt.why, func(t *testing.T) {
			_, cfg := odmrtest.NewProvider(t)
			cfg.Timeout = 5 * time.Second
			cfg.Dial = mutatingDial(t, cfg, tt.mutate)
			res := findCheck(t, tt.check).Run(context.Background(), cfg)
			if res.Status != odmrtest.Fail {
				t.Fatalf("%s with %s: %s, want FAIL", tt.check, tt.why, res)
			}
			t.Logf("%s", res)
		})
	}
}

func replace(old, new string) func(string) string {
	return func(l string) string { return strings.Replace(l, old, new, 1) }
}

// TestSuiteFailsSilentPeerWithoutHanging points every check at a peer
// that takes connections and never speaks: each check must fail (or
// skip) once its timeout passes, never hang. The peer is the far end of
// a net.Pipe that reads and discards, inside a synctest bubble, so each
// timeout runs on the bubble's clock: a loaded machine cannot make a
// check's own set-up eat into it.
func TestSuiteFailsSilentPeerWithoutHanging(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var conns []net.Conn
		t.Cleanup(func() {
			mu.Lock()
			for _, c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
		dial := func() (net.Conn, error) {
			cli, srv := net.Pipe()
			mu.Lock()
			conns = append(conns, srv)
			mu.Unlock()
			wg.Go(func() { io.Copy(io.Discard, srv) })
			return cli, nil
		}
		cfg := odmrtest.ProviderConfig{
			Dial:          dial,
			User:          "alice",
			Secret:        "x",
			Domains:       []string{"example.org", "example.com"},
			ForeignDomain: "example.net",
			Enqueue:       func(string, []string, string) error { return nil },
			Timeout:       100 * time.Millisecond,
		}
		var results []odmrtest.Result
		start := time.Now()
		failed, err := odmrtest.RunProvider(context.Background(), cfg, odmrtest.ReporterFunc(func(r odmrtest.Result) {
			results = append(results, r)
		}))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d checks against a silent peer took %v of the bubble's clock", len(results), time.Since(start))
		if len(results) != len(odmrtest.ProviderChecks()) {
			t.Fatalf("%d results for %d checks", len(results), len(odmrtest.ProviderChecks()))
		}
		for _, r := range results {
			if r.Status == odmrtest.Pass {
				t.Errorf("a silent peer passed %s", r)
			}
		}
		if failed == 0 {
			t.Errorf("no check failed")
		}
	})
}

// TestSuiteSkips checks the configuration knobs that skip checks.
func TestSuiteSkips(t *testing.T) {
	_, cfg := odmrtest.NewProvider(t)
	cfg.Enqueue = nil
	cfg.Skip = []string{"4/greeting-220"}
	cfg.ReplaysPipelined = false
	var results []odmrtest.Result
	failed, err := odmrtest.RunProvider(context.Background(), cfg, odmrtest.ReporterFunc(func(r odmrtest.Result) {
		results = append(results, r)
	}))
	if err != nil || failed != 0 {
		t.Fatalf("RunProvider: %d failed, %v", failed, err)
	}
	for _, r := range results {
		wantSkip := r.Check.NeedsEnqueue || r.Check.ID() == "4/greeting-220" || r.Check.ID() == "RFC4954/PLAIN-when-offered"
		if got := r.Status == odmrtest.Skip; got != wantSkip {
			t.Errorf("%s: skipped %v, want %v", r, got, wantSkip)
		}
	}
}

// TestNoMailOwnsOneRequirement runs the two checks of a 453 against
// providers that fail one of them each, as Exim 4.99.1 does with other
// mail queued: a provider that answers 502 to any ATRN after a 453 in
// the same session fails ATRN-again-after-453 (a SHOULD) and passes
// no-mail-453, whose bare ATRN comes in a session of its own; one that
// wants a domain in every ATRN (501 to a bare one) fails
// no-mail-453.
func TestNoMailOwnsOneRequirement(t *testing.T) {
	for _, tt := range []struct {
		why       string
		newMutate func() func(string) string
		want      map[string]odmrtest.Status
	}{
		{"502 to an ATRN after a 453 in the session", func() func(string) string {
			no := false
			return func(l string) string {
				switch {
				case no && (strings.HasPrefix(l, "453 ") || strings.HasPrefix(l, "250 2.0.0 OK now reversing")):
					return "502 5.5.1 ATRN command used when not advertised\r\n"
				case strings.HasPrefix(l, "453 "):
					no = true
				}
				return l
			}
		}, map[string]odmrtest.Status{"5.2.1/no-mail-453": odmrtest.Pass, "5.2.1/ATRN-again-after-453": odmrtest.Fail}},
		{"501 to a bare ATRN", func() func() func(string) string {
			// The first session drains the queue and gets a 453; the
			// second is the bare ATRN's.
			sessions := 0
			return func() func(string) string {
				sessions++
				bare := sessions == 2
				return func(l string) string {
					if bare && strings.HasPrefix(l, "453 ") {
						return "501 5.5.4 Name a domain\r\n"
					}
					return l
				}
			}
		}(), map[string]odmrtest.Status{"5.2.1/no-mail-453": odmrtest.Fail}},
	} {
		t.Run(tt.why, func(t *testing.T) {
			for id, want := range tt.want {
				_, cfg := odmrtest.NewProvider(t)
				cfg.Timeout = 5 * time.Second
				cfg.Dial = mutatingDialEach(t, cfg, tt.newMutate)
				if res := findCheck(t, id).Run(context.Background(), cfg); res.Status != want {
					t.Errorf("%s, want %s", res, want)
				} else {
					t.Logf("%s", res)
				}
			}
		})
	}
}

// TestRunProviderValidatesConfig checks that a config without its
// required fields runs nothing.
func TestRunProviderValidatesConfig(t *testing.T) {
	_, err := odmrtest.RunProvider(context.Background(), odmrtest.ProviderConfig{}, odmrtest.ReporterFunc(func(odmrtest.Result) {
		t.Error("a check ran")
	}))
	if err == nil || !strings.Contains(err.Error(), "Dial, User, Domains, ForeignDomain") {
		t.Fatalf("err = %v", err)
	}
}

// TestNoMailKnob checks that the NoMail setting decides how a 453 is
// judged.
func TestNoMailKnob(t *testing.T) {
	for _, tt := range []struct {
		knob odmrtest.NoMailReply
		want odmrtest.Status
	}{
		{odmrtest.NoMail453, odmrtest.Pass},
		{odmrtest.NoMailEither, odmrtest.Pass},
		{odmrtest.NoMail250Quit, odmrtest.Fail},
	} {
		t.Run(tt.knob.String(), func(t *testing.T) {
			_, cfg := odmrtest.NewProvider(t)
			cfg.NoMail = tt.knob
			if res := findCheck(t, "5.2.1/no-mail-453").Run(context.Background(), cfg); res.Status != tt.want {
				t.Fatalf("%s, want %s", res, tt.want)
			}
		})
	}
}
