package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"strings"
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
//	rs:{ns/rl/<name>:<key>}:f   hash: w (window index), n (count), r<index> (reserved in a later window)
//	rs:{ns/rl/<name>:<key>}:l   zset: leases' unused tokens, "<lease id>:<tokens>" -> expiry µs
//
// Time is Redis TIME in µs, read inside each script: every sidecar counts
// by the one clock. Each call is one script (one round trip). Keys expire
// when they would hold nothing (full bucket, empty window). Each script
// defines decide(cost, want, wait), which takes cost, or up to want when
// more fits (a lease), or reserves cost for when it fits, within wait µs;
// replies are {allowed 0/1, remaining, retry_after µs (for an allowed
// reservation: its delay), reset_after µs, taken}, the durations as
// decimal strings. ARGV: the two parameters of the algorithm, cost (0:
// Get), want, wait; the lease scripts add batch, tolerance, ttl µs, lease
// id and the ids of used-up leases (space-separated).
const rlPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local eps = 0.001
local function f(x) return string.format('%.17g', x) end
local function ms(us) return math.max(1, math.ceil(us / 1000) + 1) end
`

// plainLua answers one call with decide.
const plainLua = `
return decide(tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
`

// leaseLua answers one call of a leasing limiter: it drops the expired
// and used-up leases of KEYS[#KEYS], asks decide for up to batch while
// the unused leased tokens stay within the tolerance, and records what it
// took beyond cost as a lease.
const leaseLua = `
local cost, LK = tonumber(ARGV[3]), KEYS[#KEYS]
local batch, tol, lttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
redis.call('ZREMRANGEBYSCORE', LK, '-inf', f(now))
for m in string.gmatch(ARGV[10], '%S+') do redis.call('ZREM', LK, m) end
local out = 0
for _, m in ipairs(redis.call('ZRANGE', LK, 0, -1)) do out = out + tonumber(string.match(m, ':(%d+)$')) end
local r = decide(cost, math.max(cost, math.min(batch, cost + tol - out)), 0)
if r[1] == 1 and r[5] > cost then
  redis.call('ZADD', LK, f(now + lttl), ARGV[9] .. ':' .. (r[5] - cost))
  redis.call('PEXPIRE', LK, ms(lttl))
end
return r
`

// ARGV[1..2]: emission interval µs, burst.
const gcraLua = `
local T, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tau = burst * T
local function decide(cost, want, wait)
  -- d: the TAT's distance from now (a difference of two times is exact;
  -- the times themselves only to 0.25us)
  local d = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') - now, 0)
  local nd = d + cost * T
  local function rem(x) return math.max(0, math.floor((tau - x) / T + eps)) end
  if cost > 0 and wait > 0 and nd > tau + eps and nd - tau <= wait + eps then
    redis.call('SET', KEYS[1], f(now + nd), 'PX', ms(nd))
    return {1, 0, f(nd - tau), f(nd), cost}
  end
  if nd > tau + eps or (cost == 0 and d + T > tau + eps) then
    local need = nd
    if cost == 0 then need = d + T end
    return {0, rem(d), f(need - tau), f(d), 0}
  end
  local n = cost
  if want > cost then
    n = math.max(cost, math.min(want, math.floor((tau - d) / T + eps)))
    nd = d + n * T
  end
  if cost > 0 then
    redis.call('SET', KEYS[1], f(now + nd), 'PX', ms(nd))
  end
  return {1, rem(nd), '0', f(nd), n}
end
`

// ARGV[1..2]: window µs, limit.
const slidingLua = `
local Z, H = KEYS[1], KEYS[2]
local w, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local function decide(cost, want, wait)
  local sum = tonumber(redis.call('HGET', H, 'sum') or '0')
  local old = redis.call('ZRANGEBYSCORE', Z, '-inf', f(now - w))
  local dirty = false
  if #old > 0 then
    for _, m in ipairs(old) do sum = sum - tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', Z, '-inf', f(now - w))
    dirty = true
  end
  local need = math.max(cost, 1)
  local allowed, retry, n = 0, 0, 0
  -- sum counts the reservations too (entries later than now): a take fits
  -- when every window holding it would stay within limit
  if sum + need <= limit then
    allowed = 1
    if cost > 0 then
      n = math.max(cost, math.min(want, limit - sum))
      local seq = redis.call('HINCRBY', H, 'seq', 1)
      redis.call('ZADD', Z, f(now), f(now) .. ':' .. seq .. ':' .. n)
      sum = sum + n
      dirty = true
    end
  else
    local over = sum + need - limit
    local es = redis.call('ZRANGE', Z, 0, over - 1, 'WITHSCORES')
    for i = 1, #es, 2 do
      over = over - tonumber(string.match(es[i], ':(%d+)$'))
      if over <= 0 then retry = tonumber(es[i + 1]) + w - now; break end
    end
    if cost > 0 and wait > 0 and retry > 0 and retry <= wait + eps then
      -- reserve: log the cost at the time it fits
      local at = now + retry
      local seq = redis.call('HINCRBY', H, 'seq', 1)
      redis.call('ZADD', Z, f(at), f(at) .. ':' .. seq .. ':' .. cost)
      sum = sum + cost
      allowed, n, dirty = 1, cost, true
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
  return {allowed, math.max(0, limit - sum), f(retry), f(reset), n}
end
`

// ARGV[1..2]: window µs, limit. The hash also holds r<index>: the cost
// reserved by waiting takes in a later window, its count when it starts.
const fixedLua = `
local w, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local function keep(ms)
  if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
end
local function decide(cost, want, wait)
  local idx = math.floor(now / w)
  local h = redis.call('HMGET', KEYS[1], 'w', 'n')
  local n = 0
  local rolled = tonumber(h[1]) ~= idx
  if rolled then
    n = tonumber(redis.call('HGET', KEYS[1], 'r' .. f(idx)) or '0')
  else
    n = tonumber(h[2])
  end
  local stop = (idx + 1) * w
  if n + math.max(cost, 1) > limit then
    if cost > 0 and wait > 0 then
      local j = idx + 1
      while j * w - now <= wait + eps do
        local r = tonumber(redis.call('HGET', KEYS[1], 'r' .. f(j)) or '0')
        if r + cost <= limit then
          redis.call('HINCRBY', KEYS[1], 'r' .. f(j), cost)
          keep(ms((j + 1) * w - now))
          return {1, limit - n, f(j * w - now), f(stop - now), cost}
        end
        j = j + 1
      end
    end
    return {0, limit - n, f(stop - now), f(stop - now), 0}
  end
  local took = 0
  if cost > 0 then
    took = math.max(cost, math.min(want, limit - n))
    n = n + took
    if rolled then
      for _, k in ipairs(redis.call('HKEYS', KEYS[1])) do
        local j = tonumber(string.match(k, '^r(.+)$'))
        if j and j <= idx then redis.call('HDEL', KEYS[1], k) end
      end
    end
    redis.call('HSET', KEYS[1], 'w', f(idx), 'n', n)
    keep(ms(stop - now))
  end
  local reset = 0
  if n > 0 then reset = stop - now end
  return {1, limit - n, '0', f(reset), took}
end
`

var (
	gcraScript         = redisx.NewScript("ratelimit.gcra", rlPrelude+gcraLua+plainLua)
	slidingScript      = redisx.NewScript("ratelimit.sliding", rlPrelude+slidingLua+plainLua)
	fixedScript        = redisx.NewScript("ratelimit.fixed", rlPrelude+fixedLua+plainLua)
	gcraLeaseScript    = redisx.NewScript("ratelimit.gcra_lease", rlPrelude+gcraLua+leaseLua)
	slidingLeaseScript = redisx.NewScript("ratelimit.sliding_lease", rlPrelude+slidingLua+leaseLua)
	fixedLeaseScript   = redisx.NewScript("ratelimit.fixed_lease", rlPrelude+fixedLua+leaseLua)
)

// Scripts are the Lua scripts of the Redis store, for preloading.
var Scripts = []*redis.Script{gcraScript, slidingScript, fixedScript, gcraLeaseScript, slidingLeaseScript, fixedLeaseScript}

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
	return r.run(ctx, name, key, l, cost, 0, nil)
}

// Reserve implements Reserver.
func (r *RedisStore) Reserve(ctx context.Context, name, key string, l Limiter, cost int64, wait time.Duration) (Result, error) {
	return r.run(ctx, name, key, l, cost, wait, nil)
}

// Lease implements Leaser.
func (r *RedisStore) Lease(ctx context.Context, name, key string, l Limiter, cost int64, q LeaseRequest) (Result, error) {
	return r.run(ctx, name, key, l, cost, 0, &q)
}

// Get implements Store.
func (r *RedisStore) Get(ctx context.Context, name, key string, l Limiter) (Result, error) {
	return r.run(ctx, name, key, l, 0, 0, nil)
}

func (r *RedisStore) run(ctx context.Context, name, key string, l Limiter, cost int64, wait time.Duration, q *LeaseRequest) (Result, error) {
	s, args := fixedScript, []any{strconv.FormatFloat(usec(l.Window), 'g', 17, 64), l.Limit}
	switch l.Algorithm {
	case GCRA:
		s, args = gcraScript, []any{strconv.FormatFloat(usec(l.Period)/l.Rate, 'g', 17, 64), l.Burst}
	case SlidingWindow:
		s = slidingScript
	}
	args = append(args, cost, cost, strconv.FormatFloat(usec(wait), 'g', 17, 64))
	keys := r.Keys(name, key, l.Algorithm)
	if q != nil {
		s = map[*redis.Script]*redis.Script{gcraScript: gcraLeaseScript, slidingScript: slidingLeaseScript, fixedScript: fixedLeaseScript}[s]
		keys = append(keys, r.leaseKey(name, key))
		args = append(args, q.Batch, q.Tolerance, strconv.FormatFloat(usec(q.TTL), 'g', 17, 64), q.ID, strings.Join(q.Done, " "))
	}
	v, err := redisx.Runner{Client: r.rdb, Timeout: r.timeout}.Run(ctx, s, keys, args...)
	if err != nil {
		return Result{}, err
	}
	a, ok := v.([]any)
	if !ok || len(a) != 5 {
		return Result{}, fmt.Errorf("ratelimit: bad reply %v", v)
	}
	allowed, ok1 := a[0].(int64)
	remaining, ok2 := a[1].(int64)
	retry, ok3 := a[2].(string)
	reset, ok4 := a[3].(string)
	taken, ok5 := a[4].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
		return Result{}, fmt.Errorf("ratelimit: bad reply %v", v)
	}
	out := Result{Allowed: allowed == 1, Remaining: remaining, Limit: l.Capacity(), Taken: taken}
	after := &out.RetryAfter
	if out.Allowed {
		after = &out.Delay // an allowed reservation's delay; 0 otherwise
	}
	for _, d := range []struct {
		s   string
		dst *time.Duration
	}{{retry, after}, {reset, &out.ResetAfter}} {
		us, err := strconv.ParseFloat(d.s, 64)
		if err != nil {
			return Result{}, fmt.Errorf("ratelimit: bad reply %v", v)
		}
		*d.dst = fromUsec(us)
	}
	return out, nil
}

// leaseKey is the key recording the leases of one limiter key.
func (r *RedisStore) leaseKey(name, key string) string {
	return redisx.Key(r.ns, redisx.RateLimit, redisx.Part(name)+":"+redisx.Part(key), "l")
}
