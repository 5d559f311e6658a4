package redisx

import (
	"errors"
	"strings"
)

// Capability names the owner of a Redis record. It is part of every key's
// hash tag, so that no name of one capability can address a record of
// another. The values are fixed here and use only [a-z].
type Capability string

// The capabilities that keep state in Redis. See docs/redis-keys.md.
const (
	Lock        Capability = "lock"
	Idempotency Capability = "idem"
	Breaker     Capability = "breaker"
	Clock       Capability = "clock"
	Saga        Capability = "saga"
	Events      Capability = "ev"
	RateLimit   Capability = "rl"
	Semaphore   Capability = "sem"
)

// Key names a Redis key (or sharded pub/sub channel) of one record:
//
//	rs:{<ns>/<capability>/<Escape(id)>}:<suffix>
//
// id is the record's user-supplied name (a lock key, a breaker name, a
// topic...). Every key and channel of one record shares the hash tag
// {<ns>/<capability>/<Escape(id)>}, so one script can touch them all on
// Redis Cluster. After Escape, neither ns nor id contains '{', '}', '/' or
// ':', so Redis's hash tag (from the first '{' to the first '}' after it)
// is exactly that tag whatever the names, and (ns, capability, id) can be
// read back from it: distinct records never share a tag, let alone a key.
//
// suffix names the key within the record. It is a constant of the
// capability, possibly followed by user-supplied parts, each passed
// through Escape (see Part), so that the suffixes of one capability stay
// distinct too.
func Key(ns string, c Capability, id, suffix string) string {
	return "rs:" + Tag(ns, c, id) + ":" + suffix
}

// Tag is the hash tag, braces included, of the record (ns, c, id).
func Tag(ns string, c Capability, id string) string {
	return "{" + Escape(ns) + "/" + string(c) + "/" + Escape(id) + "}"
}

// Part is Escape, for a user-supplied part of a key's suffix (an events
// group, an idempotency key under a topic, a saga id within its shard).
func Part(s string) string { return Escape(s) }

// escaped reports whether byte c is percent-encoded by Escape: the hash
// tag braces, the escape character, the separators '/' and ':', the glob
// characters of SCAN MATCH patterns, space and ASCII control characters.
// Everything else, UTF-8 included, is kept so that `redis-cli --scan`
// shows ordinary names as they are.
func escaped(c byte) bool {
	switch c {
	case '{', '}', '%', '/', ':', '*', '?', '[', ']', '\\', ' ', 0x7f:
		return true
	}
	return c < ' '
}

const upperHex = "0123456789ABCDEF"

// Escape encodes a user-supplied name for use in a key: each byte for which
// escaped is true becomes '%' and two upper-case hex digits. It is
// injective (Unescape inverts it) and its result never contains '{', '}',
// '/' or ':'. Names of letters, digits, '.', '_', '-' and non-ASCII text
// are returned unchanged.
func Escape(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if escaped(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if escaped(c) {
			b = append(b, '%', upperHex[c>>4], upperHex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

// ErrBadEscape is returned by Unescape for a string Escape cannot produce.
var ErrBadEscape = errors.New("redisx: not an escaped name")

// Unescape inverts Escape. It accepts only Escape's exact output (upper-case
// hex, and only the bytes Escape encodes), so that each name has one form.
func Unescape(s string) (string, error) {
	if !strings.Contains(s, "%") {
		for i := 0; i < len(s); i++ {
			if escaped(s[i]) {
				return "", ErrBadEscape
			}
		}
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			if escaped(c) {
				return "", ErrBadEscape
			}
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) {
			return "", ErrBadEscape
		}
		hi, lo := strings.IndexByte(upperHex, s[i+1]), strings.IndexByte(upperHex, s[i+2])
		if hi < 0 || lo < 0 {
			return "", ErrBadEscape
		}
		d := byte(hi<<4 | lo)
		if !escaped(d) {
			return "", ErrBadEscape
		}
		b = append(b, d)
		i += 2
	}
	return string(b), nil
}

// ParseTag reads (ns, capability, id) back from a key or channel made by
// Key: the hash tag Redis uses (from the first '{' to the first '}' after
// it), split at its two '/' and unescaped. ok is false for other strings.
func ParseTag(key string) (ns string, c Capability, id string, ok bool) {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return "", "", "", false
	}
	end := strings.IndexByte(key[open+1:], '}')
	if end < 0 {
		return "", "", "", false
	}
	parts := strings.Split(key[open+1:open+1+end], "/")
	if len(parts) != 3 {
		return "", "", "", false
	}
	var err error
	if ns, err = Unescape(parts[0]); err != nil {
		return "", "", "", false
	}
	if id, err = Unescape(parts[2]); err != nil {
		return "", "", "", false
	}
	return ns, Capability(parts[1]), id, true
}
