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

// A lock is one string at rs:{ns/lock/key}:lock holding a MessagePack
// record (lease, owner, exp, fence, w, rh, ru, rw, rv: see lockCodec), so
// that a script reads it with one GET and writes it, expiry included, with
// one SET. Expiry is decided by comparing exp with Redis TIME (not by key
// expiry), so the fencing counter survives the lease: the key itself
// expires TokenRetention after the lease (queueRetention while sidecars may
// wait for it). Losing it is safe because tokens are floored by TIME in
// microseconds; the retention only keeps tokens increasing across a step
// back of Redis's clock of up to TokenRetention. Releases are announced on
// the sharded channel rs:{ns/lock/key}:lock:released, in the same slot as
// the record, only while the record's waiter flag w is set: a lock nobody
// waits on costs no queue lookup and no publish.
const lockPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// lockCodec reads and writes the lock record. Fields: lease (id of the
// holder, empty when free), owner (its label), exp (lease end, Redis TIME ms),
// fence (last fencing token), w (1: a sidecar may wait for the key, so the
// queue is looked at and releases are announced), rh, ru (the queue head
// a free lock is kept for, and until when), rw (1: a sidecar was refused
// while the lock was kept for the head, so the head's grant is announced),
// rv (Redis TIME ms until which revoked lease ids may be in the revoked
// set; the set is only looked at before then). save sets the key's expiry
// from the record: TokenRetention past the lease, at least queueRetention
// while w is set, and at least until rv.
//
// A record of the earlier hash form (WRONGTYPE for GET) is read once and
// written back in this form, with w and rv set as a sidecar of that version
// may be waiting or have revoked a lease.
var lockCodec = `
local tokenKeep = ` + strconv.FormatInt(TokenRetention.Milliseconds(), 10) + `
local function save(k, L)
  local px = math.max(L.exp - now, 0) + tokenKeep
  if L.w == 1 then px = math.max(px, ` + strconv.FormatInt(queueRetention.Milliseconds(), 10) + `) end
  if L.rv > now then px = math.max(px, L.rv - now) end
  redis.call('SET', k, cmsgpack.pack(L.lease, L.owner, L.exp, L.fence, L.w, L.rh, L.ru, L.rw, L.rv), 'PX', string.format('%.0f', px))
end
local function load(k)
  local v = redis.pcall('GET', k)
  if type(v) == 'string' then
    local L = {}
    L.lease, L.owner, L.exp, L.fence, L.w, L.rh, L.ru, L.rw, L.rv = cmsgpack.unpack(v)
    return L, true
  end
  if not v then
    return {lease = '', owner = '', exp = 0, fence = 0, w = 0, rh = '', ru = 0, rw = 0, rv = 0}, false
  end
  local h = redis.call('HMGET', k, 'lease', 'owner', 'exp', 'fence', 'rh', 'ru', 'rw')
  redis.call('DEL', k)
  local L = {lease = h[1] or '', owner = h[2] or '', exp = tonumber(h[3]) or 0, fence = tonumber(h[4]) or 0,
    w = 1, rh = h[5] or '', ru = tonumber(h[6]) or 0, rw = 0, rv = now + ` + strconv.FormatInt(queueRetention.Milliseconds(), 10) + `}
  if h[7] then L.rw = 1 end
  save(k, L)
  return L, true
end
local function fmt(n) return string.format('%.0f', n) end
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
// gets the grace, so no heartbeat is needed to detect dead sidecars. Every
// entry is added with the record's flag w set; the queue is looked at only
// while w is set, and w is cleared by an acquisition that finds the queue
// empty.
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
// ttl ms, queue retention ms, queue id (empty for a try that does not
// wait), stay ms (how long the queue id's callers still wait), more ('1':
// re-queue the id at the tail after a grant), release channel, latest (ms:
// a script run after it grants nothing, as its caller has given up), grace
// ms (how long a free lock is kept for the queue's head). Reply {granted,
// owner, fence, exp, retry_at}: retry_at is when a refused waiter should
// try again if nothing wakes it (the holder's expiry, or the end of the
// head's grace when the lock is free but kept for it); or {-1} when the
// lease id was revoked or the script ran too late. An uncontended grant is
// GET and SET besides TIME.
var acquireScript = redisx.NewScript("lock.acquire", lockPrelude+lockCodec+queuePrelude+`
if now > tonumber(ARGV[9]) then return {-1} end
local L = load(KEYS[1])
if L.rv > now then
  if redis.call('ZSCORE', KEYS[4], ARGV[1]) then return {-1} end
