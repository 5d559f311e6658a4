package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
)

// A limiter's key is one record with the hash tag
// {ns/rl/<Escape(name)>:<Escape(key)>} (redisx.Key; docs/redis-keys.md),
// so that the keys of one limiter spread over a Cluster's slots:
//
//	rs:{ns/rl/<name>:<key>}:g   string: GCRA theoretical arrival time, µs
//	rs:{ns/rl/<name>:<key>}:s   zset: sliding window log, "<µs>:<seq>:<cost>" -> µs
//	rs:{ns/rl/<name>:<key>}:sn  hash: sum (costs in the log), seq
//	rs:{ns/rl/<name>:<key>}:f   hash: w (window index), n (count)
//
// Time is Redis TIME in µs, read inside each script: every sidecar counts
// by the one clock. Each call is one script (one round trip). Keys expire
// when they would hold nothing (full bucket, empty window). Replies:
// {allowed 0/1, remaining, retry_after µs, reset_after µs}, the
// durations as decimal strings.
const rlPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local eps = 0.001
local function f(x) return string.format('%.17g', x) end
local function ms(us) return math.max(1, math.ceil(us / 1000) + 1) end
`

// ARGV: emission interval µs, burst, cost (0: Get).
var gcraScript = redisx.NewScript("ratelimit.gcra", rlPrelude+`
local T, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tau = burst * T
-- d: the TAT's distance from now (a difference of two times is exact;
-- the times themselves only to 0.25us)
local d = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') - now, 0)
local nd = d + cost * T
local function rem(x) return math.max(0, math.floor((tau - x) / T + eps)) end
if nd > tau + eps or (cost == 0 and d + T > tau + eps) then
  local want = nd
  if cost == 0 then want = d + T end
  return {0, rem(d), f(want - tau), f(d)}
end
if cost > 0 then
  redis.call('SET', KEYS[1], f(now + nd), 'PX', ms(nd))
