package odmr

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/defaults"
)

// authProvider is a provider for the AUTH limit tests, served over pipes
// with pipeFrom; its log goes to the returned buffer.
func authProvider(t *testing.T, opts ...func(*Provider)) (*Provider, *syncBuffer) {
	logs := &syncBuffer{}
	accts := testAccounts{
		testUser:  {Name: testUser, Secret: testSecret, Domains: []string{"example.org"}},
		"mallory": {Name: "mallory", Secret: "mallorys-secret", Domains: []string{"example.net"}},
	}
	p := &Provider{Hostname: "provider.test", Authenticator: accts, Authorizer: accts,
		Queue: newMemQueue(), Logger: slog.New(slog.NewTextHandler(logs, nil))}
	for _, o := range opts {
		o(p)
	}
	t.Cleanup(func() { p.Close() })
	return p, logs
}

// tryCRAM runs one session from ip with one CRAM-MD5 attempt and returns
// the reply to it.
func tryCRAM(t *testing.T, p *Provider, ip, user, secret string) (int, string) {
	t.Helper()
	tp := pipeFrom(t, p, ip)
	defer tp.Close()
	code, msg, err := authCRAMRaw(tp, user, secret)
	require.NoError(t, err)
	tp.PrintfLine("QUIT")
	io.Copy(io.Discard, tp.R)
	return code, msg
}

// exhaust spends the guesses of user from as many sources, one each.
func exhaust(t *testing.T, p *Provider, user string) {
	for i := range defaults.AuthGuessBurst {
		code, _ := tryCRAM(t, p, fmt.Sprintf("10.0.0.%d", i+1), user, "wrong")
		require.Equal(t, 535, code)
	}
}

// While an identity has no guesses left, the reply does not depend on the
// secret, from a source that has failed as from one never seen: the
// attempt is refused before the secret is looked at.
func TestAuthThrottledReplyIsTheSameWhateverTheSecret(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := authProvider(t)
		exhaust(t, p, testUser)
		var replies []string
		for _, ip := range []string{"10.0.0.1", "10.9.9.9"} {
			for _, secret := range []string{"wrong", testSecret} {
				code, msg := tryCRAM(t, p, ip, testUser, secret)
				replies = append(replies, fmt.Sprint(code, " ", msg))
			}
		}
		for _, r := range replies {
			assert.Equal(t, "454 4.7.0 Too many failed authentication attempts; try again later", r)
		}
		// Another identity is not affected.
		code, _ := tryCRAM(t, p, "10.9.9.8", "mallory", "mallorys-secret")
		assert.Equal(t, 235, code)
	})
}

// However many sources guess, an identity gets no more than its burst and
// then one guess per AuthGuessInterval: about 10 a minute.
func TestAuthGuessesPerIdentityBoundedAcrossSources(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := authProvider(t)
		checked := 0
		const minutes = 10
		for i := range minutes * 60 {
			// A new address for every guess.
			code, _ := tryCRAM(t, p, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), testUser, "wrong")
			if code == 535 {
				checked++
			} else {
				require.Equal(t, 454, code)
			}
			time.Sleep(time.Second)
		}
		assert.LessOrEqual(t, checked, defaults.AuthGuessBurst+minutes*60/int(defaults.AuthGuessInterval/time.Second)+1)
		assert.GreaterOrEqual(t, checked, minutes*60/int(defaults.AuthGuessInterval/time.Second), "slowed, not locked")
	})
}