else
  L.rv = 0
end
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
  L.w = 1
end
local head = nil
if L.w == 1 then
  head = qpurge()
  if not head then L.w = 0 end
end
local fence = L.fence
local mine = L.lease == ARGV[1] and L.exp > now
if L.lease ~= '' and L.exp > now and not mine then
  if qid ~= '' then
    enqueue()
    save(KEYS[1], L)
  end
  local e = fmt(L.exp)
  return {0, L.owner, fmt(fence), e, e}
end
if not mine then
  -- The lock is free: it is kept for the queue's head, for a grace.
  local rh, ru = L.rh, L.ru
  local skipped = false
  while head and head ~= qid do
    if rh ~= head then
      rh, ru = head, now + tonumber(ARGV[10])
      L.rh, L.ru = rh, ru
      break
    elseif now < ru then
      break
    end
    -- The head let its grace pass: its sidecar is gone or cut off.
    redis.call('ZREM', KEYS[2], head)
    redis.call('ZREM', KEYS[3], head)
    head, rh, skipped = qpurge(), '', true
  end
  if head and head ~= qid then
    -- Refused: this waiter sleeps until a release or the grace's end; the
    -- grant to the head (rw) wakes it, to learn the new holder's expiry,
    -- and so does a skip, for the new head.
    if qid ~= '' then
      enqueue()
      L.rw = 1
    end
    save(KEYS[1], L)
    if skipped then redis.call('SPUBLISH', ARGV[8], 'skipped') end
    return {0, '', fmt(fence), '0', fmt(ru)}
  end
  local nowus = tonumber(t[1]) * 1000000 + tonumber(t[2])
  fence = math.max(fence + 1, nowus)
end
L.lease, L.owner, L.exp, L.fence, L.rh, L.ru = ARGV[1], ARGV[2], now + ttl, fence, '', 0
if qid ~= '' then
  if L.w == 1 then
    redis.call('ZREM', KEYS[2], qid)
    redis.call('ZREM', KEYS[3], qid)
  end
  if ARGV[7] == '1' then enqueue() end
end
local announce = L.rw == 1
L.rw = 0
save(KEYS[1], L)
if announce then redis.call('SPUBLISH', ARGV[8], 'granted') end
local e = fmt(L.exp)
return {1, ARGV[2], fmt(fence), e, e}
`)

// leaveScript: KEYS lock, queue, queue:exp; ARGV queue id, channel. It
// removes the id's entry; when that entry was the head and the lock is free,
// it ends the head's grace and announces a release so that the next
// sidecar in line tries.
var leaveScript = redisx.NewScript("lock.leave", lockPrelude+lockCodec+`
local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if removed == 1 and head == ARGV[1] then
  local L, found = load(KEYS[1])
  if found and L.rh == ARGV[1] then
    L.rh, L.ru = '', 0
    save(KEYS[1], L)
  end
  if redis.call('ZCARD', KEYS[2]) > 0 then
    if not (L.lease ~= '' and L.exp > now) then
      redis.call('SPUBLISH', ARGV[2], 'released')
    end
  end