end
return {1, rem(nd), '0', f(nd)}
`)

// ARGV: window µs, limit, cost (0: Get).
var slidingScript = redisx.NewScript("ratelimit.sliding", rlPrelude+`
local Z, H = KEYS[1], KEYS[2]
local w, limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local sum = tonumber(redis.call('HGET', H, 'sum') or '0')
local old = redis.call('ZRANGEBYSCORE', Z, '-inf', f(now - w))
local dirty = false
if #old > 0 then
  for _, m in ipairs(old) do sum = sum - tonumber(string.match(m, ':(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', Z, '-inf', f(now - w))
  dirty = true
end
local need = math.max(cost, 1)
local allowed, retry = 0, 0
if sum + need <= limit then
  allowed = 1
  if cost > 0 then
    local seq = redis.call('HINCRBY', H, 'seq', 1)
    redis.call('ZADD', Z, f(now), f(now) .. ':' .. seq .. ':' .. cost)
    sum = sum + cost
    dirty = true
  end
else
  local over = sum + need - limit
  local es = redis.call('ZRANGE', Z, 0, over - 1, 'WITHSCORES')
  for i = 1, #es, 2 do
    over = over - tonumber(string.match(es[i], ':(%d+)$'))
    if over <= 0 then retry = tonumber(es[i + 1]) + w - now; break end
  end
end
local reset = 0
local last = redis.call('ZRANGE', Z, -1, -1, 'WITHSCORES')
if #last > 0 then reset = tonumber(last[2]) + w - now end
if dirty then
  if sum > 0 then
    redis.call('HSET', H, 'sum', sum)
    redis.call('PEXPIRE', Z, ms(reset))
    redis.call('PEXPIRE', H, ms(reset))
  else
    redis.call('DEL', Z, H)
  end
end
return {allowed, limit - sum, f(retry), f(reset)}
`)

// ARGV: window µs, limit, cost (0: Get).
var fixedScript = redisx.NewScript("ratelimit.fixed", rlPrelude+`
local w, limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local idx = math.floor(now / w)
local h = redis.call('HMGET', KEYS[1], 'w', 'n')
local n = 0
if tonumber(h[1]) == idx then n = tonumber(h[2]) end
local stop = (idx + 1) * w
if n + math.max(cost, 1) > limit then
  return {0, limit - n, f(stop - now), f(stop - now)}
end
if cost > 0 then
  n = n + cost
  redis.call('HSET', KEYS[1], 'w', f(idx), 'n', n)
  redis.call('PEXPIRE', KEYS[1], ms(stop - now))
end
local reset = 0
if n > 0 then reset = stop - now end
return {1, limit - n, '0', f(reset)}
`)

// Scripts are the Lua scripts of the Redis store, for preloading.
var Scripts = []*redis.Script{gcraScript, slidingScript, fixedScript}

// RedisStore is the Store on Redis (standalone, Sentinel or Cluster).
// Every call is one script, bounded by the store timeout.
type RedisStore struct {
	rdb     redis.UniversalClient
	ns      string
	timeout time.Duration
}

// NewRedisStore returns a store for namespace ns whose calls each take at
// most timeout before failing with an error wrapping store.ErrUnavailable.
func NewRedisStore(rdb redis.UniversalClient, ns string, timeout time.Duration) *RedisStore {
	return &RedisStore{rdb: rdb, ns: ns, timeout: timeout}
}

// Keys returns the Redis keys of one limiter key for algorithm a.
func (r *RedisStore) Keys(name, key string, a Algorithm) []string {
	id := redisx.Part(name) + ":" + redisx.Part(key)
	switch a {
	case GCRA:
		return []string{redisx.Key(r.ns, redisx.RateLimit, id, "g")}
	case SlidingWindow:
		return []string{redisx.Key(r.ns, redisx.RateLimit, id, "s"), redisx.Key(r.ns, redisx.RateLimit, id, "sn")}
	}
	return []string{redisx.Key(r.ns, redisx.RateLimit, id, "f")}
}

// Take implements Store.
func (r *RedisStore) Take(ctx context.Context, name, key string, l Limiter, cost int64) (Result, error) {
	return r.run(ctx, name, key, l, cost)
}

// Get implements Store.
func (r *RedisStore) Get(ctx context.Context, name, key string, l Limiter) (Result, error) {
	return r.run(ctx, name, key, l, 0)
}

func (r *RedisStore) run(ctx context.Context, name, key string, l Limiter, cost int64) (Result, error) {
	s, args := fixedScript, []any{strconv.FormatFloat(usec(l.Window), 'g', 17, 64), l.Limit, cost}
	switch l.Algorithm {
	case GCRA:
		s, args = gcraScript, []any{strconv.FormatFloat(usec(l.Period)/l.Rate, 'g', 17, 64), l.Burst, cost}
	case SlidingWindow:
		s = slidingScript
	}
	v, err := redisx.Runner{Client: r.rdb, Timeout: r.timeout}.Run(ctx, s, r.Keys(name, key, l.Algorithm), args...)
	if err != nil {
		return Result{}, err
	}
	a, ok := v.([]any)
	if !ok || len(a) != 4 {
		return Result{}, fmt.Errorf("ratelimit: bad reply %v", v)
	}
	allowed, ok1 := a[0].(int64)
	remaining, ok2 := a[1].(int64)
	retry, ok3 := a[2].(string)
	reset, ok4 := a[3].(string)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return Result{}, fmt.Errorf("ratelimit: bad reply %v", v)
	}
	out := Result{Allowed: allowed == 1, Remaining: remaining, Limit: l.Capacity()}
	for _, d := range []struct {
		s   string
		dst *time.Duration
	}{{retry, &out.RetryAfter}, {reset, &out.ResetAfter}} {
		us, err := strconv.ParseFloat(d.s, 64)
		if err != nil {
			return Result{}, fmt.Errorf("ratelimit: bad reply %v", v)
		}
		*d.dst = fromUsec(us)
	}
	return out, nil
}
