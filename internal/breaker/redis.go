package breaker

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
)

// A shared breaker is three keys with the hash tag {ns/breaker/<name>}
// (redisx.Key, <name> escaped; see docs/redis-keys.md):
//
//	rs:{ns/breaker/<name>}:b            hash: st gen until cf hin hok b0..b9
//	rs:{ns/breaker/<name>}:b:permits    zset: outstanding permit -> expiry ms
//	rs:{ns/breaker/<name>}:b:reporters  zset: sidecar -> last bad outcome ms
//	rs:{ns/breaker/<name>}:b:released   zset: permit released before its
//	                                    allow ran -> until ms (Store.Release)
//
// b0..b9 are the window's buckets, "idx:calls:fails:slow". A permit member
// is hex(reporter) .. hex(nonce). Time is Redis TIME in ms. The scripts
// below are machine.go written in Lua, transition for transition; every
// operation is one script (one round trip). The keys expire after a
// retention of max(window, open_duration) + the longest permit TTL + 1m of
// inactivity, which leaves nothing that matters.
const breakerPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local H, PK, RK, XK = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local P = {cf = tonumber(ARGV[1]), rate = tonumber(ARGV[2]), srate = tonumber(ARGV[3]),
  sms = tonumber(ARGV[4]), win = tonumber(ARGV[5]), open = tonumber(ARGV[6]),
  minc = tonumber(ARGV[7]), hmax = tonumber(ARGV[8]), minrep = tonumber(ARGV[9]), ret = tonumber(ARGV[10])}
local NB = 10
local CLOSED, OPEN, HALF = 1, 2, 3
local FAILURE, IGNORED = 2, 3
local function n(x) return string.format('%.0f', x) end
local h = redis.call('HMGET', H, 'st', 'gen', 'until', 'cf', 'hin', 'hok',
  'b0', 'b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b7', 'b8', 'b9')
local S = {st = tonumber(h[1]) or CLOSED, gen = tonumber(h[2]) or now, untl = tonumber(h[3]) or 0,
  cf = tonumber(h[4]) or 0, hin = tonumber(h[5]) or 0, hok = tonumber(h[6]) or 0, b = {}}
for i = 1, NB do
  local b = {-1, 0, 0, 0}
  if h[6 + i] then
    local j = 1
    for x in string.gmatch(h[6 + i], '[^:]+') do b[j] = tonumber(x); j = j + 1 end
  end
  S.b[i] = b
end
local dirty = false

local function bidx() return math.floor(now / math.max(math.floor(P.win / NB), 1)) end
local function sums()
  local cur = bidx()
  local c, f, s = 0, 0, 0
  for i = 1, NB do
    local b = S.b[i]
    if b[1] > cur - NB and b[1] <= cur then c = c + b[2]; f = f + b[3]; s = s + b[4] end
  end
  return c, f, s
end
local function reporters()
  redis.call('ZREMRANGEBYSCORE', RK, '-inf', n(now - P.win))
  return redis.call('ZCARD', RK)
end
local function newgen(st)
  S.st = st; S.gen = S.gen + 1; S.cf = 0; S.hin = 0; S.hok = 0
  for i = 1, NB do S.b[i] = {-1, 0, 0, 0} end
  redis.call('DEL', PK, RK)
  dirty = true
end
local function trip() newgen(OPEN); S.untl = now + P.open end
local function shouldTrip()
  if P.minrep > 1 and reporters() < P.minrep then return false end
  if P.cf > 0 and S.cf >= P.cf then return true end
  if P.rate == 0 and P.srate == 0 then return false end
  local c, f, s = sums()
  if c == 0 or c < P.minc then return false end
  return (P.rate > 0 and f * 1000000 >= P.rate * c) or (P.srate > 0 and s * 1000000 >= P.srate * c)
end
local function record(o, dur, rep)
  local slow = P.srate > 0 and dur >= 0 and dur >= P.sms
  if S.st == CLOSED then
    if o == IGNORED then return end
    local idx = bidx()
    local slot = (idx % NB) + 1
    local b = S.b[slot]
    if b[1] ~= idx then b = {idx, 0, 0, 0}; S.b[slot] = b end
    b[2] = b[2] + 1
    local bad = false
    if o == FAILURE then b[3] = b[3] + 1; S.cf = S.cf + 1; bad = true else S.cf = 0 end
    if slow then b[4] = b[4] + 1; bad = true end
    if bad then redis.call('ZADD', RK, n(now), rep) end
    dirty = true
    if shouldTrip() then trip() end
  elseif S.st == HALF then
    if S.hin > 0 then S.hin = S.hin - 1 end
    dirty = true
    if o == IGNORED then return end
    if o == FAILURE or slow then trip() return end
    S.hok = S.hok + 1
    if S.hok >= P.hmax then newgen(CLOSED) end
  end
end
local function settle()
  local ex = redis.call('ZRANGEBYSCORE', PK, '-inf', n(now), 'LIMIT', 0, 100)
  for _, m in ipairs(ex) do
    local g = S.gen
    redis.call('ZREM', PK, m)
    record(FAILURE, -1, string.sub(m, 1, 16))
    if S.gen ~= g then return end
  end
