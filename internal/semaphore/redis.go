package semaphore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// A semaphore is a record tagged {ns/sem/name} (docs/redis-keys.md):
//
//	:sem          zset  permit id -> expiry (Redis TIME, ms)
//	:sem:holders  hash  permit id -> "<fence> <owner>"
//	:sem:meta     hash  limit, fence (the last token granted)
//	:sem:queue    zset  sidecar id -> arrival number (the FIFO of sidecars)
//	:sem:queue:exp    zset  sidecar id -> when its entry lapses (ms)
//	:sem:queue:ready  hash  sidecar id -> when a free permit was first kept for it (ms)
//	:sem:queue:n      hash  sidecar id -> its waiting callers (GetSemaphore)
//	:sem:revoked  zset  permit ids given back before their grant arrived
//
// Expiry is decided by comparing scores with Redis TIME, not by key
// expiry, and every script first reclaims the permits past it. The keys
// live an hour past the latest permit; fencing tokens are floored by TIME
// in microseconds, so losing the meta hash cannot make them go backwards.
// Releases and raised limits are announced on the sharded channel
// :sem:released, in the same slot.
//
// While sidecars wait, the free permits are kept for the first of them in
// line (as many as are free), each for a grace from when one was first
// kept for it; a sidecar that does not take its permit by then (it died,
// or is cut off) is dropped from the line and the next one is served, so
// no heartbeat is needed. A caller that does not wait takes a permit only
// when more are free than sidecars wait.
const semPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function reclaim()
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  if #gone == 0 then return end
  for i = 1, #gone do redis.call('HDEL', KEYS[2], gone[i]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local function keep(ms)
  for k = 1, 3 do
    if redis.call('PTTL', KEYS[k]) < ms then redis.call('PEXPIRE', KEYS[k], ms) end
  end
end
`

// queueLua works on KEYS[4..7], the queue keys.
const queueLua = `
local function qdrop(id)
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
  redis.call('HDEL', KEYS[6], id)
  redis.call('HDEL', KEYS[7], id)
end
local function qpurge()
  local stale = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
  for i = 1, #stale do qdrop(stale[i]) end
end
`

// acquireScript: KEYS sem, holders, meta, queue, queue:exp, queue:ready,
// queue:n, revoked; ARGV id, owner, ttl ms, limit, retention ms, queue id
// (empty for a caller that does not wait), stay ms, more ('1': back in line
// after a grant), waiters, channel, latest (ms: a later run grants
// nothing, its caller gave up), grace ms, follow ('1': the semaphore's
// limit applies if it has one). Reply {granted, fence, exp,
// held, limit, retry_at} with numbers as strings, or {-1} when the id was
// revoked or the script ran too late.
var acquireScript = redisx.NewScript("semaphore.acquire", semPrelude+queueLua+`
if now > tonumber(ARGV[11]) or redis.call('ZSCORE', KEYS[8], ARGV[1]) then return {-1} end
local id, qid = ARGV[1], ARGV[6]
local ttl, limit, ret, grace = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[12])
reclaim()
local old = tonumber(redis.call('HGET', KEYS[3], 'limit')) or 0
if ARGV[13] == '1' and old > 0 then limit = old end
if old ~= limit then
  redis.call('HSET', KEYS[3], 'limit', limit)
  if limit > old and old > 0 then redis.call('SPUBLISH', ARGV[10], 'limit') end
end
local held = redis.call('ZCARD', KEYS[1])
local mine = redis.call('ZSCORE', KEYS[1], id)
if mine then
  local h = redis.call('HGET', KEYS[2], id) or '0 '
  local sp = string.find(h, ' ', 1, true)
  return {1, string.sub(h, 1, sp - 1), mine, tostring(held), tostring(limit), '0'}
end
local function enqueue()
  if qid == '' then return end
  if not redis.call('ZSCORE', KEYS[4], qid) then
    local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
    local seq = 1
    if last[2] then seq = tonumber(last[2]) + 1 end
    redis.call('ZADD', KEYS[4], seq, qid)
  end
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[7]), qid)
  redis.call('HSET', KEYS[7], qid, ARGV[9])
  for k = 4, 7 do redis.call('PEXPIRE', KEYS[k], ret) end
end
qpurge()
local free = limit - held
local retry = 0
local e = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if e[2] then retry = tonumber(e[2]) end
local function earlier(ms)
  if retry == 0 or ms < retry then retry = ms end
