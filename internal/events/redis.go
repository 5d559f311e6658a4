package events

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
)

// Keys of a topic t (base name b: t without ".dead"), all with the hash tag
// {ns/ev/b} so that a topic, its dead-letter topic and their bookkeeping
// share one Cluster slot and one script can move an event between them
// (redisx.Key: b, <key> and <group> are escaped; see docs/redis-keys.md):
//
//	rs:{ns/ev/b}:ev                 stream of topic b; its consumer groups
//	rs:{ns/ev/b}:evd                stream of topic b.dead
//	rs:{ns/ev/b}:ev:dedup:<key>     event id published under idempotency key
//	                                <key> (string, PX dedup retention)
//	rs:{ns/ev/b}:ev:first:<group>   hash: pending event id -> first delivery
//	                                time to <group>, ms
//	rs:{ns/ev/b}:ev:due:<group>     sorted set: pending event id, scored by
//	                                when it may be delivered again, ms (the
//	                                delivery's visibility timeout, or a nack's
//	                                retry_after)
//	rs:{ns/ev/b}:ev:wake:<group>    stream of one entry, appended by each nack
//	                                and hand-back of <group> (PX 1h), so that
//	                                its blocked reads wake at once
//	rs:{ns/b}:ev:read:<group>/<read id>
//	                             hash: event id -> due score of the
//	                             delivery, for each event a read handed
//	                             out (PX the visibility timeout), so that
//	                             Return can hand them back; '!' alone: the
//	                             read was handed back before it ran
//	(evd:first:<group>, evd:due:<group> likewise for the dead-letter topic)
//
// Both are cleaned on ack and dead-lettering, so they hold no more than
// the group's pending events.
//
// A stream entry has the fields k (key), p (payload), i (the idempotency
// key, when published with one) and h:<name> for each header.
const evPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// KEYS[1] stream, KEYS[2] dedup key (absent without an idempotency key);
// ARGV max len, retention ms, fields...
//
// A duplicate rewrites its key's expiry unchanged: a write, so that the
// WAIT a durable publish sends after the script (redisx.RunWait) waits
// for everything the master holds, the first publish's append included,
// and not only for this connection's earlier writes.
var publishScript = redisx.NewScript("events.publish", `
if KEYS[2] then
  local id = redis.call('GET', KEYS[2])
  if id then
    local ttl = redis.call('PTTL', KEYS[2])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
    return {id, 1}
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
if KEYS[2] then redis.call('SET', KEYS[2], id, 'PX', ARGV[2]) end
return {id, 0}
`)

// KEYS the dedup keys of one topic; ARGV keep ms.
var expireDedupScript = redisx.NewScript("events.expire_dedup", `
local keep = tonumber(ARGV[1])
local n = 0
for _, k in ipairs(KEYS) do
  local ttl = redis.call('PTTL', k)
  if ttl > keep or ttl == -1 then
    redis.call('PEXPIRE', k, keep)
    n = n + 1
  end
end
return n
`)

// wakeLua appends to the group's wake stream (the KEYS index given),
// which wakes its blocked reads (Wait).
const wakeLua = `
local function wake(k)
  redis.call('XADD', k, 'MAXLEN', 1, '*', 'w', '1')
  redis.call('PEXPIRE', k, 3600000)
end
`

// KEYS[1] stream; ARGV group, consumer, start id.
var ensureGroupScript = redisx.NewScript("events.ensure_group", `
local created = 1
local r = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[3], 'MKSTREAM')
if type(r) == 'table' and r.err then
  if string.sub(r.err, 1, 9) ~= 'BUSYGROUP' then return redis.error_reply(r.err) end
  created = 0
end
redis.call('XGROUP', 'CREATECONSUMER', KEYS[1], ARGV[1], ARGV[2])
return created
`)

