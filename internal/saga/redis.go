package saga

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
)

// Layout. The sagas of a namespace are spread over Shards shards by a hash
// of the saga id. Shard k's keys share the hash tag {<ns>/saga/shard-kk}
// (redisx.Key; <id> below is redisx.Part(id), so no saga id can leave its
// key or name an index; see docs/redis-keys.md):
//
//	...:saga:h:<id>     hash: the saga (fields below) and its steps' status
//	...:saga:l:<id>     list: the steps as recorded (encodeStep), oldest first
//	...:saga:i:all      sorted set (score 0, so in id order): every saga
//	...:saga:i:<st>     sorted set per state (r c g d f): the sagas in it
//	...:saga:i:due      sorted set by time (ms): when the recovery worker
//	                    must look at the saga: a RUNNING saga's deadline, a
//	                    COMPENSATING saga's executor lease expiry, a
//	                    COMPLETED or COMPENSATED saga's end of retention
//
// So one script (one round trip, atomic, one slot on Redis Cluster) writes a
// saga and its index entries together: the indexes never disagree with the
// log, and nothing needs repairing after a crash. The price is that the
// recovery worker and ListSagas visit every shard (one pipeline).
//
// Saga hash fields: name, st (r RUNNING, c COMPLETED, g COMPENSATING,
// d COMPENSATED, f COMPENSATION_FAILED), meta, tmo (timeout ms), ct ut dl
// et xt (create, update, deadline, end, expire; ms), rsn, err, n (steps),
// cur (next step to compensate), ex exu (executor id and lease expiry ms),
// rx (an executor id handed back by Release before its claim ran: that
// claim claims nothing).
// Per step i: x:<name> = i, s:i status (absent pending, d done, f failed),
// a:i attempts, e:i last error, t:i record time, c:i compensate time,
// tc:i the W3C trace context of the RecordStep call (JSON; absent without
// one), kept apart from the step's record so that a retry from another
// trace is still the same step.
// Time is Redis TIME. COMPLETED and COMPENSATED sagas get a key expiry
// (retention); the worker then drops their index entries.

// Shards is the number of index shards per namespace. Changing it would
// orphan the existing sagas.
const Shards = 16

// sagaFields are the summary fields every write returns, in this order.
var sagaFields = []string{"name", "st", "meta", "tmo", "ct", "ut", "dl", "et", "xt", "rsn", "err", "n", "cur", "exu"}

// KEYS: 1 hash, 2 steps, 3 all, 4-8 states r c g d f, 9 due.
// ARGV: 1 exec id, 2 lease ms, 3 retention ms, 4 saga id, then the script's.
const sagaPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms(x) return string.format('%.0f', x) end
local H, L = KEYS[1], KEYS[2]
local exec, lease, ret, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local F = {'name', 'st', 'meta', 'tmo', 'ct', 'ut', 'dl', 'et', 'xt', 'rsn', 'err', 'n', 'cur', 'exu'}
local CODES = {'r', 'c', 'g', 'd', 'f'}
local function num(f) return tonumber(redis.call('HGET', H, f)) or 0 end
local function state() return redis.call('HGET', H, 'st') end

-- sync makes the index entries match the saga.
local function sync()
  local st = state()
  if not st then
    redis.call('ZREM', KEYS[3], id)
    for i = 4, 9 do redis.call('ZREM', KEYS[i], id) end
    return
  end
  redis.call('ZADD', KEYS[3], 0, id)
  for i, c in ipairs(CODES) do
    if c == st then redis.call('ZADD', KEYS[3 + i], 0, id) else redis.call('ZREM', KEYS[3 + i], id) end
  end
  local due = false
  if st == 'r' then due = redis.call('HGET', H, 'dl')
  elseif st == 'g' then due = redis.call('HGET', H, 'exu')
  elseif st == 'c' or st == 'd' then due = redis.call('HGET', H, 'xt') end
  if due then redis.call('ZADD', KEYS[9], due, id) else redis.call('ZREM', KEYS[9], id) end