end
local grant = false
-- No permit is free: none is kept for anyone, and the grace of whoever is
-- first in line starts when one is.
if free <= 0 then redis.call('DEL', KEYS[6]) end
if free > 0 then
  -- The first free sidecars in line have the free permits kept for them.
  local skipped = false
  while true do
    local heads = redis.call('ZRANGE', KEYS[4], 0, free - 1)
    local dropped, inline = false, false
    for i = 1, #heads do
      local h = heads[i]
      if h == qid then
        inline = true
      else
        local r = tonumber(redis.call('HGET', KEYS[6], h))
        if not r then
          redis.call('HSET', KEYS[6], h, now)
          r = now
        end
        if now >= r + grace then
          qdrop(h)
          dropped, skipped = true, true
        else
          earlier(r + grace)
        end
      end
    end
    if not dropped then
      grant = inline or ((qid == '' or not redis.call('ZSCORE', KEYS[4], qid)) and redis.call('ZCARD', KEYS[4]) < free)
      break
    end
  end
  -- The sidecars now first in line learn it.
  if skipped then redis.call('SPUBLISH', ARGV[10], 'skipped') end
end
if not grant then
  enqueue()
  return {0, '0', '0', tostring(held), tostring(limit), string.format('%.0f', retry)}
end
local fence = tonumber(redis.call('HGET', KEYS[3], 'fence')) or 0
local nowus = tonumber(t[1]) * 1000000 + tonumber(t[2])
fence = math.max(fence + 1, nowus)
local fs = string.format('%.0f', fence)
local exp = now + ttl
redis.call('ZADD', KEYS[1], exp, id)
redis.call('HSET', KEYS[2], id, fs .. ' ' .. ARGV[2])
redis.call('HSET', KEYS[3], 'fence', fs)
if qid ~= '' then
  qdrop(qid)
  if ARGV[8] == '1' then enqueue() end
end
keep(ttl + ret)
return {1, fs, string.format('%.0f', exp), tostring(held + 1), tostring(limit), '0'}
`)

// releaseScript: KEYS sem, holders, queue; ARGV id, channel. It announces
// the release only when some sidecar waits.
var releaseScript = redisx.NewScript("semaphore.release", semPrelude+`
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if tonumber(s) <= now then return 0 end
if redis.call('ZCARD', KEYS[3]) > 0 then redis.call('SPUBLISH', ARGV[2], 'released') end
return 1
`)

// revokeScript: KEYS sem, holders, queue, revoked; ARGV id, channel, keep
// (ms). It releases the permit if held, else remembers the id as revoked
// until keep, so that a grant still on its way is refused.
var revokeScript = redisx.NewScript("semaphore.revoke", semPrelude+redisx.RevokeLua+`
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  if tonumber(s) > now and redis.call('ZCARD', KEYS[3]) > 0 then redis.call('SPUBLISH', ARGV[2], 'released') end
  return 1
end
revoke(KEYS[4], ARGV[1], tonumber(ARGV[3]), now)
return 0
`)

// renewScript: KEYS sem, holders, meta; ARGV id, ttl ms, retention ms.
// Reply the new expiry, or '-1' when the permit is not live.
var renewScript = redisx.NewScript("semaphore.renew", semPrelude+`
local s = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not s or s <= now then return '-1' end
local exp = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', exp, ARGV[1])
keep(tonumber(ARGV[2]) + tonumber(ARGV[3]))
return string.format('%.0f', exp)
`)

// getScript: KEYS sem, holders, meta, queue, queue:exp, queue:ready,
// queue:n; ARGV max listed. Reply {limit, fence, held, waiters, then
// fence, owner, exp for each listed holder}. It changes nothing.
var getScript = redisx.NewScript("semaphore.get", semPrelude+`
local m = redis.call('HMGET', KEYS[3], 'limit', 'fence')
local held = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local waiters = 0
local q = redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. now, '+inf')
if #q > 0 then
  local n = redis.call('HMGET', KEYS[7], unpack(q))
  for i = 1, #n do waiters = waiters + (tonumber(n[i]) or 0) end
end
local out = {m[1] or '0', m[2] or '0', tostring(held), tostring(waiters)}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #live, 2 do
  local h = redis.call('HGET', KEYS[2], live[i]) or '0 '
  local sp = string.find(h, ' ', 1, true)
  table.insert(out, string.sub(h, 1, sp - 1))
  table.insert(out, string.sub(h, sp + 1))
  table.insert(out, live[i + 1])
