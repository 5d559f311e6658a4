package redisx

import (
	"fmt"
	"hash/fnv"
	"math/rand"
	"strings"
	"testing"
	"unicode/utf8"
)

// exploit is the lock key of issue 16: with the old layout
// rs:{ns/<id>}:<suffix>, AcquireLock on it addressed the hash of saga
// "v}:lock" in saga shard 13.
const exploit = "saga-shard-13}:saga:h:v"

// redisTag is the part of key Redis hashes on Cluster: between the first
// '{' and the first '}' after it, when that is not empty; else the key.
func redisTag(key string) string {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return key
	}
	end := strings.IndexByte(key[open+1:], '}')
	if end <= 0 {
		return key
	}
	return key[open+1 : open+1+end]
}

// keyID is what a key stands for: the record (namespace, capability, name)
// and, within it, the key's kind and its own user-supplied name.
type keyID struct {
	ns         string
	c          Capability
	name, kind string
	sub        string
}

// produced is one key with the record it belongs to.
type produced struct {
	key string
	id  keyID
	tag string // the record's tag, as passed to Key
}

// layout lists every key and channel the capability stores form from one
// user-supplied name (and, for events, an idempotency key and a group;
// for sagas, the saga id). It mirrors the stores' key helpers (lock,
// idempotency, breaker, clock, saga, events redis.go); the Redis test in
// internal/keyspace checks the stores themselves.
func layout(ns, name, sub string) []produced {
	var out []produced
	add := func(c Capability, tagID, kind, subName, suffix string) {
		out = append(out, produced{
			key: Key(ns, c, tagID, suffix),
			id:  keyID{ns: ns, c: c, name: tagID, kind: kind, sub: subName},
			tag: tagID,
		})
	}
	for _, s := range []string{"lock", "lock:released", "lock:queue", "lock:queue:exp", "lock:revoked"} {
		add(Lock, name, s, "", s)
	}
	for _, s := range []string{"idem", "idem:done", "idem:revoked"} {
		add(Idempotency, name, s, "", s)
	}
	for _, s := range []string{"b", "b:permits", "b:reporters", "b:released"} {
		add(Breaker, name, s, "", s)
	}
	add(Clock, name, "lamport", "", "lamport")
	// A saga's hash and log live in its shard's record, named by the id.
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	shard := fmt.Sprintf("shard-%02d", h.Sum32()%16)
	add(Saga, shard, "h", name, "saga:h:"+Part(name))
	add(Saga, shard, "l", name, "saga:l:"+Part(name))
	for _, s := range []string{"all", "r", "c", "g", "d", "f", "due"} {
		add(Saga, shard, "i:"+s, "", "saga:i:"+s)
	}
	// Topic name and name.dead share the record name.
	for _, ev := range []string{"ev", "evd"} {
		add(Events, name, ev, "", ev)
		add(Events, name, ev+":dedup", sub, ev+":dedup:"+Part(sub))
		add(Events, name, ev+":first", sub, ev+":first:"+Part(sub))
		add(Events, name, ev+":due", sub, ev+":due:"+Part(sub))
	}
	return out
}

var pieces = []string{
	"{", "}", ":", "/", "%", "%7B", "%7D", "%2F", "%3A", "%25", "%", "%%", "%Z", "%7",
	"a", "b", "42", "lock", "idem", "ev", "evd", "b", "saga", "breaker", "clock",
	"saga-shard-13", "saga-shard-13}", ":saga:h:", "shard-01", "}:lock", "{x}", "rs:{",
	".dead", "é", "日本", "\U0001F600", "\x00", "\xff", "\xc3", " ", "\t", "\n", "*", "?", "[", "]", "\\",
	exploit, "v}:lock",
}

func randomName(rng *rand.Rand) string {
	var b strings.Builder
	for n := rng.Intn(7); n > 0; n-- {
		if rng.Intn(4) == 0 {
			b.WriteByte(byte(rng.Intn(256)))
		} else {
			b.WriteString(pieces[rng.Intn(len(pieces))])
		}
	}
	return b.String()
}

// TestKeysInjectiveAcrossCapabilities is the property of issue 16: random
// user-supplied names, across every capability and namespace, never give
// two equal keys (or channels) for different (capability, name, key)
// triples, and every key hashes on exactly its record's tag.
func TestKeysInjectiveAcrossCapabilities(t *testing.T) {
	rng := rand.New(rand.NewSource(16))
	seen := map[string]keyID{}
	check := func(ns, name, sub string) {
		for _, p := range layout(ns, name, sub) {
			if prev, ok := seen[p.key]; ok && prev != p.id {
				t.Fatalf("key %q is both %+v and %+v", p.key, prev, p.id)
			}
			seen[p.key] = p.id
			want := Tag(ns, p.id.c, p.tag)
			if got := "{" + redisTag(p.key) + "}"; got != want {
				t.Fatalf("key %q hashes on %q, want the record's tag %q", p.key, got, want)
			}
			inner := want[1 : len(want)-1]
			if strings.ContainsAny(inner, "{}") {
				t.Fatalf("tag %q of %q contains a brace", want, p.key)
			}
			gns, gc, gid, ok := ParseTag(p.key)
			if !ok || gns != ns || gc != p.id.c || gid != p.tag {
				t.Fatalf("ParseTag(%q) = %q %q %q %v, want %q %q %q", p.key, gns, gc, gid, ok, ns, p.id.c, p.tag)
			}
		}
	}
	fixed := []string{"", exploit, "v}:lock", "saga-shard-13", "a", "a/b", "a:b", "a%b", "a%25b", "{", "}", "{}", "%7B", "x.dead", ".dead"}
	for _, ns := range []string{"default", "orders", "a.b_c-d"} {
		for _, a := range fixed {
			for _, b := range fixed {
				check(ns, a, b)
			}
		}
	}
	namespaces := []string{"default", "ns", "weird}/ns{"}
	for i := 0; i < 20000; i++ {
		check(namespaces[rng.Intn(len(namespaces))], randomName(rng), randomName(rng))
	}
	t.Logf("%d distinct keys", len(seen))
}

