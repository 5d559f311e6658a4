package lock

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

// A lock is one hash {lease, owner, exp, fence} at rs:{ns/lock/key}:lock, with
// expiry decided by comparing exp with Redis TIME (not by key expiry), so
// the fencing counter survives the lease. The key itself expires
// retentionMS after the lease; losing it is safe because tokens are floored
// by TIME in microseconds. Releases are announced on the sharded channel
// rs:{ns/lock/key}:lock:released, in the same slot as the hash.
const lockPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// A waiter's sidecar stands in the key's queue: the sorted set
// rs:{ns/lock/key}:lock:queue orders sidecar instance ids by arrival, and
// rs:{ns/lock/key}:lock:queue:exp holds each entry's expiry (Redis TIME,
// ms): the end of the longest wait of that sidecar's callers, set by each
// of its tries. Entries past it are purged by the scripts. While the queue
// is not empty a free lock is kept for the sidecar at its head, so a release
// is taken by the sidecar that has waited longest, not by whoever is
// fastest; but only for a grace (fields rh, ru of the lock: the head it is
// kept for, until when). A head that has not taken the lock by then (its
// sidecar died, or is cut off) is dropped from the queue and the next one
// gets the grace, so no heartbeat is needed to detect dead sidecars.
const queuePrelude = `
local function qpurge()
  local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  for i = 1, #stale do
    redis.call('ZREM', KEYS[2], stale[i])
    redis.call('ZREM', KEYS[3], stale[i])
  end
  while true do
    local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
    if not head then return nil end
    if redis.call('ZSCORE', KEYS[3], head) then return head end
    redis.call('ZREM', KEYS[2], head)
  end
end
`

// acquireScript: KEYS lock, queue, queue:exp, revoked; ARGV lease, owner,
// ttl ms, retention ms, queue id (empty for a try that does not wait), stay
// ms (how long the queue id's callers still wait), more ('1': re-queue the
// id at the tail after a grant), release channel, latest (ms: a script run
// after it grants nothing, as its caller has given up), grace ms (how long
// a free lock is kept for the queue's head). Reply {granted, owner, fence,
// exp, retry_at}: retry_at is when a refused waiter should try again if
// nothing wakes it (the holder's expiry, or the end of the head's grace
// when the lock is free but kept for it); or {-1} when the lease id was
// revoked or the script ran too late.
var acquireScript = redisx.NewScript("lock.acquire", lockPrelude+queuePrelude+`
if now > tonumber(ARGV[9]) or redis.call('ZSCORE', KEYS[4], ARGV[1]) then return {-1} end
local h = redis.call('HMGET', KEYS[1], 'lease', 'owner', 'exp', 'fence', 'rh', 'ru')
local fence = tonumber(h[4]) or 0
local exp = tonumber(h[3]) or 0
local ttl = tonumber(ARGV[3])
local qid = ARGV[5]
local function enqueue()
  if qid == '' then return end
  if not redis.call('ZSCORE', KEYS[2], qid) then
    local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    local seq = 1
    if last[2] then seq = tonumber(last[2]) + 1 end
    redis.call('ZADD', KEYS[2], seq, qid)
  end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), qid)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
local head = qpurge()
local mine = h[1] == ARGV[1] and exp > now
if h[1] and exp > now and not mine then
  enqueue()
  local e = string.format('%.0f', exp)
  return {0, h[2] or '', string.format('%.0f', fence), e, e}
end
if not mine then
  -- The lock is free: it is kept for the queue's head, for a grace.
  local rh, ru = h[5], tonumber(h[6]) or 0
  local skipped = false
  while head and head ~= qid do
    if rh ~= head then
      rh, ru = head, now + tonumber(ARGV[10])
      redis.call('HSET', KEYS[1], 'rh', rh, 'ru', string.format('%.0f', ru))
      if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
      break
    elseif now < ru then
      break
    end
    -- The head let its grace pass: its sidecar is gone or cut off.
    redis.call('ZREM', KEYS[2], head)
    redis.call('ZREM', KEYS[3], head)
    head, rh, skipped = qpurge(), false, true
  end
  if head and head ~= qid then
    -- Refused: this waiter sleeps until a release or the grace's end; the
    -- grant to the head (rw) wakes it, to learn the new holder's expiry,
    -- and so does a skip, for the new head.
    if qid ~= '' then
      enqueue()
      redis.call('HSET', KEYS[1], 'rw', '1')
    end
    if skipped then redis.call('SPUBLISH', ARGV[8], 'skipped') end
    return {0, '', string.format('%.0f', fence), '0', string.format('%.0f', ru)}
  end
  local nowus = tonumber(t[1]) * 1000000 + tonumber(t[2])
  fence = math.max(fence + 1, nowus)
end
exp = now + ttl
redis.call('HSET', KEYS[1], 'lease', ARGV[1], 'owner', ARGV[2], 'exp', string.format('%.0f', exp), 'fence', string.format('%.0f', fence))
redis.call('HDEL', KEYS[1], 'rh', 'ru')
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[4]))
if qid ~= '' then
  redis.call('ZREM', KEYS[2], qid)
  redis.call('ZREM', KEYS[3], qid)
  if ARGV[7] == '1' then enqueue() end
end
if redis.call('HDEL', KEYS[1], 'rw') == 1 then
  redis.call('SPUBLISH', ARGV[8], 'granted')
end
local e = string.format('%.0f', exp)
return {1, ARGV[2], string.format('%.0f', fence), e, e}
`)