end

local function finish(st)
  redis.call('HSET', H, 'st', st, 'et', ms(now), 'ut', ms(now))
  redis.call('HDEL', H, 'ex', 'exu', 'cur')
  if st ~= 'f' then
    redis.call('HSET', H, 'xt', ms(now + ret))
    redis.call('PEXPIRE', H, ret)
    redis.call('PEXPIRE', L, ret)
  end
end

-- claim hands the saga to exec; none (an expired lease) when exec is '',
-- or was handed back before this write ran (rx, see saga.release).
local function claim()
  if exec == '' or redis.call('HGET', H, 'rx') == exec then
    redis.call('HDEL', H, 'ex')
    redis.call('HSET', H, 'exu', '0')
    return 0
  end
  redis.call('HSET', H, 'ex', exec, 'exu', ms(now + lease))
  return 1
end

local function compensate(reason)
  redis.call('HSET', H, 'rsn', reason)
  local n = num('n')
  if n == 0 then finish('d') return 0 end
  local cur = 0
  for i = n, 1, -1 do
    if redis.call('HGET', H, 's:' .. i) ~= 'd' then cur = i break end
  end
  redis.call('HSET', H, 'st', 'g', 'cur', cur, 'ut', ms(now))
  return claim()
end

local function timeout_if_due()
  if state() == 'r' and now >= num('dl') then return compensate('timeout') end
  return 0
end

local function claim_if_orphan()
  if exec ~= '' and state() == 'g' and now >= num('exu') then return claim() end
  return 0
end

-- reply: {code, previous state, claimed, summary, next step or '', extra}
local function reply(code, prev, claimed, extra)
  local s = redis.call('HMGET', H, unpack(F))
  local nxt = ''
  if s[2] == 'g' then
    local cur = tonumber(s[13]) or 0
    if cur > 0 then
      nxt = {cur, redis.call('LINDEX', L, cur - 1),
        redis.call('HMGET', H, 's:' .. cur, 'a:' .. cur, 'e:' .. cur, 't:' .. cur, 'c:' .. cur, 'tc:' .. cur)}
    end
  end
  return {code, prev or '', claimed, s, nxt, extra or 0}
end
`

// ARGV 5 name, 6 timeout ms, 7 metadata.
var startScript = redisx.NewScript("saga.start", sagaPrelude+`
local st = state()
if st then
  local c = timeout_if_due()
  sync()
  return reply('E', st, c)
end
redis.call('DEL', L)
redis.call('HSET', H, 'name', ARGV[5], 'st', 'r', 'meta', ARGV[7], 'tmo', ARGV[6], 'ct', ms(now), 'ut', ms(now),
  'dl', ms(now + tonumber(ARGV[6])), 'n', 0)
sync()
return reply('C', false, 0)
`)

// ARGV 5 step name, 6 encoded step, 7 max steps, 8 trace context ("": none).
// A RUNNING saga before its deadline (the common case) is read with one
// HMGET (issue 24: it was seven HGETs); any other goes the general way.
var recordScript = redisx.NewScript("saga.record", sagaPrelude+`
local h = redis.call('HMGET', H, 'st', 'dl', 'x:' .. ARGV[5], 'n')
local st = h[1]
if not st then return {'N'} end
local i, n
if st == 'r' and now < (tonumber(h[2]) or 0) then
  i, n = tonumber(h[3]), tonumber(h[4]) or 0
else
  local c = timeout_if_due()
  if c == 1 or state() ~= st then sync() end
  if state() ~= 'r' then return reply('S', st, c) end
  i, n = tonumber(redis.call('HGET', H, 'x:' .. ARGV[5])), num('n')
end
if i then
  if redis.call('LINDEX', L, i - 1) == ARGV[6] then return reply('R', st, 0, i) end
  return reply('M', st, 0, i)