end
return removed
`)

// revokeScript: KEYS lock, revoked; ARGV lease, channel, keep (ms). It
// releases the lock if the lease holds it; otherwise it remembers the lease
// id as revoked until keep, the latest time at which an acquisition by it
// could still run, so that one still on its way is refused (the record's
// rv tells acquisitions to look).
var revokeScript = redisx.NewScript("lock.revoke", lockPrelude+lockCodec+redisx.RevokeLua+`
local L = load(KEYS[1])
if ARGV[1] ~= '' and L.lease == ARGV[1] then
  local live = L.exp > now
  L.lease, L.owner, L.exp = '', '', 0
  save(KEYS[1], L)
  if live and L.w == 1 then redis.call('SPUBLISH', ARGV[2], 'released') end
  return 1
end
local keep = tonumber(ARGV[3])
if keep > now then
  revoke(KEYS[2], ARGV[1], keep, now)
  if L.rv < keep then
    L.rv = keep
    save(KEYS[1], L)
  end
end
return 0
`)

// releaseScript: KEYS lock; ARGV lease, channel. GET and SET besides TIME,
// and a publish only when a sidecar may wait (w).
var releaseScript = redisx.NewScript("lock.release", lockPrelude+lockCodec+`
local L = load(KEYS[1])
if ARGV[1] == '' or L.lease ~= ARGV[1] then return 0 end
local live = L.exp > now
L.lease, L.owner, L.exp = '', '', 0
save(KEYS[1], L)
if not live then return 0 end
if L.w == 1 then redis.call('SPUBLISH', ARGV[2], 'released') end
return 1
`)

// renewScript: KEYS lock; ARGV lease, ttl ms, retention ms (how long the
// record outlives the lease).
var renewScript = redisx.NewScript("lock.renew", lockPrelude+lockCodec+`
tokenKeep = tonumber(ARGV[3])
local L = load(KEYS[1])
if ARGV[1] == '' or L.lease ~= ARGV[1] or L.exp <= now then return '-1' end
L.exp = now + tonumber(ARGV[2])
save(KEYS[1], L)
return fmt(L.exp)
`)

var getScript = redisx.NewScript("lock.get", lockPrelude+lockCodec+`
local L = load(KEYS[1])
local held = 0
if L.lease ~= '' and L.exp > now then held = 1 end
return {held, L.owner, fmt(L.fence), fmt(L.exp)}
`)

// watchScript: KEYS lock. It sets the record's waiter flag, so that the
// releases after it are announced (see RedisStore.WatchRelease).
var watchScript = redisx.NewScript("lock.watch", lockPrelude+lockCodec+`
local L = load(KEYS[1])
if L.w ~= 1 then
  L.w = 1
  save(KEYS[1], L)
