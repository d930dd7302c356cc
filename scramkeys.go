package odmr

import (
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
)

// DefaultSCRAMCacheSize is how many derived SCRAM keys a [Provider] keeps
// by default.
const DefaultSCRAMCacheSize = 10000

// scramKeys derives SCRAM credentials from shared secrets with a salt that
// is stable per user, and caches them: without it every SCRAM start costs
// a PBKDF2 of DefaultSCRAMIterations. Users who do not exist get the same
// treatment with a secret nobody knows, so that their salt, iteration
// count and timing look like a real user's.
type scramKeys struct {
	key   []byte // derives the salts
	dummy []byte // the secret of users who do not exist
	max   int    // < 0: no cache

	mu sync.Mutex
	ll *list.List // of *scramEntry, most recently used first
	m  map[[sha256.Size]byte]*list.Element
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
	return &scramKeys{key: key, dummy: dummy, max: max, ll: list.New(), m: make(map[[sha256.Size]byte]*list.Element)}
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
	c, err := deriveSCRAM(mech, user, string(secret), salt, DefaultSCRAMIterations)
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

// unknown returns credentials for a user who does not exist: derived like
// a real user's, then spoilt so that no proof matches them.
func (k *scramKeys) unknown(mech, user string) (SCRAMCredentials, error) {
	c, err := k.derive(mech, user, k.dummy)
	if err != nil {
		return c, err
	}
	stored := make([]byte, len(c.StoredKey))
	for i, b := range c.StoredKey {
		stored[i] = ^b
	}
	c.StoredKey = stored
	return c, nil
}

// len reports the entries cached, for tests.
func (k *scramKeys) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ll.Len()
}