end
if n >= tonumber(ARGV[7]) then return reply('L', st, 0) end
n = n + 1
redis.call('RPUSH', L, ARGV[6])
redis.call('HSET', H, 'x:' .. ARGV[5], n, 't:' .. n, ms(now), 'n', n, 'ut', ms(now))
if ARGV[8] ~= '' then redis.call('HSET', H, 'tc:' .. n, ARGV[8]) end
return reply('A', st, 0, n)
`)

// A RUNNING saga before its deadline is read with one HMGET (issue 24).
var completeScript = redisx.NewScript("saga.complete", sagaPrelude+`
local h = redis.call('HMGET', H, 'st', 'dl')
local st = h[1]
if not st then return {'N'} end
local c, cur = 0, st
if not (st == 'r' and now < (tonumber(h[2]) or 0)) then
  c = timeout_if_due()
  cur = state()
end
if cur == 'r' then
  finish('c')
  sync()
  return reply('A', st, 0)
end
if cur ~= st then sync() end
if cur == 'c' then return reply('R', st, c) end
return reply('S', st, c)
`)

// ARGV 5 reason.
var abortScript = redisx.NewScript("saga.abort", sagaPrelude+`
local st = state()
if not st then return {'N'} end
local c = timeout_if_due()
local cur = state()
if cur == 'r' then
  c = compensate(ARGV[5])
elseif cur == 'c' then
  return reply('S', st, 0)
elseif cur == 'g' and c == 0 then
  c = claim_if_orphan()
end
sync()
return reply('A', st, c)
`)

var retryScript = redisx.NewScript("saga.retry", sagaPrelude+`
local st = state()
if not st then return {'N'} end
if st ~= 'f' then return reply('S', st, 0) end
for i = 1, num('n') do
  if redis.call('HGET', H, 's:' .. i) == 'f' then redis.call('HDEL', H, 's:' .. i) end
end
redis.call('HDEL', H, 'et', 'err')
local c = compensate(redis.call('HGET', H, 'rsn') or '')
sync()
return reply('A', st, c)
`)

var recoverScript = redisx.NewScript("saga.recover", sagaPrelude+`
local st = state()
if not st then
  sync()
  return {'N'}
end
local c = timeout_if_due()
if c == 0 then c = claim_if_orphan() end
sync()
return reply('A', st, c)
`)

var renewScript = redisx.NewScript("saga.renew", sagaPrelude+`
if exec == '' or state() ~= 'g' or redis.call('HGET', H, 'ex') ~= exec then return 0 end
redis.call('HSET', H, 'exu', ms(now + lease))
redis.call('ZADD', KEYS[9], ms(now + lease), id)
return 1
`)

// ARGV 5 step index, 6 result (d done, p retry, f failed), 7 attempts,
// 8 error, 9 the saga's last error when failed.
var reportScript = redisx.NewScript("saga.report", sagaPrelude+`
local st = state()
if exec == '' or st ~= 'g' or redis.call('HGET', H, 'ex') ~= exec then return {'L'} end
local i = tonumber(ARGV[5])
if num('cur') ~= i then return {'X', num('cur')} end
redis.call('HINCRBY', H, 'a:' .. i, tonumber(ARGV[7]))
redis.call('HSET', H, 'ut', ms(now))
if ARGV[6] == 'd' then
  redis.call('HSET', H, 's:' .. i, 'd', 'c:' .. i, ms(now))
  local cur = i
  while cur > 0 and redis.call('HGET', H, 's:' .. cur) == 'd' do cur = cur - 1 end
  if cur == 0 then
    finish('d')
    sync()
    return reply('A', st, 0)
  end
  redis.call('HSET', H, 'cur', cur)
elseif ARGV[6] == 'f' then
  redis.call('HSET', H, 's:' .. i, 'f', 'e:' .. i, ARGV[8], 'err', ARGV[9])
  finish('f')
  sync()
  return reply('A', st, 0)