end
return out
`)

// leaveScript: KEYS sem, holders, meta, queue, queue:exp, queue:ready,
// queue:n; ARGV queue id, channel. It takes the id out of line and, when
// permits are free and others wait, announces it so that they try.
var leaveScript = redisx.NewScript("semaphore.leave", semPrelude+queueLua+`
local removed = redis.call('ZREM', KEYS[4], ARGV[1])
qdrop(ARGV[1])
if removed == 1 and redis.call('ZCARD', KEYS[4]) > 0 then
  local limit = tonumber(redis.call('HGET', KEYS[3], 'limit')) or 0
  if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') < limit then
    redis.call('SPUBLISH', ARGV[2], 'released')
  end
end
return removed
`)

// Scripts are the Lua scripts of the Redis semaphore store, for preloading.
var Scripts = []*redis.Script{acquireScript, releaseScript, revokeScript, renewScript, getScript, leaveScript}

const retentionMS = int64(time.Hour / time.Millisecond)

// DefaultGrace is how long free permits are kept for a waiting sidecar
// first in line: ample for a live sidecar (it is woken by the release), and
// the longest a sidecar that died while in line holds a permit up.
const DefaultGrace = 2 * time.Second

// RedisStore is the Store on Redis (standalone, Sentinel or Cluster). Every
// method is one script, one round trip, bounded by the store timeout.
type RedisStore struct {
	rdb     redis.UniversalClient
	ns      string
	timeout time.Duration
	wait    redisx.Wait
	watches *redisx.Watches
	id      string // this sidecar in the queues
	grace   time.Duration
}

// RedisOption configures a RedisStore.
type RedisOption func(*RedisStore)

// WithWait makes grants and renewals wait for w's replicas to acknowledge
// them before they are reported (redisx.Runner.RunDurable); fewer is
// store.ErrUnavailable, never a grant.
func WithWait(w redisx.Wait) RedisOption { return func(r *RedisStore) { r.wait = w } }

// WithGrace sets how long free permits are kept for a sidecar first in line
// (DefaultGrace when d <= 0).
func WithGrace(d time.Duration) RedisOption {
	return func(r *RedisStore) {
		if d > 0 {
			r.grace = d
		}
	}
}

// NewRedisStore returns a store for namespace ns whose calls each take at
// most timeout before failing with store.ErrUnavailable.
func NewRedisStore(rdb redis.UniversalClient, ns string, timeout time.Duration, opts ...RedisOption) *RedisStore {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	r := &RedisStore{rdb: rdb, ns: ns, timeout: timeout, watches: redisx.NewWatches(rdb, timeout),
		id: hex.EncodeToString(b[:]), grace: DefaultGrace}
	for _, o := range opts {
		o(r)
	}
	return r
}

func (r *RedisStore) key(name, suffix string) string {
	return redisx.Key(r.ns, redisx.Semaphore, name, suffix)
}

func (r *RedisStore) channel(name string) string { return r.key(name, "sem:released") }

// keys are the keys of a record in the scripts' order; revoked last.
func (r *RedisStore) keys(name string) []string {
	return []string{r.key(name, "sem"), r.key(name, "sem:holders"), r.key(name, "sem:meta"), r.key(name, "sem:queue"),
		r.key(name, "sem:queue:exp"), r.key(name, "sem:queue:ready"), r.key(name, "sem:queue:n"), r.key(name, "sem:revoked")}
}

func (r *RedisStore) runner() redisx.Runner {
	return redisx.Runner{Client: r.rdb, Timeout: r.timeout, Wait: r.wait}
}

// granted reports whether an acquire reply granted a permit.
func granted(v any) bool {
	a, _ := v.([]any)
	if len(a) == 0 {
		return false
	}
	n, _ := a[0].(int64)
	return n == 1
}

// renewed reports whether a renew reply extended the permit.
func renewed(v any) bool { s, _ := v.(string); return s != "" && s != "-1" }

// TryAcquire implements Store.
func (r *RedisStore) TryAcquire(ctx context.Context, name, permitID, owner string, limit int, ttl time.Duration, q *Queueing) (Result, error) {
	qid, more, stay, waiters, follow := "", "0", int64(0), 0, "0"
	if q != nil {
		qid, stay, waiters = r.id, q.Stay.Milliseconds(), q.Waiters
		if q.More {
			more = "1"
		}
		if q.Follow {
			follow = "1"
		}
	}
	v, err := r.runner().RunDurable(ctx, acquireScript, granted, r.keys(name), permitID, owner, ttl.Milliseconds(), limit,
		retentionMS, qid, stay, more, waiters, r.channel(name), redisx.Latest(ctx, r.timeout), r.grace.Milliseconds(), follow)
	if err != nil {
		// The Service hands the permit id back: the script may have run.
		return Result{}, err
	}
	a, _ := v.([]any)
	if len(a) == 1 {
		return Result{}, store.Unavailable(errors.New("semaphore: acquisition reached the store after its caller gave up"))
	}
	if len(a) != 6 {
		return Result{}, fmt.Errorf("semaphore: bad acquire reply %v", v)
	}
	var n [5]int64
	for i := range n {
		s, _ := a[i+1].(string)
		if n[i], err = strconv.ParseInt(s, 10, 64); err != nil {
			return Result{}, fmt.Errorf("semaphore: bad acquire reply %v", v)
		}
	}
	res := Result{Held: int(n[2]), Limit: int(n[3])}
	if n[4] > 0 {
		res.RetryAt = time.UnixMilli(n[4])
	}
	if granted(v) {
		res.Acquired = true
		res.Permit = Permit{Name: name, ID: permitID, Owner: owner, FencingToken: uint64(n[0]), ExpireTime: time.UnixMilli(n[1])}
	}
	return res, nil
}

// Release implements Store.
func (r *RedisStore) Release(ctx context.Context, name, permitID string) error {
	k := r.keys(name)
	v, err := r.runner().Run(ctx, releaseScript, []string{k[0], k[1], k[3]}, permitID, r.channel(name))
	if err != nil {
		return err
	}
	if n, _ := v.(int64); n != 1 {
		return ErrLeaseLost
	}
	return nil
}

// Revoke implements Store. A grant to permitID sent before Revoke was
// called runs no later than now+timeout+redisx.LateGrace by the store's
// clock, so the revocation is kept until then.
func (r *RedisStore) Revoke(ctx context.Context, name, permitID string) error {
	k := r.keys(name)
	_, err := r.runner().Run(ctx, revokeScript, []string{k[0], k[1], k[3], k[7]}, permitID, r.channel(name),
		redisx.RevocationKeep(r.timeout))
	return err
}

// Renew implements Store.
func (r *RedisStore) Renew(ctx context.Context, name, permitID string, ttl time.Duration) (time.Time, error) {
	v, err := r.runner().RunDurable(ctx, renewScript, renewed, r.keys(name)[:3], permitID, ttl.Milliseconds(), retentionMS)
	if err != nil {
		return time.Time{}, err
	}
	s, _ := v.(string)
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("semaphore: bad renew reply %v", v)
	}
	if ms < 0 {
		return time.Time{}, ErrLeaseLost
	}
	return time.UnixMilli(ms), nil
}

// Get implements Store.
func (r *RedisStore) Get(ctx context.Context, name string) (Info, error) {
	v, err := r.runner().Run(ctx, getScript, r.keys(name)[:7], MaxListed)
	if err != nil {
		return Info{}, err
	}
	a, _ := v.([]any)
	strs := make([]string, len(a))
	for i, x := range a {
		strs[i], _ = x.(string)
	}
	if len(strs) < 4 || (len(strs)-4)%3 != 0 {
		return Info{}, fmt.Errorf("semaphore: bad get reply %v", v)
	}
	var nums [4]uint64
	for i := range nums {
		if nums[i], err = strconv.ParseUint(strs[i], 10, 64); err != nil {
			return Info{}, fmt.Errorf("semaphore: bad get reply %v", v)
		}
	}
	info := Info{Limit: int(nums[0]), LastFencingToken: nums[1], Held: int(nums[2]), Waiters: int(nums[3])}
	for i := 4; i < len(strs); i += 3 {
		fence, err1 := strconv.ParseUint(strs[i], 10, 64)
		exp, err2 := strconv.ParseInt(strs[i+2], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return Info{}, fmt.Errorf("semaphore: bad get reply %v: %w", v, err)
		}
		info.Holders = append(info.Holders, Holder{Owner: strs[i+1], FencingToken: fence, ExpireTime: time.UnixMilli(exp)})
	}
	return info, nil
}

// LeaveQueue implements Store.
func (r *RedisStore) LeaveQueue(ctx context.Context, name string) error {
	_, err := r.runner().Run(ctx, leaveScript, r.keys(name)[:7], r.id, r.channel(name))
	return err
}

// WatchRelease implements Store. Watchers of one semaphore share one
// sharded subscription, confirmed by Redis before WatchRelease returns.
func (r *RedisStore) WatchRelease(ctx context.Context, name string) (<-chan struct{}, func(), error) {
	return r.watches.Watch(ctx, r.channel(name))
}

// Evict deletes name's bookkeeping, as Redis eviction might.
func (r *RedisStore) Evict(ctx context.Context, name string) error {
	return r.rdb.Del(ctx, r.keys(name)[:3]...).Err()
}
