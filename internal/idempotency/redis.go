package idempotency

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// A record is one hash at rs:{ns/idem/key}:idem:
//
//	st     "p" in progress, "c" completed
//	fp     fingerprint
//	lease  lease id of the owner (in progress) or of the completer
//	exp    lease expiry, ms (in progress)
//	ttl    lease ttl, ms (in progress; a checkpoint extends the lease by it)
//	ret    retention, ms
//	att    attempts
//	ct ut  create and update time, ms
//	cp cpd cpt   last checkpoint: name, data, time ms (in progress)
//	data meta done   result data, encoded metadata, completion time ms
//
// Expiry is decided by comparing exp with Redis TIME; the key itself
// expires retention after the lease (in progress) or after the completion,
// which is when the record is forgotten. Completions and releases are
// announced on the sharded channel rs:{ns/idem/key}:idem:done, in the same slot.
const idemPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms(x) return string.format('%.0f', x) end
`

// KEYS[1] record, KEYS[2] revoked leases; ARGV fingerprint, lease, ttl
// ms, retention ms, latest (ms: a run after it claims nothing, as its
// caller has given up). Reply {'X'} when the lease was revoked or the
// script ran too late.
//
// The revoked set is read only on the paths that claim the key (issue
// 24: a retry answered from a completed or running record writes nothing,
// so a revoked lease's late run there is harmless); a new record is
// written with one HSET.
var checkOrRecordScript = redisx.NewScript("idempotency.check_or_record", idemPrelude+`
if now > tonumber(ARGV[5]) then return {'X'} end
local h = redis.call('HMGET', KEYS[1], 'st', 'fp', 'lease', 'exp', 'att', 'cp', 'cpd', 'cpt', 'data', 'meta', 'done')
local ttl = tonumber(ARGV[3])
local att, held = 1, 0
if h[1] then
  if h[2] ~= ARGV[1] then return {'M'} end
  if h[1] == 'c' then return {'C', h[9] or '', h[10] or '', tonumber(h[11]) or 0} end
  held = tonumber(h[4]) or 0
  att = tonumber(h[5]) or 1
  if held > now and h[3] ~= ARGV[2] then return {'P', att, held, held - now} end
end
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then return {'X'} end
local exp = now + ttl
if not h[1] then
  redis.call('HSET', KEYS[1], 'st', 'p', 'fp', ARGV[1], 'ct', ms(now), 'lease', ARGV[2], 'exp', ms(exp), 'ttl', ARGV[3], 'ret', ARGV[4], 'att', att, 'ut', ms(now))
elseif held > now then
  return {'S', att, held, h[6] or '', h[7] or '', tonumber(h[8]) or 0}
else
  att = att + 1
  redis.call('HSET', KEYS[1], 'lease', ARGV[2], 'exp', ms(exp), 'ttl', ARGV[3], 'ret', ARGV[4], 'att', att, 'ut', ms(now))