// The customer gets in from the address it used before while others
// guess at its secret.
func TestAuthKnownSourceGetsInUnderAttack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := authProvider(t)
		code, _ := tryCRAM(t, p, "192.0.2.7", testUser, testSecret)
		require.Equal(t, 235, code)
		exhaust(t, p, testUser)
		code, _ = tryCRAM(t, p, "10.0.0.1", testUser, testSecret)
		require.Equal(t, 454, code, "the identity is under attack")
		code, _ = tryCRAM(t, p, "192.0.2.7", testUser, testSecret)
		assert.Equal(t, 235, code)
		// A typo of its own does not make it wait for the bucket.
		code, _ = tryCRAM(t, p, "192.0.2.7", testUser, "typo")
		assert.Equal(t, 535, code)
		code, _ = tryCRAM(t, p, "192.0.2.7", testUser, testSecret)
		assert.Equal(t, 235, code)
		// A failure at another identity does.
		code, _ = tryCRAM(t, p, "192.0.2.7", "carol", "wrong")
		assert.Equal(t, 535, code)
		code, _ = tryCRAM(t, p, "192.0.2.7", testUser, testSecret)
		assert.Equal(t, 454, code)
		// An IPv6 customer is known by its /64.
		code, _ = tryCRAM(t, p, "2001:db8:1:2::7", "mallory", "mallorys-secret")
		require.Equal(t, 235, code)
		exhaust(t, p, "mallory")
		code, _ = tryCRAM(t, p, "2001:db8:1:2:aaaa::9", "mallory", "mallorys-secret")
		assert.Equal(t, 235, code)
	})
}

// Logging in to an account of one's own does not wipe the source's
// failures at another's; only the failures at the same account are
// forgiven (a customer's own typos).
func TestOwnLoginsDoNotResetTheSourceCount(t *testing.T) {
	p, _ := authProvider(t, func(p *Provider) { p.AuthFailuresAllowed = 2; p.AuthBackoff = time.Hour })
	const src = "10.2.0.1"
	for i := range 3 {
		tp := pipeFrom(t, p, src)
		code, _, err := authCRAMRaw(tp, testUser, "wrong")
		require.NoError(t, err)
		require.Equal(t, 535, code)
		if i < 2 {
			code, _, err = authCRAMRaw(tp, "mallory", "mallorys-secret")
			require.NoError(t, err)
			require.Equal(t, 235, code)
		}
		tp.Close()
	}
	tp := pipeFrom(t, p, src)
	defer tp.Close()
	require.NoError(t, tp.PrintfLine("AUTH CRAM-MD5"))
	code, msg, _ := tp.ReadResponse(0)
	assert.Equal(t, 454, code, msg)

	const typist = "10.2.0.2"
	for range 5 {
		tp := pipeFrom(t, p, typist)
		code, _, err := authCRAMRaw(tp, "mallory", "typo")
		require.NoError(t, err)
		require.Equal(t, 535, code)
		code, _, err = authCRAMRaw(tp, "mallory", "mallorys-secret")
		require.NoError(t, err)
		require.Equal(t, 235, code)
		tp.Close()
	}
	// By default a source of one IPv6 /64 is one source, and an
	// IPv4-mapped address is its IPv4 address.
	dp := &Provider{}
	assert.Equal(t, dp.networkKey(ipAddr("2001:db8::1")), dp.networkKey(ipAddr("2001:db8::ffff:1")))
	assert.Equal(t, "192.0.2.1/32", dp.networkKey(ipAddr("::ffff:192.0.2.1")))
}

// The limiter's tables stay within their cap whatever the names, and a
// long name costs no more than a short one: keys are hashed.
func TestAuthLimiterMemoryIsBounded(t *testing.T) {
	l := newAuthLimiter(5, time.Second, time.Minute, time.Second, 10, 1000)
	now := time.Now()
	long := strings.Repeat("n", 9000)
	for i := range 5000 {
		src := fmt.Sprintf("10.3.%d.%d", i/250, i%250)
		l.admit(src, fmt.Sprint(long, i), now)
		l.fail(src, fmt.Sprint(long, i), now)
	}
	sources, idents := l.size()
	assert.LessOrEqual(t, sources, 1000)
	assert.LessOrEqual(t, idents, 1000)
}

// A flood of new names fills the identity table, but does not push out an
// identity whose guesses are spent: evicted, it would come back with a
// full bucket, and an attacker could reset its bucket at will. Seen
// against odmr-provider with -auth-limiter-entries 2000: 150 secrets
// checked in 30 s, where the bucket allows 15.
func TestAuthFloodOfNamesDoesNotRefillAnIdentity(t *testing.T) {
	l := newAuthLimiter(5, time.Second, time.Minute, time.Minute, 10, 100)
	now := time.Now()
	src := 0
	next := func() string { src++; return fmt.Sprintf("10.4.%d.%d", src/250, src%250) }
	for range 10 {
		s := next()
		_, ok := l.admit(s, testUser, now)
		require.True(t, ok)
		l.fail(s, testUser, now)
	}
	for i := range 5000 {
		// Each name newer than the last, so the spent identity is the
		// oldest entry of the table.
		now = now.Add(time.Millisecond)
		s := next()
		if _, ok := l.admit(s, fmt.Sprint("name", i), now); ok {
			l.fail(s, fmt.Sprint("name", i), now)
		}
		_, idents := l.size()
		require.LessOrEqual(t, idents, 100)
	}
	_, ok := l.admit(next(), testUser, now)
	assert.False(t, ok, "the flood gave the identity its guesses back")
}