end
return 1
`)

// Scripts are the Lua scripts of the Redis lock store, for preloading.
var Scripts = []*redis.Script{acquireScript, releaseScript, revokeScript, renewScript, getScript, leaveScript, watchScript}

// TokenRetention is how long a lock's record outlives its lease (released
// or lapsed) on Redis. Fencing tokens never depend on it for being increasing while
// Redis's clock goes forward: a grant's token is at least Redis TIME in
// microseconds. What it protects is a step back of that clock (an NTP
// step, a failover to a replica whose clock is behind) of up to
// TokenRetention soon after a grant: the record's counter keeps the next
// token above the last. An hour before issue 24; a unique-key workload
// then kept a key per lock for the hour.
const TokenRetention = 10 * time.Second

// queueRetention is how long a wait queue (and a record whose waiter flag
// is set) lives after its last change.
const queueRetention = time.Hour

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

// lockNames are the names of one lock's keys and release channel, as
// redisx.Key makes them.
type lockNames struct{ lock, queue, queueExp, revoked, channel string }

// Suffixes of the names of a lock's keys and channel.
const (
	sfxLock     = "lock"
	sfxQueue    = ":queue"
	sfxQueueExp = ":queue:exp"
	sfxRevoked  = ":revoked"
	sfxReleased = ":released"
)

// names builds every name of key's lock in one allocation (they are on
// the path of every call): three strings laid end to end, the others
// their prefixes.
func (r *RedisStore) names(key string) lockNames {
	ns, id := redisx.Escape(r.ns), redisx.Escape(key)
	s := "rs:{" + ns + "/" + string(redisx.Lock) + "/" + id + "}:" + sfxLock + sfxQueueExp +
		"rs:{" + ns + "/" + string(redisx.Lock) + "/" + id + "}:" + sfxLock + sfxRevoked +
		"rs:{" + ns + "/" + string(redisx.Lock) + "/" + id + "}:" + sfxLock + sfxReleased
	n := (len(s) - len(sfxQueueExp) - len(sfxRevoked) - len(sfxReleased)) / 3 // the lock's own name
	var x lockNames
	x.queueExp, s = s[:n+len(sfxQueueExp)], s[n+len(sfxQueueExp):]
	x.lock, x.queue = x.queueExp[:n], x.queueExp[:n+len(sfxQueue)]
	x.revoked, x.channel = s[:n+len(sfxRevoked)], s[n+len(sfxRevoked):]
	return x
}

// lockAndChannel is names(key).lock and .channel, in one allocation.
func (r *RedisStore) lockAndChannel(key string) (lock, channel string) {
	channel = "rs:{" + redisx.Escape(r.ns) + "/" + string(redisx.Lock) + "/" + redisx.Escape(key) + "}:" + sfxLock + sfxReleased
	return channel[:len(channel)-len(sfxReleased)], channel
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
	n := r.names(key)
	keys := []string{n.lock, n.queue, n.queueExp, n.revoked}
	v, err := r.runner().RunDurable(ctx, acquireScript, granted, keys, leaseID, owner, ttl.Milliseconds(), queueRetention.Milliseconds(),
		qid, stay.Milliseconds(), moreArg, n.channel, redisx.Latest(ctx, r.timeout), r.grace.Milliseconds())
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
	n := r.names(key)
	_, err := r.runner().Run(ctx, revokeScript, []string{n.lock, n.revoked}, leaseID, n.channel, keep)
	return err
}

// LeaveQueue implements Queue.
func (r *RedisStore) LeaveQueue(ctx context.Context, key string) error {
	n := r.names(key)
	_, err := r.runner().Run(ctx, leaveScript, []string{n.lock, n.queue, n.queueExp}, r.id, n.channel)
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
		calls[i] = redisx.Call{Keys: []string{r.key(x.Key)}, Args: []any{x.LeaseID, x.TTL.Milliseconds(), TokenRetention.Milliseconds()}}
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
	lk, ch := r.lockAndChannel(key)
	v, err := r.runner().Run(ctx, releaseScript, []string{lk}, leaseID, ch)
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
	v, err := r.runner().RunDurable(ctx, renewScript, renewed, []string{r.key(key)}, leaseID, ttl.Milliseconds(), TokenRetention.Milliseconds())
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
// Releases are announced only while the lock's record says a sidecar may
// wait for it, so WatchRelease sets that flag once subscribed; it stays set
// while the key's wait queue has entries (every waiting sidecar is in it)
// and until an acquisition finds the queue empty. The Service's waiters
// use WatchQueued, which does not set it: they rely on announcements only
// once their try has been refused, which queued them.
func (r *RedisStore) WatchRelease(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	lk, name := r.lockAndChannel(key)
	ch, stop, err := r.watches.Watch(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	if _, err := r.runner().Run(ctx, watchScript, []string{lk}); err != nil {
		stop()
		return nil, nil, err
	}
	return ch, stop, nil
}

// WatchQueued implements Queue: the subscription alone, as every release
// while this sidecar is queued for key is announced.
func (r *RedisStore) WatchQueued(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	_, name := r.lockAndChannel(key)
	return r.watches.Watch(ctx, name)
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
