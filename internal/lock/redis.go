package lock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// A lock is one hash {lease, owner, exp, fence} at rs:{ns/key}:lock, with
// expiry decided by comparing exp with Redis TIME (not by key expiry), so
// the fencing counter survives the lease. The key itself expires
// retentionMS after the lease; losing it is safe because tokens are floored
// by TIME in microseconds. Releases are announced on the sharded channel
// rs:{ns/key}:lock:released, in the same slot as the hash.
const lockPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

var acquireScript = redisx.NewScript("lock.acquire", lockPrelude+`
local h = redis.call('HMGET', KEYS[1], 'lease', 'owner', 'exp', 'fence')
local fence = tonumber(h[4]) or 0
local exp = tonumber(h[3]) or 0
local ttl = tonumber(ARGV[3])
if h[1] and exp > now and h[1] ~= ARGV[1] then
  return {0, h[2] or '', string.format('%.0f', fence), string.format('%.0f', exp)}
end
if not (h[1] == ARGV[1] and exp > now) then
  local nowus = tonumber(t[1]) * 1000000 + tonumber(t[2])
  fence = math.max(fence + 1, nowus)
end
exp = now + ttl
redis.call('HSET', KEYS[1], 'lease', ARGV[1], 'owner', ARGV[2], 'exp', string.format('%.0f', exp), 'fence', string.format('%.0f', fence))
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[4]))
return {1, ARGV[2], string.format('%.0f', fence), string.format('%.0f', exp)}
`)

var releaseScript = redisx.NewScript("lock.release", lockPrelude+`
local h = redis.call('HMGET', KEYS[1], 'lease', 'exp')
if h[1] ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'lease', 'owner', 'exp')
if (tonumber(h[2]) or 0) <= now then return 0 end
redis.call('SPUBLISH', ARGV[2], 'released')
return 1
`)

var renewScript = redisx.NewScript("lock.renew", lockPrelude+`
local h = redis.call('HMGET', KEYS[1], 'lease', 'exp')
if h[1] ~= ARGV[1] or (tonumber(h[2]) or 0) <= now then return '-1' end
local exp = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'exp', string.format('%.0f', exp))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]))
return string.format('%.0f', exp)
`)

var getScript = redisx.NewScript("lock.get", lockPrelude+`
local h = redis.call('HMGET', KEYS[1], 'lease', 'owner', 'exp', 'fence')
local exp = tonumber(h[3]) or 0
local held = 0
if h[1] and exp > now then held = 1 end
return {held, h[2] or '', h[4] or '0', string.format('%.0f', exp)}
`)

// Scripts are the Lua scripts of the Redis lock store, for preloading.
var Scripts = []*redis.Script{acquireScript, releaseScript, renewScript, getScript}

const retentionMS = int64(time.Hour / time.Millisecond)

// RedisStore is the Store on Redis (standalone, Sentinel or Cluster). Every
// method is one script, one round trip, bounded by the store timeout.
type RedisStore struct {
	rdb     redis.UniversalClient
	ns      string
	timeout time.Duration
	wait    redisx.Wait

	watches *redisx.Watches
}

// RedisOption configures a RedisStore.
type RedisOption func(*RedisStore)

// WithWait makes grants and renewals wait for w.Replicas replicas to
// acknowledge them (Redis WAIT on the same connection) before they are
// reported. Fewer in w.Timeout is store.ErrUnavailable (wrapping
// redisx.ErrNotReplicated), never a grant: an unacknowledged grant is
// released again at once if Redis lets us, else it lapses at its TTL.
func WithWait(w redisx.Wait) RedisOption {
	return func(r *RedisStore) { r.wait = w }
}

// NewRedisStore returns a store for namespace ns whose calls each take at
// most timeout before failing with store.ErrUnavailable.
func NewRedisStore(rdb redis.UniversalClient, ns string, timeout time.Duration, opts ...RedisOption) *RedisStore {
	r := &RedisStore{rdb: rdb, ns: ns, timeout: timeout, watches: redisx.NewWatches(rdb, timeout)}
	for _, o := range opts {
		o(r)
	}
	return r
}

func (r *RedisStore) key(key string) string     { return redisx.Key(r.ns, key, "lock") }
func (r *RedisStore) channel(key string) string { return redisx.Key(r.ns, key, "lock:released") }

func (r *RedisStore) run(ctx context.Context, s *redis.Script, key string, args ...any) (any, error) {
	sctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	v, err := s.Run(sctx, r.rdb, []string{r.key(key)}, args...).Result()
	return v, redisx.Classify(ctx, err)
}