// leaveScript: KEYS lock, queue, queue:exp; ARGV queue id, channel. It
// removes the id's entry; when that entry was the head and the lock is free,
// it ends the head's grace and announces a release so that the next
// sidecar in line tries.
var leaveScript = redisx.NewScript("lock.leave", lockPrelude+`
local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if removed == 1 and head == ARGV[1] then
  if redis.call('HGET', KEYS[1], 'rh') == ARGV[1] then redis.call('HDEL', KEYS[1], 'rh', 'ru') end
  if redis.call('ZCARD', KEYS[2]) > 0 then
    local h = redis.call('HMGET', KEYS[1], 'lease', 'exp')
    if not (h[1] and (tonumber(h[2]) or 0) > now) then
      redis.call('SPUBLISH', ARGV[2], 'released')
    end
  end
end
return removed
`)

// revokeScript: KEYS lock, revoked; ARGV lease, channel, keep (ms). It
// releases the lock if the lease holds it; otherwise it remembers the lease
// id as revoked until keep, the latest time at which an acquisition by it
// could still run, so that one still on its way is refused.
var revokeScript = redisx.NewScript("lock.revoke", lockPrelude+redisx.RevokeLua+`
local h = redis.call('HMGET', KEYS[1], 'lease', 'exp')
if h[1] == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'lease', 'owner', 'exp')
  if (tonumber(h[2]) or 0) > now then redis.call('SPUBLISH', ARGV[2], 'released') end
  return 1
end
revoke(KEYS[2], ARGV[1], tonumber(ARGV[3]), now)
return 0
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
var Scripts = []*redis.Script{acquireScript, releaseScript, revokeScript, renewScript, getScript, leaveScript}

const retentionMS = int64(time.Hour / time.Millisecond)

// RedisStore is the Store on Redis (standalone, Sentinel or Cluster). Every
// method is one script, one round trip, bounded by the store timeout.
type RedisStore struct {
	rdb     redis.UniversalClient
	ns      string
	timeout time.Duration
	wait    redisx.Wait

	watches *redisx.Watches

	// id names this store (this sidecar) in the wait queues; grace is how
	// long a free lock is kept for the sidecar at a queue's head.
	id    string
	grace time.Duration
}

// DefaultGrace is how long a free lock is kept for the sidecar at the
// head of its wait queue: ample for a live sidecar to take it (it is woken
// by the release), and the longest a sidecar that died while queued holds
// up the others, once per lock hand-over.
const DefaultGrace = 2 * time.Second

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

// WithGrace sets how long a free lock is kept for the sidecar at the head
// of its wait queue (DefaultGrace when d <= 0).
func WithGrace(d time.Duration) RedisOption {
	return func(r *RedisStore) {
		if d > 0 {
			r.grace = d
		}
	}
}

// WithInstanceID names this store in the wait queues (a random id when
// not set). Two stores must never share an id.
func WithInstanceID(id string) RedisOption {
	return func(r *RedisStore) { r.id = id }
}

// NewRedisStore returns a store for namespace ns whose calls each take at
// most timeout before failing with store.ErrUnavailable.
func NewRedisStore(rdb redis.UniversalClient, ns string, timeout time.Duration, opts ...RedisOption) *RedisStore {
	r := &RedisStore{rdb: rdb, ns: ns, timeout: timeout, watches: redisx.NewWatches(rdb, timeout), grace: DefaultGrace}
	for _, o := range opts {
		o(r)
	}
	if r.id == "" {
		var b [8]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand)
		r.id = hex.EncodeToString(b[:])
	}
	return r
}

func (r *RedisStore) key(key string) string { return redisx.Key(r.ns, redisx.Lock, key, "lock") }
func (r *RedisStore) channel(key string) string {
	return redisx.Key(r.ns, redisx.Lock, key, "lock:released")
}
func (r *RedisStore) queue(key string) string {
	return redisx.Key(r.ns, redisx.Lock, key, "lock:queue")
}
func (r *RedisStore) queueExp(key string) string {
	return redisx.Key(r.ns, redisx.Lock, key, "lock:queue:exp")
}

func (r *RedisStore) revoked(key string) string {
	return redisx.Key(r.ns, redisx.Lock, key, "lock:revoked")
}

// lockKeys are the keys of the leave script.
func (r *RedisStore) lockKeys(key string) []string {
	return []string{r.key(key), r.queue(key), r.queueExp(key)}
}

func (r *RedisStore) runner() redisx.Runner {
	return redisx.Runner{Client: r.rdb, Timeout: r.timeout, Wait: r.wait}
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

// TryAcquire implements Store. It does not jump the wait queue: while
// sidecars wait for key, a free lock is left for the one at the queue's
// head and TryAcquire returns acquired=false with an empty holder.
func (r *RedisStore) TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (Lease, Holder, bool, error) {
	lease, holder, ok, _, err := r.acquire(ctx, key, leaseID, owner, ttl, "", false, 0)
	return lease, holder, ok, err
}

// TryAcquireQueued implements Queue.
func (r *RedisStore) TryAcquireQueued(ctx context.Context, key, leaseID, owner string, ttl time.Duration, more bool, stay time.Duration) (Lease, Holder, bool, time.Time, error) {
	return r.acquire(ctx, key, leaseID, owner, ttl, r.id, more, stay)
}

func (r *RedisStore) acquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration, qid string, more bool, stay time.Duration) (Lease, Holder, bool, time.Time, error) {
	moreArg := "0"
	if more {
		moreArg = "1"
	}
	keys := []string{r.key(key), r.queue(key), r.queueExp(key), r.revoked(key)}
	v, err := r.runner().RunDurable(ctx, acquireScript, granted, keys, leaseID, owner, ttl.Milliseconds(), retentionMS,
		qid, stay.Milliseconds(), moreArg, r.channel(key), redisx.Latest(ctx, r.timeout), r.grace.Milliseconds())
	if err != nil {
		// The Service hands the lease id back (Revoke): the script may
		// have run, and nobody will ever learn this lease id.
		return Lease{}, Holder{}, false, time.Time{}, err
	}
	if a, _ := v.([]any); len(a) == 1 {
		return Lease{}, Holder{}, false, time.Time{}, store.Unavailable(errors.New("lock: acquisition reached the store after its caller gave up"))
	}
	ok, label, fence, exp, err := parseLockReply(v)
	if err != nil {
		return Lease{}, Holder{}, false, time.Time{}, err
	}
	retryAt := exp
	if a, _ := v.([]any); len(a) == 5 {
		s, _ := a[4].(string)
		if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
			retryAt = time.UnixMilli(ms)
		}
	}
	if !ok {
		if exp.UnixMilli() == 0 { // free, but kept for the queue's head
			return Lease{}, Holder{}, false, retryAt, nil
		}
		return Lease{}, Holder{Owner: label, FencingToken: fence, ExpireTime: exp}, false, retryAt, nil
	}
	return Lease{Key: key, LeaseID: leaseID, Owner: owner, FencingToken: fence, ExpireTime: exp}, Holder{}, true, retryAt, nil
}

// Revoke implements Store. A grant to leaseID sent before Revoke was
// called runs no later than now+timeout+redisx.LateGrace by the store's clock
// (acquire's latest), so the revocation is kept until then.
func (r *RedisStore) Revoke(ctx context.Context, key, leaseID string) error {
	keep := redisx.RevocationKeep(r.timeout)
	_, err := r.runner().Run(ctx, revokeScript, []string{r.key(key), r.revoked(key)}, leaseID, r.channel(key), keep)
	return err
}

// LeaveQueue implements Queue.
func (r *RedisStore) LeaveQueue(ctx context.Context, key string) error {
	_, err := r.runner().Run(ctx, leaveScript, r.lockKeys(key), r.id, r.channel(key))
	return err
}

// RenewMany implements BatchRenewer: every renewal in one pipeline (on
// Cluster, one per node). With WithWait, each renewal is acknowledged by
// replicas one at a time, as Renew does.
func (r *RedisStore) RenewMany(ctx context.Context, rs []Renewal) []RenewResult {
	out := make([]RenewResult, len(rs))
	if r.wait.Replicas > 0 {
		for i, x := range rs {
			out[i].ExpireTime, out[i].Err = r.Renew(ctx, x.Key, x.LeaseID, x.TTL)
		}
		return out
	}
	calls := make([]redisx.Call, len(rs))
	for i, x := range rs {
		calls[i] = redisx.Call{Keys: []string{r.key(x.Key)}, Args: []any{x.LeaseID, x.TTL.Milliseconds(), retentionMS}}
	}
	for i, c := range r.runner().RunMany(ctx, renewScript, calls) {
		if c.Err != nil {
			out[i].Err = c.Err
			continue
		}
		out[i].ExpireTime, out[i].Err = parseRenewReply(c.Val)
	}
	return out
}

// Release implements Store.
func (r *RedisStore) Release(ctx context.Context, key, leaseID string) error {
	v, err := r.runner().Run(ctx, releaseScript, []string{r.key(key)}, leaseID, r.channel(key))
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
	v, err := r.runner().RunDurable(ctx, renewScript, renewed, []string{r.key(key)}, leaseID, ttl.Milliseconds(), retentionMS)
	if err != nil {
		return time.Time{}, err
	}
	return parseRenewReply(v)
}

func parseRenewReply(v any) (time.Time, error) {
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
	v, err := r.runner().Run(ctx, getScript, []string{r.key(key)})
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
	if !ok || len(a) < 4 {
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

var (
	_ Queue        = (*RedisStore)(nil)
	_ BatchRenewer = (*RedisStore)(nil)
)
