package lock

import (
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
)

// TestLockNamesAreRedisxKeys: the names built in one allocation are
// exactly redisx.Key's, for names that need escaping too.
func TestLockNamesAreRedisxKeys(t *testing.T) {
	for _, tc := range []struct{ ns, key string }{
		{"default", "orders-42"},
		{"default", "orders/42"},
		{"a:b", "saga-shard-13}:saga:h:v"},
		{"default", ""},
		{"日本", "50% {x} *?[]\\ \x00"},
	} {
		r := &RedisStore{ns: tc.ns}
		got := r.names(tc.key)
		want := lockNames{
			lock:     redisx.Key(tc.ns, redisx.Lock, tc.key, "lock"),
			queue:    redisx.Key(tc.ns, redisx.Lock, tc.key, "lock:queue"),
			queueExp: redisx.Key(tc.ns, redisx.Lock, tc.key, "lock:queue:exp"),
			revoked:  redisx.Key(tc.ns, redisx.Lock, tc.key, "lock:revoked"),
			channel:  redisx.Key(tc.ns, redisx.Lock, tc.key, "lock:released"),
		}
		if got != want {
			t.Errorf("names(%q, %q) = %+v; want %+v", tc.ns, tc.key, got, want)
		}
		if l, c := r.lockAndChannel(tc.key); l != want.lock || c != want.channel {
			t.Errorf("lockAndChannel(%q, %q) = %q, %q; want %q, %q", tc.ns, tc.key, l, c, want.lock, want.channel)
		}
	}
}
