package odmr

import (
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-odmr/odmr/internal/defaults"
	"github.com/go-odmr/odmr/internal/saslmech"
)

// scramKeys derives SCRAM credentials from shared secrets with a salt that
// is stable per user, and caches them: without it every SCRAM start costs
// a PBKDF2 of defaults.SCRAMIterations. Users who do not exist get
// credentials whose salt, iteration count and timing look like a real
// user's (see unknown).
type scramKeys struct {
	key   []byte // derives the salts
	dummy []byte // the secret of users who do not exist
	max   int    // < 0: no cache

	mu sync.Mutex
	ll *list.List // of *scramEntry, most recently used first
	m  map[[sha256.Size]byte]*list.Element
	ul *list.List // of the hashes of unknown users asked for, most recent first
	um map[[sha256.Size]byte]*list.Element

	cost atomic.Int64 // how long a derivation takes, a moving average in ns
}

type scramEntry struct {
	k [sha256.Size]byte
	c SCRAMCredentials
}

func newSCRAMKeys(key []byte, max int) *scramKeys {
	if key == nil {
		key = make([]byte, 32)
		rand.Read(key)
	}
	dummy := []byte(rand.Text()) // text: SASLprep refuses some bytes
	k := &scramKeys{key: key, dummy: dummy, max: max, ll: list.New(), m: make(map[[sha256.Size]byte]*list.Element),
		ul: list.New(), um: make(map[[sha256.Size]byte]*list.Element)}
	// What a derivation costs, for unknown users to wait as long before
	// any real user's has been derived.
	start := time.Now()
	deriveSCRAM(SCRAMSHA256, "", string(dummy), k.salt(SCRAMSHA256, ""), defaults.SCRAMIterations)
	k.measure(time.Since(start))
	return k
}

// salt is HMAC-SHA-256(key, mechanism, username), cut to 16 bytes.
func (k *scramKeys) salt(mech, user string) []byte {
	m := hmac.New(sha256.New, k.key)
	writeField(m, []byte(mech))
	writeField(m, []byte(user))
	return m.Sum(nil)[:16]
}

// writeField writes b with its length, so that fields cannot run together.
func writeField(w interface{ Write([]byte) (int, error) }, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	w.Write(n[:])
	w.Write(b)
}

// derive returns the credentials of user for mech from secret, from the
// cache when it can.
func (k *scramKeys) derive(mech, user string, secret []byte) (SCRAMCredentials, error) {
	salt := k.salt(mech, user)
	h := sha256.New()
	writeField(h, []byte(mech))
	writeField(h, []byte(user))
	sum := sha256.Sum256(secret)
	writeField(h, sum[:])
	writeField(h, salt)
	var ck [sha256.Size]byte
	h.Sum(ck[:0])

	k.mu.Lock()
	if e, ok := k.m[ck]; ok {
		k.ll.MoveToFront(e)
		c := e.Value.(*scramEntry).c
		k.mu.Unlock()
		return c, nil
	}
	k.mu.Unlock()
	start := time.Now()
	c, err := deriveSCRAM(mech, user, string(secret), salt, defaults.SCRAMIterations)
	k.measure(time.Since(start))
	if err != nil || k.max < 0 {
		return c, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.m[ck]; !ok {
		k.m[ck] = k.ll.PushFront(&scramEntry{k: ck, c: c})
		for k.ll.Len() > max(k.max, 1) {
			old := k.ll.Remove(k.ll.Back()).(*scramEntry)
			delete(k.m, old.k)
		}
	}
	return c, nil
}

// unknown returns credentials for a user who does not exist, that no
// proof matches, with a salt made as a real user's. They cost no PBKDF2:
// a flood of SCRAM starts at made-up names, each cancelled, kept a core
// of odmr-provider busy, and pushed the real users' keys out of the
// cache. Instead the first start at a name waits (without using the
// CPU) as long as a derivation has lately taken, as a real user's first
// start does, and later ones are as fast as a cached key: timing tells
// no more than it did.
func (k *scramKeys) unknown(mech, user string) (SCRAMCredentials, error) {
	if _, err := saslmech.SCRAMHash(mech); err != nil {
		return SCRAMCredentials{}, err
	}
	m := hmac.New(sha256.New, k.key)
	writeField(m, []byte("unknown"))
	writeField(m, []byte(mech))
	writeField(m, []byte(user))
	writeField(m, k.dummy)
	sum := m.Sum(nil)
	if !k.seenUnknown(sum) {
		time.Sleep(time.Duration(k.cost.Load()))
	}
	size := sha256.Size
	if mech == SCRAMSHA1 {
		size = 20
	}
	stored := hmac.New(sha256.New, sum)
	stored.Write([]byte("stored"))
	server := hmac.New(sha256.New, sum)
	server.Write([]byte("server"))
	return SCRAMCredentials{Mechanism: mech, Salt: k.salt(mech, user), Iterations: defaults.SCRAMIterations,
		StoredKey: stored.Sum(nil)[:size], ServerKey: server.Sum(nil)[:size]}, nil
}

// seenUnknown reports whether an unknown user's credentials were asked for
// recently, and remembers them, in a set as large as the cache.
func (k *scramKeys) seenUnknown(sum []byte) bool {
	var h [sha256.Size]byte
	copy(h[:], sum)
	k.mu.Lock()
	defer k.mu.Unlock()
	if e, ok := k.um[h]; ok {
		k.ul.MoveToFront(e)
		return true
	}
	if k.max < 0 {
		return false
	}
	k.um[h] = k.ul.PushFront(h)
	for k.ul.Len() > max(k.max, 1) {
		delete(k.um, k.ul.Remove(k.ul.Back()).([sha256.Size]byte))
	}
	return false
}

// measure folds the duration of a derivation into k.cost.
func (k *scramKeys) measure(d time.Duration) {
	old := k.cost.Load()
	if old == 0 {
		k.cost.Store(int64(d))
		return
	}
	k.cost.Store(old + (int64(d)-old)/8)
}

// len reports the entries cached, for tests.
func (k *scramKeys) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ll.Len()
}