end
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[4]))
return {'S', att, exp, h[6] or '', h[7] or '', tonumber(h[8]) or 0}
`)

// KEYS[1] record; ARGV lease, data, metadata, channel. A completed
// record keeps the lease's exp and ttl (read only while in progress); a
// checkpoint's fields, which may be large, are deleted (issue 24: no HDEL
// when there is no checkpoint).
var completeScript = redisx.NewScript("idempotency.complete", idemPrelude+`
local h = redis.call('HMGET', KEYS[1], 'st', 'lease', 'ret', 'done', 'cp')
if h[2] ~= ARGV[1] then return -1 end
local ret = tonumber(h[3]) or 0
if h[1] == 'c' then return (tonumber(h[4]) or 0) + ret end
redis.call('HSET', KEYS[1], 'st', 'c', 'data', ARGV[2], 'meta', ARGV[3], 'done', ms(now), 'ut', ms(now))
if h[5] then redis.call('HDEL', KEYS[1], 'cp', 'cpd', 'cpt') end
redis.call('PEXPIRE', KEYS[1], ret)
redis.call('SPUBLISH', ARGV[4], 'c')
return now + ret
`)

// KEYS[1] record; ARGV lease, recovery point, data.
var checkpointScript = redisx.NewScript("idempotency.checkpoint", idemPrelude+`
local h = redis.call('HMGET', KEYS[1], 'st', 'lease', 'ttl', 'ret')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then return -1 end
local ttl = tonumber(h[3])
local exp = now + ttl
redis.call('HSET', KEYS[1], 'cp', ARGV[2], 'cpd', ARGV[3], 'cpt', ms(now), 'exp', ms(exp), 'ut', ms(now))
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(h[4]))
return exp
`)

// KEYS[1] record; ARGV lease, channel.
var releaseScript = redisx.NewScript("idempotency.release", `
local h = redis.call('HMGET', KEYS[1], 'st', 'lease')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SPUBLISH', ARGV[2], 'r')
return 1
`)

// KEYS[1] record, KEYS[2] revoked leases; ARGV lease, channel, keep ms.
// It deletes the in-progress record the lease owns; otherwise it remembers
// the lease as revoked until keep, the latest time a claim by it could
// still run, so that one still on its way is refused.
var revokeScript = redisx.NewScript("idempotency.revoke", idemPrelude+redisx.RevokeLua+`
local h = redis.call('HMGET', KEYS[1], 'st', 'lease')
if h[1] == 'p' and h[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SPUBLISH', ARGV[2], 'r')
  return 1
end
revoke(KEYS[2], ARGV[1], tonumber(ARGV[3]), now)
return 0
`)

// KEYS[1] record.
var getScript = redisx.NewScript("idempotency.get", idemPrelude+`
local h = redis.call('HMGET', KEYS[1], 'st', 'fp', 'att', 'ct', 'ut', 'exp', 'done', 'ret', 'cp')
if not h[1] then return {''} end
return {h[1], h[2] or '', h[3] or '0', h[4] or '0', h[5] or '0', h[6] or '0', h[7] or '0', h[8] or '0', h[9] or '', ms(now)}
`)

// Scripts are the Lua scripts of the Redis idempotency store, for preloading.
var Scripts = []*redis.Script{checkOrRecordScript, completeScript, checkpointScript, releaseScript, revokeScript, getScript}

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

// WithWait makes the writes that start, checkpoint or complete a key wait
// for w.Replicas replicas to acknowledge them (Redis WAIT on the same
// connection) before they are reported. Fewer in w.Timeout is
// store.ErrUnavailable (wrapping redisx.ErrNotReplicated), never a
// success: an unacknowledged start is released again at once if Redis
// lets us, else it lapses when its lease expires; a completion may be
// repeated with the same lease.
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

func (r *RedisStore) key(key string) string { return redisx.Key(r.ns, redisx.Idempotency, key, "idem") }
func (r *RedisStore) channel(key string) string {
	return redisx.Key(r.ns, redisx.Idempotency, key, "idem:done")
}

func (r *RedisStore) revoked(key string) string {
	return redisx.Key(r.ns, redisx.Idempotency, key, "idem:revoked")
}

func (r *RedisStore) runner() redisx.Runner {
	return redisx.Runner{Client: r.rdb, Timeout: r.timeout, Wait: r.wait}
}

// started reports whether a check_or_record reply claimed the key.
func started(v any) bool {
	if a, _ := v.([]any); len(a) > 0 {
		tag, _ := a[0].(string)
		return tag == "S"
	}
	return false
}

// stored reports whether a complete or checkpoint reply wrote (not -1).
func stored(v any) bool { n, ok := v.(int64); return ok && n >= 0 }

// CheckOrRecord implements Store.
func (r *RedisStore) CheckOrRecord(ctx context.Context, key, leaseID string, opts Options) (Claim, error) {
	v, err := r.runner().RunDurable(ctx, checkOrRecordScript, started, []string{r.key(key), r.revoked(key)},
		opts.Fingerprint, leaseID, opts.LeaseTTL.Milliseconds(), opts.Retention.Milliseconds(), redisx.Latest(ctx, r.timeout))
	if err != nil {
		// The Service hands the lease id back (Revoke): the script may
		// have run, and nobody will ever learn this lease id.
		return Claim{}, err
	}
	a, _ := v.([]any)
	// Formatted only when returned: %v of every reply cost 17 % of
	// CheckOrRecord's CPU in the issue 24 profile.
	bad := func() error { return fmt.Errorf("idempotency: bad reply %v", v) }
	if len(a) == 0 {
		return Claim{}, bad()
	}
	tag, _ := a[0].(string)
	switch {
	case tag == "X" && len(a) == 1:
		return Claim{}, store.Unavailable(errors.New("idempotency: claim reached the store after its caller gave up"))
	case tag == "M" && len(a) == 1:
		return Claim{}, ErrKeyMismatch
	case tag == "C" && len(a) == 4:
		data, _ := a[1].(string)
		meta, _ := a[2].(string)
		done, _ := a[3].(int64)
		md, err := decodeMetadata([]byte(meta))
		if err != nil {
			return Claim{}, err
		}
		res := Result{Metadata: md}
		if data != "" {
			res.Data = []byte(data)
		}
		return Claim{Outcome: Completed, Result: res, CompleteTime: time.UnixMilli(done)}, nil
	case tag == "P" && len(a) == 4:
		att, _ := a[1].(int64)
		exp, _ := a[2].(int64)
		rem, _ := a[3].(int64)
		return Claim{Outcome: InProgress, Attempt: int(att), LeaseExpireTime: time.UnixMilli(exp), LeaseRemaining: time.Duration(rem) * time.Millisecond}, nil
	case tag == "S" && len(a) == 6:
		att, _ := a[1].(int64)
		exp, _ := a[2].(int64)
		c := Claim{Outcome: Started, LeaseID: leaseID, Attempt: int(att), LeaseExpireTime: time.UnixMilli(exp)}
		if name, _ := a[3].(string); name != "" {
			data, _ := a[4].(string)
			at, _ := a[5].(int64)
			c.Checkpoint = &Checkpoint{RecoveryPoint: name, Time: time.UnixMilli(at)}
			if data != "" {
				c.Checkpoint.Data = []byte(data)
			}
		}
		return c, nil
	}
	return Claim{}, bad()
}

// Complete implements Store.
func (r *RedisStore) Complete(ctx context.Context, key, leaseID string, res Result) (time.Time, error) {
	v, err := r.runner().RunDurable(ctx, completeScript, stored, []string{r.key(key)}, leaseID, res.Data, encodeMetadata(res.Metadata), r.channel(key))
	return expiryReply(v, err)
}

// Checkpoint implements Store.
func (r *RedisStore) Checkpoint(ctx context.Context, key, leaseID string, cp Checkpoint) (time.Time, error) {
	v, err := r.runner().RunDurable(ctx, checkpointScript, stored, []string{r.key(key)}, leaseID, cp.RecoveryPoint, cp.Data)
	return expiryReply(v, err)
}

// expiryReply reads a script's answer: a time in ms, or -1 for a lost lease.
func expiryReply(v any, err error) (time.Time, error) {
	if err != nil {
		return time.Time{}, err
	}
	n, ok := v.(int64)
	switch {
	case !ok:
		return time.Time{}, fmt.Errorf("idempotency: bad reply %v", v)
	case n < 0:
		return time.Time{}, ErrLeaseLost
	}
	return time.UnixMilli(n), nil
}

// Revoke implements Store. A claim by leaseID sent before Revoke was
// called runs no later than now+timeout+redisx.LateGrace by the store's clock, so
// the revocation is kept until then.
func (r *RedisStore) Revoke(ctx context.Context, key, leaseID string) error {
	keep := redisx.RevocationKeep(r.timeout)
	_, err := r.runner().Run(ctx, revokeScript, []string{r.key(key), r.revoked(key)}, leaseID, r.channel(key), keep)
	return err
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

// Get implements Store.
func (r *RedisStore) Get(ctx context.Context, key string) (Info, error) {
	v, err := r.runner().Run(ctx, getScript, []string{r.key(key)})
	if err != nil {
		return Info{}, err
	}
	a, _ := v.([]any)
	s := make([]string, len(a))
	for i, x := range a {
		s[i], _ = x.(string)
	}
	if len(s) == 1 && s[0] == "" {
		return Info{State: Absent}, nil
	}
	if len(s) != 10 || (s[0] != "p" && s[0] != "c") {
		return Info{}, fmt.Errorf("idempotency: bad reply %v", v)
	}
	var n [6]int64
	for i := range n {
		if n[i], err = strconv.ParseInt(s[2+i], 10, 64); err != nil {
			return Info{}, fmt.Errorf("idempotency: bad reply %v", v)
		}
	}
	now, err := strconv.ParseInt(s[9], 10, 64)
	if err != nil {
		return Info{}, fmt.Errorf("idempotency: bad reply %v", v)
	}
	att, ct, ut, exp, done, ret := n[0], n[1], n[2], n[3], n[4], time.Duration(n[5])*time.Millisecond
	info := Info{
		Fingerprint: s[1],
		Attempts:    int(att),
		CreateTime:  time.UnixMilli(ct),
		UpdateTime:  time.UnixMilli(ut),
	}
	switch {
	case s[0] == "c":
		info.State = Done
		info.CompleteTime = time.UnixMilli(done)
		info.ExpireTime = info.CompleteTime.Add(ret)
	default:
		info.State = LeaseExpired
		if exp > now {
			info.State = Running
		}
		info.LeaseExpireTime = time.UnixMilli(exp)
		info.ExpireTime = info.LeaseExpireTime.Add(ret)
		info.RecoveryPoint = s[8]
	}
	return info, nil
}

// WatchDone implements Store. Watchers of one key share one sharded
// subscription; it is confirmed by Redis before WatchDone returns.
func (r *RedisStore) WatchDone(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	return r.watches.Watch(ctx, r.channel(key))
}

// Delete removes key's record, as Redis eviction or a failover that lost
// the last writes might.
func (r *RedisStore) Delete(ctx context.Context, key string) error {
	return r.rdb.Del(ctx, r.key(key)).Err()
}

// encodeMetadata writes m as a count and length-prefixed pairs in key
// order, so that equal maps encode equally. An empty map is "".
func encodeMetadata(m map[string]string) []byte {
	if len(m) == 0 {
		return nil
	}
	keys := slices.Sorted(maps.Keys(m))
	b := binary.AppendUvarint(nil, uint64(len(m)))
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(m[k])))
		b = append(b, m[k]...)
	}
	return b
}

var errBadMetadata = errors.New("idempotency: stored metadata is malformed")

// decodeMetadata reads what encodeMetadata wrote; "" is nil.
func decodeMetadata(b []byte) (map[string]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	next := func() (string, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return "", false
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, true
	}
	count, k := binary.Uvarint(b)
	if k <= 0 || count > uint64(len(b)) {
		return nil, errBadMetadata
	}
	b = b[k:]
	m := make(map[string]string, count)
	for range count {
		key, ok1 := next()
		val, ok2 := next()
		if !ok1 || !ok2 {
			return nil, errBadMetadata
		}
		m[key] = val
	}
	if len(b) != 0 {
		return nil, errBadMetadata
	}
	return m, nil
}
