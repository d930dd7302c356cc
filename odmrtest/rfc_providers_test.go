package odmrtest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtest"
)

// Providers that follow the RFC where it lets them choose must pass the
// suite, or fail only the one check that owns their choice.

// runAll runs the suite and returns the IDs of the failed checks.
func runAll(t *testing.T, cfg odmrtest.ProviderConfig) []string {
	t.Helper()
	var failed []string
	_, err := odmrtest.RunProvider(context.Background(), cfg, odmrtest.ReporterFunc(func(r odmrtest.Result) {
		if r.Status == odmrtest.Fail {
			failed = append(failed, r.Check.ID())
			t.Logf("%s", r)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	return failed
}

// TestRateLimitedProviderPasses runs the suite against a provider that
// answers 450 to an ATRN sent within 150 ms of the account's previous
// one, as RFC 2645 section 5.2.1 allows. The suite waits RateLimitWait
// and sends the ATRN again, in every check: after a 453, and with a
// greeting pipelined after the ATRN too.
func TestRateLimitedProviderPasses(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the rate limit some 60 times")
	}
	_, cfg := odmrtest.NewProvider(t, func(p *odmr.Provider) {
		p.ATRNInterval, p.ATRNBurst = 150*time.Millisecond, 1
	})
	cfg.RateLimitWait = 200 * time.Millisecond
	if failed := runAll(t, cfg); len(failed) > 0 {
		t.Errorf("failed %s", strings.Join(failed, ", "))
	}
}

// TestHELOOnlyProviderFailsOneCheck runs the suite against a provider
// that says HELO, not EHLO, after the role swap (a proxy rewrites its
// EHLO). Only RFC5321/EHLO-after-swap may fail it: the extension checks
// take it as a provider that was offered no extension.
func TestHELOOnlyProviderFailsOneCheck(t *testing.T) {
	_, cfg := odmrtest.NewProvider(t)
	cfg.Dial = mutatingDial(t, cfg, func(l string) string {
		if rest, ok := strings.CutPrefix(l, "EHLO "); ok {
			return "HELO " + rest
		}
		return l
	})
	failed := runAll(t, cfg)
	if len(failed) != 1 || failed[0] != "RFC5321/EHLO-after-swap" {
		t.Errorf("failed %q, want only RFC5321/EHLO-after-swap", failed)
	}
}