// KEYS[1] stream, KEYS[2] first-delivery hash, KEYS[3] dead-letter stream,
// KEYS[4] due set, KEYS[5] wake stream, KEYS[6] (optional) read record;
// ARGV group, consumer, count, visibility ms, max deliveries (0: never
// dead-letter), topic, dead-letter max len.
var readScript = redisx.NewScript("events.read", evPrelude+`
local function lastid(k)
  local last = redis.call('XREVRANGE', k, '+', '-', 'COUNT', 1)
  if #last > 0 then return last[1][1] end
  return '0-0'
end
if KEYS[6] and redis.call('EXISTS', KEYS[6]) == 1 then
  -- This read was handed back (Return) before it ran.
  return {{}, {}, '', 0, lastid(KEYS[5])}
end
local count = tonumber(ARGV[3])
local maxdel = tonumber(ARGV[5])
local vis = tonumber(ARGV[4])
local out, dead = {}, {}
local function forget(id)
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[4], id)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, count)
for _, id in ipairs(due) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #p == 0 then
    -- Acked or claimed away meanwhile by a path that did not clean up.
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[4], id)
  else
    local n = tonumber(p[1][4])
    if maxdel > 0 and n >= maxdel then
      local e = redis.call('XRANGE', KEYS[1], id, id)
      if #e > 0 then
        local f = e[1][2]
        for _, kv in ipairs({{'x-dead-letter-topic', ARGV[6]}, {'x-dead-letter-group', ARGV[1]},
            {'x-dead-letter-event-id', id}, {'x-dead-letter-deliveries', tostring(n)}}) do
          table.insert(f, 'h:' .. kv[1]); table.insert(f, kv[2])
        end
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', unpack(f))
        table.insert(dead, id)
      end
      forget(id)
    else
      local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
      local e = c[1]
      if type(e) == 'table' then
        local first = redis.call('HGET', KEYS[2], id)
        if not first then
          first = now
          redis.call('HSET', KEYS[2], id, now)
        end
        redis.call('ZADD', KEYS[4], now + vis, id)
        table.insert(out, {e[1], e[2], n + 1, tonumber(first)})
      else
        -- Trimmed away by the topic's max length while pending.
        forget(id)
      end
    end
  end
end
local more = count - #out
if more > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', more, 'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      redis.call('HSET', KEYS[2], e[1], now)
      redis.call('ZADD', KEYS[4], now + vis, e[1])
      table.insert(out, {e[1], e[2], 1, now})
    end
  end
end
if KEYS[6] and #out > 0 then
  for _, d in ipairs(out) do redis.call('HSET', KEYS[6], d[1], string.format('%.0f', now + vis)) end
  redis.call('PEXPIRE', KEYS[6], vis)
end
local nextdue = 0
local z = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if #z > 0 then nextdue = math.max(tonumber(z[2]) - now, 1) end
return {out, dead, lastid(KEYS[1]), nextdue, lastid(KEYS[5])}
`)

// KEYS[1] stream, KEYS[2] first-delivery hash, KEYS[3] due set; ARGV
// group, id.
var ackScript = redisx.NewScript("events.ack", `
local n = redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
if type(n) ~= 'number' then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return n
`)

// KEYS[1] stream, KEYS[2] due set, KEYS[3] wake stream; ARGV group, id,
// retry after ms.
var nackScript = redisx.NewScript("events.nack", evPrelude+wakeLua+`
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if type(p) ~= 'table' or p.err or #p == 0 then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
wake(KEYS[3])
return 1
`)

// KEYS[1] stream, KEYS[2] first-delivery hash, KEYS[3] due set, KEYS[4]
// read record, KEYS[5] wake stream; ARGV group, consumer, tombstone ttl
// ms, event ids (none: all of the read's).
var returnScript = redisx.NewScript("events.return", evPrelude+wakeLua+`
if redis.call('EXISTS', KEYS[4]) == 0 then
  -- The read has not run (or its deliveries are all due again anyway):
  -- make sure it hands nothing out if it still arrives.
  redis.call('HSET', KEYS[4], '!', '1')
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
  return 0
end
local ids = {}
if #ARGV > 3 then
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  for _, f in ipairs(redis.call('HKEYS', KEYS[4])) do
    if f ~= '!' then ids[#ids + 1] = f end
  end
end
local n = 0
for _, id in ipairs(ids) do
  local due = redis.call('HGET', KEYS[4], id)
  if due then
    redis.call('HDEL', KEYS[4], id)
    local score = redis.call('ZSCORE', KEYS[3], id)
    if score and tonumber(score) == tonumber(due) then
      local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
      if type(p) == 'table' and not p.err and #p > 0 and p[1][2] == ARGV[2] then
        local c = math.max(tonumber(p[1][4]) - 1, 0)
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', c, 'JUSTID')
        if c == 0 then redis.call('HDEL', KEYS[2], id) end
        redis.call('ZADD', KEYS[3], now, id)
        n = n + 1
      end
    end
  end
end
if n > 0 then wake(KEYS[5]) end
return n
`)