// Failed logins are logged at most AuthLogsPerSecond a second, with the
// name cut and escaped, and the next record says how many were held back.
func TestAuthFailureLogsAreRateLimitedAndNamesCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, logs := authProvider(t)
		name := "evil\nname\x1b[31m" + strings.Repeat("x", 9000)
		for i := range 50 {
			code, _ := tryCRAM(t, p, fmt.Sprintf("10.4.0.%d", i+1), fmt.Sprint(name, i), "wrong")
			require.Equal(t, 535, code)
		}
		out := logs.String()
		assert.Equal(t, defaults.AuthLogsPerSecond, strings.Count(out, "authentication failed"))
		assert.NotContains(t, out, strings.Repeat("x", 100))
		assert.NotContains(t, out, "\x1b")
		assert.Contains(t, out, `evil\nname\x1b[31mxxx`)
		time.Sleep(time.Second)
		tryCRAM(t, p, "10.4.1.1", "someone", "wrong")
		assert.Contains(t, logs.String(), "suppressed=40")
	})
}

func ipAddr(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 1} }

// scramFirst starts a SCRAM exchange and returns the server-first message.
func scramFirst(t *testing.T, tp *textproto.Conn, user string) string {
	t.Helper()
	first := "n,,n=" + user + ",r=clientnonce"
	require.NoError(t, tp.PrintfLine("AUTH %s %s", SCRAMSHA256, base64.StdEncoding.EncodeToString([]byte(first))))
	code, msg, err := tp.ReadResponse(0)
	require.NoError(t, err)
	require.Equal(t, 334, code, msg)
	b, err := base64.StdEncoding.DecodeString(msg)
	require.NoError(t, err)
	return string(b)
}

var saltAndIters = regexp.MustCompile(`,s=([^,]+),i=(\d+)$`)

// A user's salt is the same at every attempt, for a user stored with a
// shared secret as for one who does not exist, and the derived keys are
// cached: PBKDF2 runs once per user, not at each attempt.
func TestSCRAMSaltsAreStableAndUnknownUsersLookAlike(t *testing.T) {
	p, _ := authProvider(t, func(p *Provider) { p.SCRAMSaltKey = []byte("cluster key") })
	shape := func(user string) []string {
		tp := pipeFrom(t, p, "10.5.0.1")
		defer tp.Close()
		m := saltAndIters.FindStringSubmatch(scramFirst(t, tp, user))
		require.NotNil(t, m)
		return m[1:]
	}
	known1, known2 := shape(testUser), shape(testUser)
	unknown1, unknown2 := shape("nobody"), shape("nobody")
	assert.Equal(t, known1, known2, "stable salt")
	assert.Equal(t, unknown1, unknown2, "stable salt")
	assert.Equal(t, known1[1], unknown1[1], "same iteration count")
	assert.Len(t, known1[0], len(unknown1[0]))
	assert.NotEqual(t, known1[0], unknown1[0])
	assert.Equal(t, 1, p.scramKeys.len(), "one derivation for the real user, none for the unknown one")

	// The same key gives the same salts on another provider of a cluster.
	p2, _ := authProvider(t, func(p *Provider) { p.SCRAMSaltKey = []byte("cluster key") })
	tp := pipeFrom(t, p2, "10.5.0.1")
	defer tp.Close()
	assert.Equal(t, known1, saltAndIters.FindStringSubmatch(scramFirst(t, tp, testUser))[1:])
	// And the login works with the cached keys.
	tp2 := pipeFrom(t, p, "10.5.0.2")
	defer tp2.Close()
	code, msg, err := authSCRAMRaw(tp2, SCRAMSHA256, scramClient256(t, testUser, testSecret))
	require.NoError(t, err)
	assert.Equal(t, 235, code, msg)
}