else
  redis.call('HSET', H, 'e:' .. i, ARGV[8])
end
redis.call('HSET', H, 'exu', ms(now + lease))
sync()
return reply('A', st, 0)
`)

var releaseScript = redisx.NewScript("saga.release", sagaPrelude+`
if exec == '' then return 0 end
if state() ~= 'g' or redis.call('HGET', H, 'ex') ~= exec then
  -- Not held by exec: a claiming write of exec whose outcome its caller
  -- never learnt may still be on its way; remember exec so that it claims
  -- nothing when it runs.
  if state() then redis.call('HSET', H, 'rx', exec) end
  return 0
end
redis.call('HDEL', H, 'ex')
redis.call('HSET', H, 'exu', '0')
sync()
return 1
`)

var getScript = redisx.NewScript("saga.get", `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
`)

// KEYS as above (the saga keys unused); ARGV 1 limit. Returns the due ids
// (by Redis TIME) and the number of COMPENSATION_FAILED sagas.
var dueScript = redisx.NewScript("saga.due", `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', string.format('%.0f', now), 'LIMIT', 0, tonumber(ARGV[1])),
  redis.call('ZCARD', KEYS[8])}
`)

// Scripts are the Lua scripts of the Redis saga store, for preloading.
var Scripts = []*redis.Script{startScript, recordScript, completeScript, abortScript, retryScript, recoverScript,
	renewScript, reportScript, releaseScript, getScript, dueScript}

// stateOrder is the order of the state indexes among a shard's keys.
var stateOrder = []string{"r", "c", "g", "d", "f"}

var stateCodes = map[string]State{"r": Running, "c": Completed, "g": Compensating, "d": Compensated, "f": CompensationFailed}

func stateCode(s State) string {
	for c, st := range stateCodes {
		if st == s {
			return c
		}
	}
	return ""
}

// RedisStore is the Store on Redis (standalone, Sentinel or Cluster). Every
// write is one script, one round trip, bounded by the store timeout.
type RedisStore struct {
	rdb     redis.UniversalClient
	ns      string
	timeout time.Duration
	wait    redisx.Wait
	// scans rotates the shard Due starts with, so that no shard's due
	// sagas wait behind another's.
	scans atomic.Uint32
	// shards holds each shard's name and its index keys (KEYS 3-9), built
	// once: building them on every write was a quarter of the store's
	// CPU per write in the issue 24 profile.
	shards [Shards]shardNames
}

// shardNames are one shard's hash-tag part and index keys.
type shardNames struct {
	shard   string
	indexes []string // all, the states in stateOrder, due
}

// RedisOption configures a RedisStore.
type RedisOption func(*RedisStore)

// WithWait makes every write that changes a saga (start, step, transition,
// report, lease) wait for the replicas w asks for before it is reported.
// Fewer in w.Timeout is store.ErrUnavailable (wrapping
// redisx.ErrNotReplicated): the caller must treat the write as not done,
// and retrying it is safe (every write is idempotent by saga id, step name
// and executor).
func WithWait(w redisx.Wait) RedisOption {
	return func(r *RedisStore) { r.wait = w }
}

// NewRedisStore returns a store for namespace ns whose calls each take at
// most timeout before failing with store.ErrUnavailable.
func NewRedisStore(rdb redis.UniversalClient, ns string, timeout time.Duration, opts ...RedisOption) *RedisStore {
	r := &RedisStore{rdb: rdb, ns: ns, timeout: timeout}
	for _, o := range opts {
		o(r)
	}
	for k := range r.shards {
		shard := fmt.Sprintf("shard-%02d", k)
		idx := []string{redisx.Key(ns, redisx.Saga, shard, "saga:i:all")}
		for _, c := range stateOrder {
			idx = append(idx, redisx.Key(ns, redisx.Saga, shard, "saga:i:"+c))
		}
		r.shards[k] = shardNames{shard: shard, indexes: append(idx, redisx.Key(ns, redisx.Saga, shard, "saga:i:due"))}
	}
	return r
}

// shardOf is the index shard of a saga id.
func shardOf(id string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % Shards)
}

// shardKeys are the keys of shard k, with the saga keys of id (which may
// be "" for shard-wide calls).
func (r *RedisStore) shardKeys(k int, id string) []string {
	sh := &r.shards[k]
	keys := make([]string, 2, 2+len(sh.indexes))
	keys[0] = redisx.Key(r.ns, redisx.Saga, sh.shard, "saga:h:"+redisx.Part(id))
	keys[1] = redisx.Key(r.ns, redisx.Saga, sh.shard, "saga:l:"+redisx.Part(id))
	return append(keys, sh.indexes...)
}

func (r *RedisStore) keys(id string) []string { return r.shardKeys(shardOf(id), id) }

// write runs one saga script: ARGV exec, lease, retention, id, then args.
func (r *RedisStore) write(ctx context.Context, s *redis.Script, id string, p Params, args ...any) (any, error) {
	argv := append([]any{p.ExecID, p.Lease.Milliseconds(), p.Retention.Milliseconds(), id}, args...)
	return redisx.Runner{Client: r.rdb, Timeout: r.timeout, Wait: r.wait}.RunDurable(ctx, s, changed, r.keys(id), argv...)
}

// changed reports whether a saga script's reply may follow a write: every
// reply but the refusals (not found, wrong state, mismatch, limit, lease
// lost, out of order), which change nothing.
func changed(v any) bool {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return true
	}
	code, _ := a[0].(string)
	switch code {
	case "N", "S", "M", "L", "X":
		return false
	}
	return true
}

// reply is a parsed saga script reply.
type reply struct {
	code  string
	out   Outcome
	extra int64
}

func parseReply(id string, v any) (reply, error) {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return reply{}, fmt.Errorf("saga: bad reply %v", v)
	}
	rp := reply{}
	rp.code, _ = a[0].(string)
	if len(a) == 1 {
		return rp, nil
	}
	if len(a) != 6 {
		return reply{}, fmt.Errorf("saga: bad reply %v", v)
	}
	prev, _ := a[1].(string)
	rp.out.Prev = stateCodes[prev]
	claimed, _ := a[2].(int64)
	rp.out.Claimed = claimed == 1
	fields, _ := a[3].([]any)
	s, err := parseSummary(id, fields)
	if err != nil {
		return reply{}, err
	}
	rp.out.Saga = s
	if nxt, ok := a[4].([]any); ok && len(nxt) == 3 {
		idx, _ := nxt[0].(int64)
		enc, _ := nxt[1].(string)
		st, err := parseStep(int(idx), enc, nxt[2])
		if err != nil {
			return reply{}, err
		}
		rp.out.Next = &st
	}
	rp.extra, _ = a[5].(int64)
	return rp, nil
}

// parseSummary reads the sagaFields values of a saga.
func parseSummary(id string, f []any) (Saga, error) {
	if len(f) != len(sagaFields) {
		return Saga{}, fmt.Errorf("saga: bad summary %v", f)
	}
	str := func(i int) string { s, _ := f[i].(string); return s }
	n := func(i int) int64 { v, _ := strconv.ParseInt(str(i), 10, 64); return v }
	tm := func(i int) time.Time {
		if v := n(i); v > 0 {
			return time.UnixMilli(v)
		}
		return time.Time{}
	}
	st, ok := stateCodes[str(1)]
	if !ok {
		return Saga{}, fmt.Errorf("saga: corrupt record %q: state %q", id, str(1))
	}
	md, err := decodeMetadata(str(2))
	if err != nil {
		return Saga{}, err
	}
	return Saga{
		ID: id, Name: str(0), State: st, Metadata: md, Timeout: time.Duration(n(3)) * time.Millisecond,
		CreateTime: tm(4), UpdateTime: tm(5), Deadline: tm(6), EndTime: tm(7), ExpireTime: tm(8),
		Reason: str(9), LastError: str(10), StepCount: int(n(11)), cursor: int(n(12)), leaseExpire: tm(13),
	}, nil
}

// parseStep reads a step: its record and [status, attempts, error, record
// time, compensate time, trace context].
func parseStep(idx int, enc string, status any) (Step, error) {
	name, c, err := decodeStep(enc)
	if err != nil {
		return Step{}, err
	}
	f, _ := status.([]any)
	get := func(i int) string {
		if i < len(f) {
			s, _ := f[i].(string)
			return s
		}
		return ""
	}
	st := Step{Name: name, Index: idx, Compensation: c, Status: StepPending, LastError: get(2)}
	switch get(0) {
	case "d":
		st.Status = StepSucceeded
	case "f":
		st.Status = StepFailed
	}
	st.Attempts, _ = strconv.Atoi(get(1))
	if v, _ := strconv.ParseInt(get(3), 10, 64); v > 0 {
		st.RecordTime = time.UnixMilli(v)
	}
	if tc, err := decodeMetadata(get(5)); err == nil {
		st.TraceContext = tc // a corrupt one only costs the trace link
	}
	if v, _ := strconv.ParseInt(get(4), 10, 64); v > 0 {
		st.CompensateTime = time.UnixMilli(v)
	}
	return st, nil
}

// conflictOf is the error of a 'S' (state) or 'M' (mismatch) reply.
func conflictOf(rp reply, msg string) error {
	return &ConflictError{State: rp.out.Saga.State, Exists: rp.code == "M", Msg: msg}
}

// Start implements Store.
func (r *RedisStore) Start(ctx context.Context, n NewSaga, p Params) (Outcome, bool, error) {
	v, err := r.write(ctx, startScript, n.ID, p, n.Name, n.Timeout.Milliseconds(), encodeMetadata(n.Metadata))
	if err != nil {
		return Outcome{}, false, err
	}
	rp, err := parseReply(n.ID, v)
	if err != nil {
		return Outcome{}, false, err
	}
	return rp.out, rp.code == "C", nil
}

// RecordStep implements Store.
func (r *RedisStore) RecordStep(ctx context.Context, id string, step Step, maxSteps int, p Params) (Outcome, int, bool, error) {
	v, err := r.write(ctx, recordScript, id, p, step.Name, encodeStep(step.Name, step.Compensation), maxSteps, encodeMetadata(step.TraceContext))
	if err != nil {
		return Outcome{}, 0, false, err
	}
	rp, err := parseReply(id, v)
	if err != nil {
		return Outcome{}, 0, false, err
	}
	idx := int(rp.extra)
	switch rp.code {
	case "N":
		return Outcome{}, 0, false, ErrNotFound
	case "S":
		return rp.out, 0, false, conflictOf(rp, fmt.Sprintf("saga is %v: steps can only be recorded while it is RUNNING", rp.out.Saga.State))
	case "M":
		return rp.out, idx, false, conflictOf(rp, fmt.Sprintf("step %q was recorded with a different compensation", step.Name))
	case "L":
		return rp.out, 0, false, ErrTooManySteps
	case "R":
		return rp.out, idx, false, nil
	}
	return rp.out, idx, true, nil
}

// Complete implements Store.
func (r *RedisStore) Complete(ctx context.Context, id string, p Params) (Outcome, error) {
	return r.transition(ctx, completeScript, id, p, "it can no longer complete")
}

// Abort implements Store.
func (r *RedisStore) Abort(ctx context.Context, id, reason string, p Params) (Outcome, error) {
	return r.transition(ctx, abortScript, id, p, "there is nothing to abort", reason)
}

// Retry implements Store.
func (r *RedisStore) Retry(ctx context.Context, id string, p Params) (Outcome, error) {
	return r.transition(ctx, retryScript, id, p, "only a COMPENSATION_FAILED saga can be retried")
}

// Recover implements Store.
func (r *RedisStore) Recover(ctx context.Context, id string, p Params) (Outcome, error) {
	return r.transition(ctx, recoverScript, id, p, "")
}

func (r *RedisStore) transition(ctx context.Context, s *redis.Script, id string, p Params, conflictMsg string, args ...any) (Outcome, error) {
	v, err := r.write(ctx, s, id, p, args...)
	if err != nil {
		return Outcome{}, err
	}
	rp, err := parseReply(id, v)
	if err != nil {
		return Outcome{}, err
	}
	switch rp.code {
	case "N":
		return Outcome{}, ErrNotFound
	case "S":
		return rp.out, conflictOf(rp, fmt.Sprintf("saga is %v: %s", rp.out.Saga.State, conflictMsg))
	}
	return rp.out, nil
}

// Renew implements Store.
func (r *RedisStore) Renew(ctx context.Context, id, execID string, lease time.Duration) error {
	v, err := r.write(ctx, renewScript, id, Params{ExecID: execID, Lease: lease})
	if err != nil {
		return err
	}
	if n, _ := v.(int64); n != 1 {
		return ErrLeaseLost
	}
	return nil
}

// Report implements Store.
func (r *RedisStore) Report(ctx context.Context, id string, a Attempt, p Params) (Outcome, error) {
	res := map[StepStatus]string{StepSucceeded: "d", StepPending: "p", StepFailed: "f"}[a.Result]
	if res == "" {
		return Outcome{}, fmt.Errorf("saga: bad attempt result %d", a.Result)
	}
	v, err := r.write(ctx, reportScript, id, p, a.Index, res, a.Attempts, a.Error, failureText(a.Name, a.Error))
	if err != nil {
		return Outcome{}, err
	}
	rp, err := parseReply(id, v)
	if err != nil {
		return Outcome{}, err
	}
	switch rp.code {
	case "L":
		return Outcome{}, ErrLeaseLost
	case "X":
		return Outcome{}, fmt.Errorf("saga: report for step %d, but step %d is next", a.Index, rp.extra)
	}
	return rp.out, nil
}

// Release implements Store.
func (r *RedisStore) Release(ctx context.Context, id, execID string) error {
	_, err := r.write(ctx, releaseScript, id, Params{ExecID: execID})
	return err
}

// Get implements Store.
func (r *RedisStore) Get(ctx context.Context, id string) (Saga, error) {
	sctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	keys := r.keys(id)
	v, err := getScript.Run(sctx, r.rdb, keys[:2]).Result()
	if errors.Is(err, redis.Nil) {
		return Saga{}, ErrNotFound
	}
	if err := redisx.Classify(ctx, err); err != nil {
		return Saga{}, err
	}
	a, _ := v.([]any)
	if len(a) != 2 {
		return Saga{}, fmt.Errorf("saga: bad reply %v", v)
	}
	flat, _ := a[0].([]any)
	h := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		k, _ := flat[i].(string)
		val, _ := flat[i+1].(string)
		h[k] = val
	}
	fields := make([]any, len(sagaFields))
	for i, f := range sagaFields {
		if val, ok := h[f]; ok {
			fields[i] = val
		}
	}
	s, err := parseSummary(id, fields)
	if err != nil {
		return Saga{}, err
	}
	recs, _ := a[1].([]any)
	s.Steps = make([]Step, 0, len(recs))
	for i, rec := range recs {
		enc, _ := rec.(string)
		n := strconv.Itoa(i + 1)
		st, err := parseStep(i+1, enc, []any{h["s:"+n], h["a:"+n], h["e:"+n], h["t:"+n], h["c:"+n], h["tc:"+n]})
		if err != nil {
			return Saga{}, err
		}
		s.Steps = append(s.Steps, st)
	}
	return s, nil
}

// List implements Store: up to limit ids from every shard's index, merged
// in id order, then their summaries.
func (r *RedisStore) List(ctx context.Context, state State, after string, limit int) ([]Saga, bool, error) {
	sctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	idx := 2 // the index of every saga; keys 3-7 are the states r c g d f
	if state != 0 {
		idx = 3 + slices.Index(stateOrder, stateCode(state))
	}
	from := "-"
	if after != "" {
		from = "(" + after
	}
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.StringSliceCmd, Shards)
	for k := range Shards {
		cmds[k] = pipe.ZRangeByLex(sctx, r.shardKeys(k, "")[idx], &redis.ZRangeBy{Min: from, Max: "+", Count: int64(limit) + 1})
	}
	if _, err := pipe.Exec(sctx); err != nil {
		return nil, false, redisx.Classify(ctx, err)
	}
	var ids []string
	for _, c := range cmds {
		ids = append(ids, c.Val()...)
	}
	slices.Sort(ids)
	more := len(ids) > limit
	ids = ids[:min(len(ids), limit)]
	if len(ids) == 0 {
		return nil, more, nil
	}
	pipe = r.rdb.Pipeline()
	hm := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		hm[i] = pipe.HMGet(sctx, r.keys(id)[0], sagaFields...)
	}
	if _, err := pipe.Exec(sctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, false, redisx.Classify(ctx, err)
	}
	out := make([]Saga, 0, len(ids))
	for i, id := range ids {
		vals := hm[i].Val()
		if len(vals) < 2 || vals[1] == nil {
			continue // removed after its retention; the worker drops the entry
		}
		s, err := parseSummary(id, vals)
		if err != nil {
			return nil, false, err
		}
		if state == 0 || s.State == state {
			out = append(out, s)
		}
	}
	return out, more, nil
}

// Due implements Store, visiting every shard in one pipeline.
func (r *RedisStore) Due(ctx context.Context, limit int) ([]string, error) {
	res, err := r.scanShards(ctx, limit)
	if err != nil {
		return nil, err
	}
	var ids []string
	first := int(r.scans.Add(1) % Shards)
	for k := range Shards {
		ids = append(ids, res[(first+k)%Shards].due...)
	}
	return ids[:min(len(ids), limit)], nil
}

// CountFailed implements Store.
func (r *RedisStore) CountFailed(ctx context.Context) (int, error) {
	res, err := r.scanShards(ctx, 0)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range res {
		n += s.failed
	}
	return n, nil
}

type shardScan struct {
	due    []string
	failed int
}

func (r *RedisStore) scanShards(ctx context.Context, limit int) ([]shardScan, error) {
	calls := make([]redisx.Call, Shards)
	for k := range Shards {
		calls[k] = redisx.Call{Keys: r.shardKeys(k, ""), Args: []any{limit}}
	}
	replies := redisx.Runner{Client: r.rdb, Timeout: r.timeout}.RunMany(ctx, dueScript, calls)
	for _, c := range replies {
		if c.Err != nil {
			return nil, c.Err
		}
	}
	out := make([]shardScan, Shards)
	for k, c := range replies {
		a, _ := c.Val.([]any)
		if len(a) != 2 {
			return nil, fmt.Errorf("saga: bad due reply %v", c.Val)
		}
		for _, id := range a[0].([]any) {
			s, _ := id.(string)
			out[k].due = append(out[k].due, s)
		}
		n, _ := a[1].(int64)
		out[k].failed = int(n)
	}
	return out, nil
}

// Evict deletes a saga's keys, as Redis eviction might (for tests).
func (r *RedisStore) Evict(ctx context.Context, id string) error {
	k := r.keys(id)
	return r.rdb.Del(ctx, k[0], k[1]).Err()
}