// Scripts are the Lua scripts of the Redis events store, for preloading.
var Scripts = []*redis.Script{publishScript, expireDedupScript, ensureGroupScript, readScript, ackScript, nackScript, returnScript}

// RedisStore is the Store on Redis Streams (standalone, Sentinel or
// Cluster). Every method but Wait is one script, bounded by the store
// timeout; Wait is an XREAD BLOCK on the blocking client.
type RedisStore struct {
	rdb     redis.UniversalClient
	block   redis.UniversalClient
	ns      string
	timeout time.Duration
	// wait is what a publish waits for after its append (WithWait).
	wait redisx.Wait
	// ownBlock: Close closes block.
	ownBlock bool
}

// RedisOption configures a RedisStore.
type RedisOption func(*RedisStore)

// WithBlockingClient makes Wait's blocking reads use c, a client of the
// same Redis with its own connection pool, so that they never hold a
// connection the other stores need. Without it Wait uses the main client.
func WithBlockingClient(c redis.UniversalClient) RedisOption {
	return func(r *RedisStore) { r.block = c }
}

// WithWait makes every publish wait for w (Redis WAIT after the publish
// script, on the same connection) before it succeeds; a publish that
// fewer replicas acknowledged fails with an error wrapping
// store.ErrNotReplicated (the event may still exist on the master: a
// retry with the same idempotency key returns it, and waits again). The
// zero Wait does not wait.
func WithWait(w redisx.Wait) RedisOption {
	return func(r *RedisStore) { r.wait = w }
}

// WithOwnedBlockingClient makes Close close the blocking client.
func WithOwnedBlockingClient() RedisOption {
	return func(r *RedisStore) { r.ownBlock = true }
}

// Close closes the blocking client if the store owns it.
func (r *RedisStore) Close() error {
	if r.ownBlock && r.block != r.rdb {
		return r.block.Close()
	}
	return nil
}

// NewRedisStore returns a store for namespace ns whose calls each take at
// most timeout before failing with store.ErrUnavailable.
func NewRedisStore(rdb redis.UniversalClient, ns string, timeout time.Duration, opts ...RedisOption) *RedisStore {
	r := &RedisStore{rdb: rdb, block: rdb, ns: ns, timeout: timeout}
	for _, o := range opts {
		o(r)
	}
	return r
}

// key returns the key of topic's stream (suffix "") or of its bookkeeping
// suffix "<kind>:<name>" (dedup:<idempotency key>, first:<group>,
// due:<group>): the record is the base topic, so a topic and its
// dead-letter topic share one hash tag, and the user-supplied name after
// the kind is escaped like the topic.
func (r *RedisStore) key(topic, suffix string) string {
	base, dead := cutDead(topic)
	s := "ev"
	if dead {
		s = "evd"
	}
	if suffix != "" {
		kind, name, _ := strings.Cut(suffix, ":")
		s += ":" + kind + ":" + redisx.Part(name)
	}
	return redisx.Key(r.ns, redisx.Events, base, s)
}

// StreamKey is the Redis key of topic's stream (for tests and tools).
func (r *RedisStore) StreamKey(topic string) string { return r.key(topic, "") }

func (r *RedisStore) runner() redisx.Runner {
	return redisx.Runner{Client: r.rdb, Timeout: r.timeout, Wait: r.wait}
}

