package clock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
)

// A Lamport clock is one Redis integer at rs:{ns/clock/<name>}:lamport
// (redisx.Key, <name> escaped; see docs/redis-keys.md), without
// expiry. Next is a single INCRBY; Observe is one script. Values above 2^53
// cannot go through Lua numbers (doubles) exactly, so the script compares
// decimal strings, lets INCR do the 64-bit arithmetic and returns the value
// as a string. Redis refuses to increment past 2^63-1 ("would overflow")
// without changing the value, which is ErrExhausted.
var observeScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1]) or '0'
local ts = ARGV[1]
if #ts > #cur or (#ts == #cur and ts > cur) then
  redis.call('SET', KEYS[1], ts)
end
redis.call('INCR', KEYS[1])
return redis.call('GET', KEYS[1])
`)

// Scripts are the Lua scripts of the Redis clock store, for preloading.
var Scripts = []*redis.Script{observeScript}

// RedisStore is the Store on Redis (standalone, Sentinel or Cluster). Every
// method is one command or one script, one round trip, bounded by the
// store timeout. The guarantee that values never repeat survives a Redis
// restart only when every write is persisted before it is acknowledged
// (appendonly yes, appendfsync always) and the clock keys are never
// evicted (maxmemory-policy noeviction or a volatile-* policy: the keys
// have no TTL).
type RedisStore struct {
	rdb     redis.UniversalClient
	ns      string
	timeout time.Duration
}

// NewRedisStore returns a store for namespace ns whose calls each take at
// most timeout before failing with store.ErrUnavailable.
func NewRedisStore(rdb redis.UniversalClient, ns string, timeout time.Duration) *RedisStore {
	return &RedisStore{rdb: rdb, ns: ns, timeout: timeout}
}

func (r *RedisStore) key(clock string) string {
	return redisx.Key(r.ns, redisx.Clock, clock, "lamport")
}

// classify maps Redis's integer overflow to ErrExhausted and everything
// else through redisx.Classify.
func classify(ctx context.Context, err error) error {
	var rerr redis.Error
	if errors.As(err, &rerr) && strings.Contains(rerr.Error(), "would overflow") {
		return ErrExhausted
	}
	return redisx.Classify(ctx, err)
}

// Next implements Store.
func (r *RedisStore) Next(ctx context.Context, clock string, count uint64) (uint64, error) {
	if count > MaxLamport {
		return 0, ErrExhausted
	}
	sctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	v, err := r.rdb.IncrBy(sctx, r.key(clock), int64(count)).Result()
	if err != nil {
		return 0, classify(ctx, err)
	}
	if v < 0 {
		return 0, fmt.Errorf("clock: next: negative value %d in the store", v)
	}
	return uint64(v), nil
}

// Observe implements Store.
func (r *RedisStore) Observe(ctx context.Context, clock string, ts uint64) (uint64, error) {
	if ts >= MaxLamport {
		return 0, ErrExhausted
	}
	sctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	v, err := observeScript.Run(sctx, r.rdb, []string{r.key(clock)}, strconv.FormatUint(ts, 10)).Result()
	if err != nil {
		return 0, classify(ctx, err)
	}
	return parseValue("observe", v)
}

// Get implements Store.
func (r *RedisStore) Get(ctx context.Context, clock string) (uint64, error) {
	sctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	v, err := r.rdb.Get(sctx, r.key(clock)).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, classify(ctx, err)
	}
	return parseValue("get", v)
}

func parseValue(op string, v any) (uint64, error) {
	s, _ := v.(string)
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > MaxLamport {
		return 0, fmt.Errorf("clock: %s: bad value %v in the store", op, v)
	}
	return n, nil
}

// Set forces clock to v, as a Redis that lost writes would; for tests of
// the regression check.
func (r *RedisStore) Set(ctx context.Context, clock string, v uint64) error {
	return r.rdb.Set(ctx, r.key(clock), strconv.FormatUint(v, 10), 0).Err()
}
