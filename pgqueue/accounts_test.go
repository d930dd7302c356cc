package pgqueue

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
	"github.com/go-odmr/odmr/internal/pgtest"
)

func openAccounts(t *testing.T) *Accounts {
	t.Helper()
	a, err := OpenAccounts(t.Context(), pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// TestAccountsLikeFile loads the same accounts into an accounts file and
// the database and checks that both answer every question alike.
func TestAccountsLikeFile(t *testing.T) {
	scram256, err := odmr.NewSCRAMCredentials(odmr.SCRAMSHA256, "carol", "carol-pw", 4096)
	if err != nil {
		t.Fatal(err)
	}
	scram1, err := odmr.NewSCRAMCredentials(odmr.SCRAMSHA1, "carol", "carol-pw", 4096)
	if err != nil {
		t.Fatal(err)
	}
	file := "alice s3cret example.org,Example.COM\n" +
		"bob other example.net\n" +
		"carol " + scram256.String() + "," + scram1.String() + " carol.example\n"
	want, err := accounts.Parse(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	a := openAccounts(t)
	for _, acct := range want {
		if err := a.Put(t.Context(), acct); err != nil {
			t.Fatalf("Put(%s): %v", acct.Name, err)
		}
	}
	ctx := t.Context()
	for _, user := range []string{"alice", "bob", "carol", "nobody", ""} {
		ws, werr := want.Secret(ctx, user)
		gs, gerr := a.Secret(ctx, user)
		if string(ws) != string(gs) || !sameErr(werr, gerr) {
			t.Errorf("Secret(%q) = %q, %v; the file says %q, %v", user, gs, gerr, ws, werr)
		}
		for _, mech := range []string{odmr.SCRAMSHA256, odmr.SCRAMSHA1} {
			wc, werr := want.SCRAMCredentials(ctx, mech, user)
			gc, gerr := a.SCRAMCredentials(ctx, mech, user)
			if wc.String() != gc.String() || !sameErr(werr, gerr) {
				t.Errorf("SCRAMCredentials(%s, %q) = %v, %v; the file says %v, %v", mech, user, gc, gerr, wc, werr)
			}
		}
		wd, _ := want.Domains(ctx, user)
		gd, err := a.Domains(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		wd = canonicalAll(wd)
		slices.Sort(wd)
		if !slices.Equal(wd, gd) {
			t.Errorf("Domains(%q) = %v; the file says %v", user, gd, wd)
		}
	}
	if owner, _ := a.Owner(ctx, "EXAMPLE.com."); owner != "alice" {
		t.Errorf("Owner(EXAMPLE.com.) = %q, want alice", owner)
	}
	if owner, _ := a.Owner(ctx, "nowhere.example"); owner != "" {
		t.Errorf("Owner(nowhere.example) = %q, want none", owner)
	}
}

func sameErr(a, b error) bool {
	for _, target := range []error{odmr.ErrUnknownUser, odmr.ErrNoSecret} {
		if errors.Is(a, target) != errors.Is(b, target) {
			return false
		}
	}
	return (a == nil) == (b == nil)
}

// TestAccountsPut checks what Put refuses, that a refusal changes nothing,
// and that Put replaces and Delete removes.
func TestAccountsPut(t *testing.T) {
	a := openAccounts(t)
	ctx := t.Context()
	if err := a.Put(ctx, accounts.Account{Name: "alice", Secret: "s", Domains: []string{"a.example", "b.example"}}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []accounts.Account{
		{Name: "bob", Secret: "s", Domains: []string{"c.example", "A.example"}}, // a.example is alice's
		{Name: "", Secret: "s"},
		{Name: "bad name", Secret: "s"},
		{Name: "bob"}, // no way to log in
		{Name: "bob", Secret: "s", Domains: []string{"bad domain"}},
	} {
		if err := a.Put(ctx, bad); err == nil {
			t.Errorf("Put(%+v) succeeded", bad)
		}
	}
	if _, err := a.Secret(ctx, "bob"); !errors.Is(err, odmr.ErrUnknownUser) {
		t.Errorf("a refused Put left bob: %v", err)
	}
	if owner, _ := a.Owner(ctx, "c.example"); owner != "" {
		t.Errorf("a refused Put gave c.example to %q", owner)
	}
	if err := a.Put(ctx, accounts.Account{Name: "alice", Secret: "new", Domains: []string{"b.example"}}); err != nil {
		t.Fatal(err)
	}
	if s, _ := a.Secret(ctx, "alice"); string(s) != "new" {
		t.Errorf("Secret after replacing = %q", s)
	}
	if d, _ := a.Domains(ctx, "alice"); !slices.Equal(d, []string{"b.example"}) {
		t.Errorf("Domains after replacing = %v", d)
	}
	if err := a.Delete(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Secret(ctx, "alice"); !errors.Is(err, odmr.ErrUnknownUser) {
		t.Errorf("Secret after Delete: %v", err)
	}
	if owner, _ := a.Owner(ctx, "b.example"); owner != "" {
		t.Errorf("b.example still belongs to %q after Delete", owner)
	}
}