func (r *RedisStore) run(ctx context.Context, s *redis.Script, keys []string, args ...any) (any, error) {
	v, err := r.runner().Run(ctx, s, keys, args...)
	if err != nil && strings.Contains(err.Error(), "NOGROUP") && ctx.Err() == nil {
		return nil, ErrNoGroup
	}
	return v, err
}

// always is the wrote of a publish for RunDurable: an append, and a
// duplicate too (the first publish's append may not have reached the
// replicas yet; the script's rewrite of the key's expiry makes WAIT cover
// it).
func always(any) bool { return true }

// Publish implements Store.
func (r *RedisStore) Publish(ctx context.Context, m Message, opts PublishOptions) (Published, error) {
	keys := []string{r.key(m.Topic, "")}
	if m.IdempotencyKey != "" {
		keys = append(keys, r.key(m.Topic, "dedup:"+m.IdempotencyKey))
	}
	args := make([]any, 0, 8+2*len(m.Headers))
	args = append(args, max(opts.MaxLen, 1), max(opts.DedupRetention.Milliseconds(), 1), "k", m.Key, "p", m.Payload)
	if m.IdempotencyKey != "" {
		args = append(args, "i", m.IdempotencyKey)
	}
	for k, v := range m.Headers {
		args = append(args, "h:"+k, v)
	}
	v, err := r.runner().RunDurable(ctx, publishScript, always, keys, args...)
	if err != nil {
		return Published{}, err
	}
	a, ok := v.([]any)
	if !ok || len(a) != 2 {
		return Published{}, fmt.Errorf("events: unexpected publish reply %T", v)
	}
	id, _ := a[0].(string)
	dup, _ := a[1].(int64)
	return Published{EventID: id, Duplicate: dup == 1}, nil
}

// EnsureGroup implements Store.
func (r *RedisStore) EnsureGroup(ctx context.Context, topic, group, consumer string, opts GroupOptions) (bool, error) {
	start := "0"
	if opts.Start == Latest {
		start = "$"
	}
	v, err := r.run(ctx, ensureGroupScript, []string{r.key(topic, "")}, group, consumer, start)
	if err != nil {
		return false, err
	}
	n, _ := v.(int64)
	return n == 1, nil
}

// Read implements Store.
func (r *RedisStore) Read(ctx context.Context, topic, group, consumer string, opts ReadOptions) (ReadResult, error) {
	base, _ := cutDead(topic)
	dead := r.key(base+DeadSuffix, "")
	keys := []string{r.key(topic, ""), r.key(topic, "first:"+group), dead, r.key(topic, "due:"+group), r.key(topic, "wake:"+group)}
	if opts.ReadID != "" {
		keys = append(keys, r.readKey(topic, group, opts.ReadID))
	}
	v, err := r.run(ctx, readScript, keys,
		group, consumer, max(opts.Count, 1), max(opts.Visibility.Milliseconds(), 1), max(opts.MaxDeliveries, 0), topic, max(opts.DeadMaxLen, 1))
	if err != nil {
		return ReadResult{}, err
	}
	a, ok := v.([]any)
	if !ok || len(a) != 5 {
		return ReadResult{}, fmt.Errorf("events: unexpected read reply %T", v)
	}
	var res ReadResult
	out, _ := a[0].([]any)
	for _, x := range out {
		e, ok := x.([]any)
		if !ok || len(e) != 4 {
			return ReadResult{}, fmt.Errorf("events: unexpected read entry %T", x)
		}
		id, _ := e[0].(string)
		fields, _ := e[1].([]any)
		n, _ := e[2].(int64)
		first, _ := e[3].(int64)
		d := Delivery{Event: decodeEvent(topic, id, fields), Count: int(n), FirstDeliveredAt: time.UnixMilli(first)}
		res.Deliveries = append(res.Deliveries, d)
	}
	deadIDs, _ := a[1].([]any)
	for _, x := range deadIDs {
		if s, ok := x.(string); ok {
			res.DeadLettered = append(res.DeadLettered, s)
		}
	}
	res.LastID, _ = a[2].(string)
	due, _ := a[3].(int64)
	res.NextDue = time.Duration(due) * time.Millisecond
	res.WakeID, _ = a[4].(string)
	return res, nil
}