// TestExploitKeys pins the forms of issue 16's keys: the crafted lock key
// stays in the lock's own record, and the saga keys in the saga shard.
func TestExploitKeys(t *testing.T) {
	if got, want := Key("ns", Lock, exploit, "lock"), "rs:{ns/lock/saga-shard-13%7D%3Asaga%3Ah%3Av}:lock"; got != want {
		t.Errorf("lock key = %q, want %q", got, want)
	}
	if got, want := Key("ns", Saga, "shard-13", "saga:h:"+Part("v}:lock")), "rs:{ns/saga/shard-13}:saga:h:v%7D%3Alock"; got != want {
		t.Errorf("saga key = %q, want %q", got, want)
	}
	if got, want := Key("default", Lock, "orders-42", "lock"), "rs:{default/lock/orders-42}:lock"; got != want {
		t.Errorf("plain key = %q, want %q", got, want)
	}
}

func TestEscapeKeepsOrdinaryNames(t *testing.T) {
	for _, s := range []string{"", "orders-42", "user_7.cart", "Ünïcödé-日本"} {
		if got := Escape(s); got != s {
			t.Errorf("Escape(%q) = %q, want it unchanged", s, got)
		}
	}
	if got, want := Escape("a{b}c%d/e:f g*"), "a%7Bb%7Dc%25d%2Fe%3Af%20g%2A"; got != want {
		t.Errorf("Escape = %q, want %q", got, want)
	}
}

func TestUnescapeRefusesNonCanonical(t *testing.T) {
	for _, s := range []string{"%", "%7", "%7b", "%41", "a{", "a}", "a/b", "a:b", "%GG", "%2", " "} {
		if got, err := Unescape(s); err == nil {
			t.Errorf("Unescape(%q) = %q, want an error", s, got)
		}
	}
}

// FuzzKey: Escape is decodable (so injective) and keeps the tag closed;
// Key differs for different records and parses back to its record.
// Seeds: testdata/fuzz/FuzzKey.
func FuzzKey(f *testing.F) {
	f.Add("default", uint8(0), exploit, uint8(4), "v}:lock")
	f.Add("ns", uint8(0), "a", uint8(1), "a")
	f.Fuzz(func(t *testing.T, ns string, c1 uint8, id1 string, c2 uint8, id2 string) {
		caps := []Capability{Lock, Idempotency, Breaker, Clock, Saga, Events}
		ca, cb := caps[int(c1)%len(caps)], caps[int(c2)%len(caps)]
		for _, s := range []string{ns, id1, id2} {
			e := Escape(s)
			if strings.ContainsAny(e, "{}/:") {
				t.Fatalf("Escape(%q) = %q contains a separator", s, e)
			}
			if d, err := Unescape(e); err != nil || d != s {
				t.Fatalf("Unescape(Escape(%q)) = %q, %v", s, d, err)
			}
			if utf8.ValidString(s) && !utf8.ValidString(e) {
				t.Fatalf("Escape(%q) = %q is not UTF-8", s, e)
			}
		}
		ka, kb := Key(ns, ca, id1, "x"), Key(ns, cb, id2, "x")
		if (ka == kb) != (ca == cb && id1 == id2) {
			t.Fatalf("(%s,%q) -> %q, (%s,%q) -> %q", ca, id1, ka, cb, id2, kb)
		}
		if redisTag(ka) != Tag(ns, ca, id1)[1:len(Tag(ns, ca, id1))-1] {
			t.Fatalf("key %q hashes on %q", ka, redisTag(ka))
		}
		// A user part of the suffix cannot reach into the tag either.
		kc := Key(ns, ca, id1, "first:"+Part(id2))
		if redisTag(kc) != redisTag(ka) {
			t.Fatalf("key %q hashes on %q, want %q", kc, redisTag(kc), redisTag(ka))
		}
		if gns, gc, gid, ok := ParseTag(ka); !ok || gns != ns || gc != ca || gid != id1 {
			t.Fatalf("ParseTag(%q) = %q %q %q %v", ka, gns, gc, gid, ok)
		}
	})
}