end
local function save()
  if dirty then
    local a = {'st', S.st, 'gen', n(S.gen), 'until', n(S.untl), 'cf', n(S.cf), 'hin', n(S.hin), 'hok', n(S.hok)}
    for i = 1, NB do
      local b = S.b[i]
      a[#a + 1] = 'b' .. (i - 1)
      a[#a + 1] = n(b[1]) .. ':' .. n(b[2]) .. ':' .. n(b[3]) .. ':' .. n(b[4])
    end
    redis.call('HSET', H, unpack(a))
  end
  redis.call('PEXPIRE', H, P.ret)
  redis.call('PEXPIRE', PK, P.ret)
  redis.call('PEXPIRE', RK, P.ret)
  redis.call('PEXPIRE', XK, P.ret)
end
local function view()
  local c, f, s = sums()
  local st, untl = S.st, 0
  if st == OPEN then
    if now >= S.untl then st = HALF else untl = S.untl end
  end
  return {st, S.gen, now, untl, S.cf, S.hin, S.hok, c, f, s, redis.call('ZCARD', PK), reporters()}
end
`

// ARGV[11] member, ARGV[12] ttl ms, ARGV[13] max outstanding permits.
// Reply {allowed (1, 0, or -1 for the permit bound), state, gen, now, retry ms}.
var allowScript = redis.NewScript(breakerPrelude + `
settle()
local released = redis.call('ZSCORE', XK, ARGV[11])
if released then
  redis.call('ZREM', XK, ARGV[11])
  if tonumber(released) > now then
    save()
    return {0, S.st, S.gen, now, 0}
  end
end
if S.st == OPEN then
  if now < S.untl then
    save()
    return {0, S.st, S.gen, now, S.untl - now}
  end
  newgen(HALF)
end
if S.st == HALF and S.hin + S.hok >= P.hmax then
  local first = redis.call('ZRANGE', PK, 0, 0, 'WITHSCORES')
  local retry = 1000
  if first[2] then retry = math.max(tonumber(first[2]) - now, 1) end
  save()
  return {0, S.st, S.gen, now, retry}
end
if redis.call('ZCARD', PK) >= tonumber(ARGV[13]) then
  save()
  return {-1, S.st, S.gen, now, 0}
end
if S.st == HALF then S.hin = S.hin + 1 end
dirty = true
redis.call('ZADD', PK, n(now + tonumber(ARGV[12])), ARGV[11])
save()
return {1, S.st, S.gen, now, 0}
`)

// ARGV[11] member, ARGV[12] gen, ARGV[13] outcome, ARGV[14] duration ms
// (-1: unknown), ARGV[15] issue time ms.
// Reply {status (1 counted, 0 stale, -1 unknown), state, gen, now}.
var reportScript = redis.NewScript(breakerPrelude + `
settle()
local status = 1
if tonumber(ARGV[12]) ~= S.gen then
  status = 0
else
  local sc = redis.call('ZSCORE', PK, ARGV[11])
  if not sc then
    status = -1
  else
    redis.call('ZREM', PK, ARGV[11])
    local rep = string.sub(ARGV[11], 1, 16)
    if tonumber(sc) <= now then
      record(FAILURE, -1, rep)
      status = -1
    else
      local d = tonumber(ARGV[14])
      if d < 0 then d = math.max(now - tonumber(ARGV[15]), 0) end
      record(tonumber(ARGV[13]), d, rep)
    end
  end
end
save()
return {status, S.st, S.gen, now}
`)

// ARGV[11] member, ARGV[12] mark ms (0: none), ARGV[13] max marks.
// Reply {released (1 or 0), state, gen, now}.
var releaseScript = redis.NewScript(breakerPrelude + `
settle()
local released = 0
local sc = redis.call('ZSCORE', PK, ARGV[11])
if sc then
  redis.call('ZREM', PK, ARGV[11])
  dirty = true
  if tonumber(sc) <= now then
    record(FAILURE, -1, string.sub(ARGV[11], 1, 16))
  else
    record(IGNORED, -1, '')
    released = 1
  end
elseif tonumber(ARGV[12]) > 0 then
  redis.call('ZREMRANGEBYSCORE', XK, '-inf', n(now))
  if redis.call('ZCARD', XK) < tonumber(ARGV[13]) then
    redis.call('ZADD', XK, n(now + tonumber(ARGV[12])), ARGV[11])
    redis.call('PEXPIRE', XK, P.ret)
  end
end
if dirty then save() end
return {released, S.st, S.gen, now}
`)

// Reply: view().
var getScript = redis.NewScript(breakerPrelude + `
settle()
if dirty then save() end
return view()
`)

// Reply: view() after forcing closed.
var resetScript = redis.NewScript(breakerPrelude + `
newgen(CLOSED)
save()
return view()
`)

// Scripts are the Lua scripts of the Redis breaker store, for preloading.
var Scripts = []*redis.Script{allowScript, reportScript, releaseScript, getScript, resetScript}

// RedisStore is the Store on Redis (standalone, Sentinel or Cluster). Every
// method is one script, one round trip, bounded by the store timeout.
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

func (r *RedisStore) keys(name string) []string {
	return []string{redisx.Key(r.ns, redisx.Breaker, name, "b"), redisx.Key(r.ns, redisx.Breaker, name, "b:permits"),
		redisx.Key(r.ns, redisx.Breaker, name, "b:reporters"), redisx.Key(r.ns, redisx.Breaker, name, "b:released")}
}

func policyArgs(p Policy) []any {
	p = p.WithDefaults()
	prm := p.params()
	retention := max(p.Window, p.OpenDuration) + MaxPermitTTL + time.Minute
	return []any{prm.consecutive, prm.ratePPM, prm.slowPPM, prm.slowMS, prm.windowMS, prm.openMS,
		prm.minCalls, prm.halfMax, prm.minRep, retention.Milliseconds()}
}

func member(rep Reporter, nonce Nonce) string {
	return hex.EncodeToString(rep[:]) + hex.EncodeToString(nonce[:])
}

func (r *RedisStore) run(ctx context.Context, s *redis.Script, name string, p Policy, extra ...any) ([]int64, error) {
	v, err := redisx.Runner{Client: r.rdb, Timeout: r.timeout}.Run(ctx, s, r.keys(name), append(policyArgs(p), extra...)...)
	if err != nil {
		return nil, err
	}
	a, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("breaker: bad reply %v", v)
	}
	out := make([]int64, len(a))
	for i, x := range a {
		n, ok := x.(int64)
		if !ok {
			return nil, fmt.Errorf("breaker: bad reply %v", v)
		}
		out[i] = n
	}
	return out, nil
}

// Allow implements Store.
func (r *RedisStore) Allow(ctx context.Context, name string, p Policy, a AllowArgs) (Allowance, error) {
	v, err := r.run(ctx, allowScript, name, p, member(a.Reporter, a.Nonce), max(a.TTL.Milliseconds(), 1), MaxPermitsPerBreaker)
	if err != nil {
		return Allowance{}, err
	}
	if len(v) != 5 {
		return Allowance{}, fmt.Errorf("breaker: bad allow reply %v", v)
	}
	if v[0] < 0 {
		return Allowance{}, ErrLimitExceeded
	}
	out := Allowance{Allowed: v[0] == 1, State: State(v[1]), Generation: uint64(v[2]), Issued: fromMS(v[3])}
	if !out.Allowed {
		out.RetryAfter = msDur(v[4])
	}
	return out, nil
}

// Report implements Store.
func (r *RedisStore) Report(ctx context.Context, name string, p Policy, ref PermitRef, o Outcome, dur time.Duration) (Recorded, error) {
	d := int64(-1)
	if dur >= 0 {
		d = dur.Milliseconds()
	}
	v, err := r.run(ctx, reportScript, name, p, member(ref.Reporter, ref.Nonce), ref.Generation, int(o), d, ref.Issued.UnixMilli())
	if err != nil {
		return Recorded{}, err
	}
	if len(v) != 4 {
		return Recorded{}, fmt.Errorf("breaker: bad report reply %v", v)
	}
	rec := Recorded{Counted: v[0] == 1, State: State(v[1])}
	if v[0] < 0 {
		return rec, ErrPermitUnknown
	}
	return rec, nil
}

// Release implements Store.
func (r *RedisStore) Release(ctx context.Context, name string, p Policy, a AllowArgs) (bool, error) {
	v, err := r.run(ctx, releaseScript, name, p, member(a.Reporter, a.Nonce), max(a.TTL.Milliseconds(), 0), MaxPermitsPerBreaker)
	if err != nil {
		return false, err
	}
	if len(v) != 4 {
		return false, fmt.Errorf("breaker: bad release reply %v", v)
	}
	return v[0] == 1, nil
}

// Get implements Store.
func (r *RedisStore) Get(ctx context.Context, name string, p Policy) (Snapshot, error) {
	return r.view(ctx, getScript, name, p)
}

// Reset implements Store.
func (r *RedisStore) Reset(ctx context.Context, name string, p Policy) (Snapshot, error) {
	return r.view(ctx, resetScript, name, p)
}

func (r *RedisStore) view(ctx context.Context, s *redis.Script, name string, p Policy) (Snapshot, error) {
	v, err := r.run(ctx, s, name, p)
	if err != nil {
		return Snapshot{}, err
	}
	if len(v) != 12 {
		return Snapshot{}, fmt.Errorf("breaker: bad view reply %v", v)
	}
	sm := snapshotMS{state: State(v[0]), gen: uint64(v[1]), openUntil: v[3], consecutive: v[4], hin: v[5], hok: v[6],
		calls: v[7], fails: v[8], slow: v[9], outstanding: v[10], reporters: v[11]}
	return sm.public(v[2]), nil
}

// Ping implements Store.
func (r *RedisStore) Ping(ctx context.Context) error {
	return redisx.Pinger{Client: r.rdb, Timeout: r.timeout}.Ping(ctx)
}

// Evict deletes a breaker's keys, as their expiry would.
func (r *RedisStore) Evict(ctx context.Context, name string) error {
	return r.rdb.Del(ctx, r.keys(name)...).Err()
}