func decodeEvent(topic, id string, fields []any) Event {
	ev := Event{ID: id, Topic: topic, PublishedAt: idTime(id)}
	for i := 0; i+1 < len(fields); i += 2 {
		k, _ := fields[i].(string)
		v, _ := fields[i+1].(string)
		switch {
		case k == "k":
			ev.Key = v
		case k == "p":
			ev.Payload = []byte(v)
		case k == "i":
			ev.IdempotencyKey = v
		case strings.HasPrefix(k, "h:"):
			if ev.Headers == nil {
				ev.Headers = map[string]string{}
			}
			ev.Headers[k[2:]] = v
		}
	}
	return ev
}

// Wait implements Store: XREAD BLOCK for an entry after lastID in the
// topic's stream or after wakeID in the group's wake stream (both share
// the topic's hash tag). A failure of the blocking read is not reported
// (the next Read reports a store outage); Wait then sleeps d instead, so
// a broken connection does not turn the caller's loop into a busy one.
func (r *RedisStore) Wait(ctx context.Context, topic, group, lastID, wakeID string, d time.Duration) error {
	if d < time.Millisecond {
		d = time.Millisecond
	}
	if lastID == "" {
		lastID = "0-0"
	}
	if wakeID == "" {
		wakeID = "0-0"
	}
	streams := []string{r.key(topic, ""), r.key(topic, "wake:"+group), lastID, wakeID}
	done := make(chan error, 1)
	go func() {
		err := r.block.XRead(ctx, &redis.XReadArgs{Streams: streams, Count: 1, Block: d}).Err()
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, redis.Nil) {
			return nil
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	return nil
}

// Ack implements Store.
func (r *RedisStore) Ack(ctx context.Context, topic, group, id string) (bool, error) {
	v, err := r.run(ctx, ackScript, []string{r.key(topic, ""), r.key(topic, "first:"+group), r.key(topic, "due:"+group)}, group, id)
	if err != nil {
		return false, err
	}
	n, _ := v.(int64)
	return n > 0, nil
}

// readKey is the record of the read readID of group.
func (r *RedisStore) readKey(topic, group, readID string) string {
	return r.key(topic, "read:"+group+"/"+readID)
}

// Return implements Store.
func (r *RedisStore) Return(ctx context.Context, topic, group, consumer, readID string, ids []string) (int, error) {
	keys := []string{r.key(topic, ""), r.key(topic, "first:"+group), r.key(topic, "due:"+group), r.readKey(topic, group, readID), r.key(topic, "wake:"+group)}
	args := make([]any, 0, 3+len(ids))
	args = append(args, group, consumer, ReturnTombstoneTTL.Milliseconds())
	for _, id := range ids {
		args = append(args, id)
	}
	v, err := r.run(ctx, returnScript, keys, args...)
	if err != nil {
		return 0, err
	}
	n, _ := v.(int64)
	return int(n), nil
}

// Nack implements Store.
func (r *RedisStore) Nack(ctx context.Context, topic, group, id string, retryAfter time.Duration) (bool, error) {
	v, err := r.run(ctx, nackScript, []string{r.key(topic, ""), r.key(topic, "due:"+group), r.key(topic, "wake:"+group)}, group, id, max(retryAfter.Milliseconds(), 0))
	if err != nil {
		return false, err
	}
	n, _ := v.(int64)
	return n > 0, nil
}

// ExpireDedup implements Store: one script for the keys of one topic
// (they share its hash tag).
func (r *RedisStore) ExpireDedup(ctx context.Context, topic string, keys []string, keep time.Duration) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	ks := make([]string, len(keys))
	for i, k := range keys {
		ks[i] = r.key(topic, "dedup:"+k)
	}
	v, err := r.run(ctx, expireDedupScript, ks, max(keep.Milliseconds(), 1))
	if err != nil {
		return 0, err
	}
	n, _ := v.(int64)
	return int(n), nil
}