// runDurable is run for a write that must reach r.wait.Replicas replicas
// when wrote(reply) says it changed something.
func (r *RedisStore) runDurable(ctx context.Context, s *redis.Script, wrote func(any) bool, key string, args ...any) (any, error) {
	sctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	v, err := redisx.RunWait(sctx, r.rdb, s, r.wait, wrote, []string{r.key(key)}, args...)
	return v, redisx.Classify(ctx, err)
}

// granted reports whether an acquire reply granted the lock.
func granted(v any) bool {
	if a, _ := v.([]any); len(a) > 0 {
		n, _ := a[0].(int64)
		return n == 1
	}
	return false
}

// renewed reports whether a renew reply extended the lease.
func renewed(v any) bool { s, _ := v.(string); return s != "" && s != "-1" }

// TryAcquire implements Store.
func (r *RedisStore) TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (Lease, Holder, bool, error) {
	v, err := r.runDurable(ctx, acquireScript, granted, key, leaseID, owner, ttl.Milliseconds(), retentionMS)
	if errors.Is(err, redisx.ErrNotReplicated) {
		// Nobody will ever learn this lease id: free the lock now rather
		// than at its TTL. Best effort; a failed release is harmless.
		rctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		_, _ = releaseScript.Run(rctx, r.rdb, []string{r.key(key)}, leaseID, r.channel(key)).Result()
		cancel()
	}
	if err != nil {
		return Lease{}, Holder{}, false, err
	}
	ok, label, fence, exp, err := parseLockReply(v)
	if err != nil {
		return Lease{}, Holder{}, false, err
	}
	if !ok {
		return Lease{}, Holder{Owner: label, FencingToken: fence, ExpireTime: exp}, false, nil
	}
	return Lease{Key: key, LeaseID: leaseID, Owner: owner, FencingToken: fence, ExpireTime: exp}, Holder{}, true, nil
}

// Release implements Store.
func (r *RedisStore) Release(ctx context.Context, key, leaseID string) error {
	v, err := r.run(ctx, releaseScript, key, leaseID, r.channel(key))
	if err != nil {
		return err
	}
	if n, _ := v.(int64); n != 1 {
		return ErrLeaseLost
	}
	return nil
}

// Renew implements Store.
func (r *RedisStore) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (time.Time, error) {
	v, err := r.runDurable(ctx, renewScript, renewed, key, leaseID, ttl.Milliseconds(), retentionMS)
	if err != nil {
		return time.Time{}, err
	}
	s, _ := v.(string)
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("lock: renew: bad reply %v", v)
	}
	if ms < 0 {
		return time.Time{}, ErrLeaseLost
	}
	return time.UnixMilli(ms), nil
}

// Get implements Store.
func (r *RedisStore) Get(ctx context.Context, key string) (Info, error) {
	v, err := r.run(ctx, getScript, key)
	if err != nil {
		return Info{}, err
	}
	held, label, fence, exp, err := parseLockReply(v)
	if err != nil {
		return Info{}, err
	}
	info := Info{Held: held, LastFencingToken: fence}
	if held {
		info.Holder = Holder{Owner: label, FencingToken: fence, ExpireTime: exp}
	}
	return info, nil
}

func parseLockReply(v any) (flag bool, label string, fence uint64, exp time.Time, err error) {
	a, ok := v.([]any)
	if !ok || len(a) != 4 {
		return false, "", 0, time.Time{}, fmt.Errorf("lock: bad reply %v", v)
	}
	n, _ := a[0].(int64)
	label, _ = a[1].(string)
	fs, _ := a[2].(string)
	es, _ := a[3].(string)
	fence, err1 := strconv.ParseUint(fs, 10, 64)
	ms, err2 := strconv.ParseInt(es, 10, 64)
	if err1 != nil || err2 != nil {
		return false, "", 0, time.Time{}, fmt.Errorf("lock: bad reply %v", v)
	}
	return n == 1, label, fence, time.UnixMilli(ms), nil
}

// WatchRelease implements Store. Watchers of one key share one sharded
// subscription; it is confirmed by Redis before WatchRelease returns.
func (r *RedisStore) WatchRelease(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	return r.watches.Watch(ctx, r.channel(key))
}

// Evict deletes key's bookkeeping, as Redis eviction might.
func (r *RedisStore) Evict(ctx context.Context, key string) error {
	return r.rdb.Del(ctx, r.key(key)).Err()
}

var _ store.Pinger = redisx.Pinger{}