// Cancelling an exchange with "*", or dropping the connection in the
// middle of one, once a user was named, counts against the source like a
// wrong secret.
func TestCancelledAndAbandonedAuthCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := authProvider(t, func(p *Provider) { p.AuthFailuresAllowed = 2; p.AuthBackoff = time.Hour })
		const src = "10.6.0.1"
		tp := pipeFrom(t, p, src)
		scramFirst(t, tp, testUser)
		require.NoError(t, tp.PrintfLine("*"))
		code, _, err := tp.ReadResponse(0)
		require.NoError(t, err)
		assert.Equal(t, 501, code)
		tp.Close()
		tp = pipeFrom(t, p, src)
		scramFirst(t, tp, testUser)
		tp.Close() // abandoned
		synctest.Wait()
		tp = pipeFrom(t, p, src)
		scramFirst(t, tp, testUser)
		require.NoError(t, tp.PrintfLine("*")) // the third failure
		code, _, _ = tp.ReadResponse(0)
		assert.Equal(t, 501, code)
		tp.Close()
		tp = pipeFrom(t, p, src)
		defer tp.Close()
		require.NoError(t, tp.PrintfLine("AUTH CRAM-MD5"))
		code, msg, _ := tp.ReadResponse(0)
		assert.Equal(t, 454, code, msg)
	})
}

// A flood of connections that never authenticate writes at most
// ConnLogsPerSecond "session ended" records a second, then one that says
// how many were held back; sessions that authenticated are all logged.
// Seen against odmr-provider: 5 MB of log in 10 s of failed logins, one
// record a connection.
func TestAnonymousSessionLogsAreRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, logs := authProvider(t)
		for i := range 100 {
			tp := pipeFrom(t, p, fmt.Sprintf("10.5.0.%d", i+1))
			tp.PrintfLine("QUIT")
			io.Copy(io.Discard, tp.R)
			tp.Close()
		}
		synctest.Wait()
		assert.Equal(t, defaults.ConnLogsPerSecond, strings.Count(logs.String(), `msg="odmr: session ended"`))
		time.Sleep(time.Second)
		code, _ := tryCRAM(t, p, "10.5.1.1", testUser, testSecret)
		require.Equal(t, 235, code)
		tp := pipeFrom(t, p, "10.5.1.2")
		tp.PrintfLine("QUIT")
		io.Copy(io.Discard, tp.R)
		tp.Close()
		synctest.Wait()
		out := logs.String()
		assert.Equal(t, defaults.ConnLogsPerSecond+2, strings.Count(out, `msg="odmr: session ended"`))
		assert.Contains(t, out, "identity="+testUser)
		assert.Contains(t, out, "suppressed=90")
	})
}

// SCRAM starts at made-up names run no PBKDF2 and leave the real users'
// keys in the cache; the first start at a name waits as long as a
// derivation takes, as a real user's first start does, the next does not.
// Seen against odmr-provider: 6,280 cancelled starts at new names in 10 s
// took 6.5 s of CPU.
func TestSCRAMUnknownUsersCostNoDerivation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := newSCRAMKeys([]byte("key"), 10)
		_, err := k.derive(SCRAMSHA256, testUser, []byte(testSecret))
		require.NoError(t, err)
		k.cost.Store(int64(time.Millisecond))
		for i := range 100 {
			start := time.Now()
			c, err := k.unknown(SCRAMSHA256, fmt.Sprint("nobody", i))
			require.NoError(t, err)
			assert.Equal(t, time.Millisecond, time.Since(start), "waits like a derivation")
			assert.Equal(t, defaults.SCRAMIterations, c.Iterations)
			assert.Len(t, c.Salt, 16)
			assert.Len(t, c.StoredKey, sha256.Size)
		}
		start := time.Now()
		k.unknown(SCRAMSHA256, "nobody99")
		assert.Zero(t, time.Since(start), "a name seen before is as fast as a cached key")
		assert.Equal(t, 1, k.len(), "the real user's key is still cached, no other was derived")
	})
}
