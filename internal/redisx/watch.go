package redisx

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// Watches delivers sharded pub/sub messages (SPUBLISH) to any number of
// watchers over one connection per Redis master, however many channels are
// watched: every channel a master serves is multiplexed on that master's
// connection (on standalone and Sentinel, one connection in all). Watchers
// of one channel share its subscription. It is safe for concurrent use.
//
// A connection exists only while some channel of its master is watched.
// When it fails, or Redis drops a channel because its slot moved, the
// channels are subscribed again (on the slot's new owner) and their
// watchers are signalled once: messages may have been missed meanwhile, so
// a watcher must re-check the state it waits for.
type Watches struct {
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // nil outside Cluster
	timeout time.Duration

	mu     sync.Mutex
	chans  map[string]*wchan
	shards map[string]*shard // by master address; "" outside Cluster
	// master is where the client's latest connection went, outside
	// Cluster: when it changes (a Sentinel switched masters), the
	// subscriptions follow (followMaster).
	master string
}

// chanState is where a channel's subscription stands. At most one command
// per channel is queued or unanswered at any time, so the replies of one
// channel are never confused.
type chanState int

const (
	stIdle          chanState = iota // on no connection, nothing sent
	stSubscribing                    // SSUBSCRIBE queued or unanswered
	stSubscribed                     // confirmed
	stUnsubscribing                  // SUNSUBSCRIBE queued or unanswered
)

type wchan struct {
	name     string
	slot     int
	shard    *shard
	state    chanState
	watchers []chan struct{} // a slice, not a set: one watcher is the common case
	// ready is closed by the next confirmed subscription; nil when no
	// watcher waits for one.
	ready chan struct{}
	// lost: messages may have been missed since the last confirmation, so
	// the watchers are signalled when the subscription is back.
	lost    bool
	routing bool // a goroutine is finding the master for an idle channel
}

// shard is one master's subscription connection, with a writer goroutine
// that sends the queued (un)subscriptions and a reader that dispatches
// replies and messages.
type shard struct {
	addr   string
	remote string // where its connection went, outside Cluster (followMaster); guarded by Watches.mu
	node   subscriber
	ps     *redis.PubSub
	// Guarded by Watches.mu.
	chans map[string]*wchan
	ops   []op
	dead  bool

	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	delay  time.Duration // before the first write: backoff after a failure
}

type op struct {
	sub bool
	ch  *wchan
}

// watchPingEvery is how long a connection may stay silent before it is
// pinged; a second silent interval marks it dead.
const watchPingEvery = 3 * time.Second

// roleCheckEvery is how often, on Cluster, a subscription connection's node
// is asked whether it is still a master (see demoted).
const roleCheckEvery = time.Second

// maxSubscribeBatch bounds the channels of one (S)SUBSCRIBE command.
const maxSubscribeBatch = 512

// NewWatches returns watches on rdb whose subscriptions take at most
// timeout to be confirmed.
func NewWatches(rdb redis.UniversalClient, timeout time.Duration) *Watches {
	ws := &Watches{rdb: rdb, timeout: timeout, chans: map[string]*wchan{}, shards: map[string]*shard{}}
	ws.cluster, _ = rdb.(*redis.ClusterClient)
	if ws.cluster == nil {
		rdb.AddHook(followMaster{ws})
	}
	return ws
}

// followMaster moves the subscriptions of Watches outside Cluster to the
// master the client's connections go to. A Sentinel failover client
// learns of a new master from the sentinels (+switch-master) or from a
// failed connection, and closes its connections to the old one; but not
// its subscription connections, and after a planned switchover
// (SENTINEL FAILOVER) the old master stays up, and says it is a master,
// until the sentinels reconfigure it up to 10 s later: subscriptions left
// there hear no release, and waiters would fall back to the holder's
// expiry. So a connection the client opens to another address than a
// subscription connection's replaces that subscription connection; the
// new one is dialled, like every connection, to the master the sentinels
// name, and the watchers are signalled since releases may have been
// missed.
type followMaster struct{ ws *Watches }

// shardKey marks a subscription connection's dial with its shard.
type shardKey struct{}

func (f followMaster) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err == nil {
			sh, _ := ctx.Value(shardKey{}).(*shard)
			f.ws.dialed(sh, conn.RemoteAddr().String())
		}
		return conn, err
	}
}

func (followMaster) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (followMaster) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// dialed records that the client connected to addr, for the subscription
// connection of sh when sh is not nil. The subscription connections to
// other addresses are replaced, on goroutines of their own: this runs
// inside a dial, which may be a subscription's, holding its lock.
func (ws *Watches) dialed(sh *shard, addr string) {
	ws.mu.Lock()
	if sh != nil {
		sh.remote = addr
	}
	var stale []*shard
	if addr != ws.master {
		ws.master = addr
		for _, other := range ws.shards {
			if other.remote != "" && other.remote != addr {
				stale = append(stale, other)
			}
		}
	}
	ws.mu.Unlock()
	for _, sh := range stale {
		go ws.fail(sh)
	}
}

var closedReady = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Watch subscribes to channel. Once it returns, every message published on
// channel is signalled on the returned channel (buffered, coalesced) until
// stop is called; stop is idempotent. The subscription is confirmed by
// Redis before Watch returns. Errors wrap store.ErrUnavailable, or are
// ctx's.
func (ws *Watches) Watch(ctx context.Context, channel string) (<-chan struct{}, func(), error) {
	sig := make(chan struct{}, 1)
	ws.mu.Lock()
	c := ws.chans[channel]
	if c == nil {
		c = &wchan{name: channel, slot: -1}
		ws.chans[channel] = c
	}
	c.watchers = append(c.watchers, sig)
	var ready chan struct{}
	route := false
	switch c.state {
	case stSubscribed:
		ready = closedReady
	default:
		if c.ready == nil {
			c.ready = make(chan struct{})
		}
		ready = c.ready
		if c.state == stIdle && !c.routing {
			c.routing, route = true, true
		}
	}
	ws.mu.Unlock()
	if route {
		ws.place(c)
	}

	var once sync.Once
	stop := func() { once.Do(func() { ws.unwatch(c, sig) }) }
	t := time.NewTimer(ws.timeout)
	defer t.Stop()
	select {
	case <-ready:
		return sig, stop, nil
	case <-ctx.Done():
		stop()
		return nil, nil, ctx.Err()
	case <-t.C:
		stop()
		return nil, nil, store.Unavailable(errors.New("redisx: subscription not confirmed in time"))
	}
}

// unwatch removes one watcher; the last one unsubscribes the channel.
func (ws *Watches) unwatch(c *wchan, sig chan struct{}) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for i, w := range c.watchers {
		if w == sig {
			last := len(c.watchers) - 1
			c.watchers[i], c.watchers[last] = c.watchers[last], nil
			c.watchers = c.watchers[:last]
			break
		}
	}
	if len(c.watchers) > 0 {
		return
	}
	c.ready = nil
	switch c.state {
	case stSubscribed:
		ws.enqueue(c, false)
	case stIdle:
		if !c.routing {
			ws.forget(c)
		}
	}
	// Subscribing: the confirmation unsubscribes it. Unsubscribing: done.
}

// forget drops an idle channel nobody watches.
func (ws *Watches) forget(c *wchan) {
	if ws.chans[c.name] == c {
		delete(ws.chans, c.name)
	}
}

// place finds c's master and queues its subscription there; on failure it
// retries in the background while c has watchers.
func (ws *Watches) place(c *wchan) {
	addr, node, slot, err := ws.route(c.name)
	if err == nil {
		ws.mu.Lock()
		ws.placeLocked(c, addr, node, slot)
		ws.mu.Unlock()
		return
	}
	go ws.placeLater(c)
}

// placeLater retries routing c with backoff until it is placed or nobody
// watches it.
func (ws *Watches) placeLater(c *wchan) {
	backoff := 20 * time.Millisecond
	for {
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Second)
		ws.mu.Lock()
		if len(c.watchers) == 0 {
			c.routing = false
			ws.forget(c)
			ws.mu.Unlock()
			return
		}
		ws.mu.Unlock()
		if ws.cluster != nil {
			ctx, cancel := context.WithTimeout(context.Background(), ws.timeout)
			ws.cluster.ReloadState(ctx)
			cancel()
		}
		addr, node, slot, err := ws.route(c.name)
		if err != nil {
			continue
		}
		ws.mu.Lock()
		ws.placeLocked(c, addr, node, slot)
		ws.mu.Unlock()
		return
	}
}

// placeLocked queues c's subscription on the shard of addr.
func (ws *Watches) placeLocked(c *wchan, addr string, node subscriber, slot int) {
	c.routing = false
	if len(c.watchers) == 0 {
		ws.forget(c)
		return
	}
	sh := ws.shards[addr]
	if sh == nil {
		sh = ws.newShard(addr, node, 0)
	}
	c.shard, c.slot = sh, slot
	sh.chans[c.name] = c
	ws.enqueue(c, true)
}

// subscriber opens a pub/sub connection: a *redis.Client (standalone,
// Sentinel, or one Cluster master).
type subscriber interface {
	SSubscribe(ctx context.Context, channels ...string) *redis.PubSub
	Do(ctx context.Context, args ...any) *redis.Cmd
}

// route returns the master that serves channel: its address (empty outside
// Cluster), a client for it, and the channel's slot (-1 outside Cluster).
func (ws *Watches) route(channel string) (string, subscriber, int, error) {
	if ws.cluster == nil {
		return "", ws.rdb, -1, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), ws.timeout)
	defer cancel()
	node, err := ws.cluster.MasterForKey(ctx, channel)
	if err != nil {
		return "", nil, 0, err
	}
	return node.Options().Addr, node, Slot(channel), nil
}

// enqueue queues a (un)subscription of c on its shard.
func (ws *Watches) enqueue(c *wchan, sub bool) {
	if sub {
		c.state = stSubscribing
	} else {
		c.state = stUnsubscribing
	}
	sh := c.shard
	sh.ops = append(sh.ops, op{sub: sub, ch: c})
	select {
	case sh.kick <- struct{}{}:
	default:
	}
}

func (ws *Watches) newShard(addr string, node subscriber, delay time.Duration) *shard {
	sh := &shard{addr: addr, node: node, chans: map[string]*wchan{}, kick: make(chan struct{}, 1), delay: delay}
	sh.ctx, sh.cancel = context.WithCancel(context.Background())
	sh.ctx = context.WithValue(sh.ctx, shardKey{}, sh)
	sh.ps = node.SSubscribe(sh.ctx) // no channel yet: connects on the first write
	ws.shards[addr] = sh
	go ws.write(sh)
	go ws.read(sh)
	return sh
}

// write sends the shard's queued commands, batched: on Cluster one command
// per slot, since a command's channels must share one.
func (ws *Watches) write(sh *shard) {
	if sh.delay > 0 && sleepCtx(sh.ctx, sh.delay) != nil {
		return
	}
	for {
		select {
		case <-sh.ctx.Done():
			return
		case <-sh.kick:
		}
		ws.mu.Lock()
		ops := sh.ops
		sh.ops = nil
		ws.mu.Unlock()
		for _, b := range batches(ops, ws.cluster != nil) {
			var err error
			if b.sub {
				err = sh.ps.SSubscribe(sh.ctx, b.names...)
			} else {
				err = sh.ps.SUnsubscribe(sh.ctx, b.names...)
			}
			if err != nil {
				ws.fail(sh)
				return
			}
		}
	}
}

type batch struct {
	sub   bool
	names []string
}

// batches groups ops into commands: same kind, at most maxSubscribeBatch
// channels, and on Cluster one slot.
func batches(ops []op, bySlot bool) []batch {
	type k struct {
		sub  bool
		slot int
	}
	idx := map[k]int{}
	var out []batch
	for _, o := range ops {
		key := k{o.sub, -1}
		if bySlot {
			key.slot = o.ch.slot
		}
		i, ok := idx[key]
		if !ok || len(out[i].names) == maxSubscribeBatch {
			out = append(out, batch{sub: o.sub})
			i = len(out) - 1
			idx[key] = i
		}
		out[i].names = append(out[i].names, o.ch.name)
	}
	return out
}

// read dispatches the shard's replies and messages until it fails or is
// closed.
func (ws *Watches) read(sh *shard) {
	silent := 0
	every := watchPingEvery
	if ws.cluster != nil {
		every = roleCheckEvery
	}
	lastHeard, lastCheck := time.Now(), time.Now()
	for {
		msg, err := sh.ps.ReceiveTimeout(sh.ctx, every)
		if sh.ctx.Err() != nil {
			return
		}
		if ws.cluster != nil && time.Since(lastCheck) >= roleCheckEvery {
			lastCheck = time.Now()
			if ws.demoted(sh) {
				ws.fail(sh)
				return
			}
		}
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				if time.Since(lastHeard) < watchPingEvery {
					continue
				}
				lastHeard = time.Now()
				if silent++; silent > 1 || sh.ps.Ping(sh.ctx) != nil {
					ws.fail(sh)
					return
				}
				continue
			}
			if moved, _, _ := redirect(err); moved {
				ws.moved(sh, err)
				continue
			}
			ws.fail(sh)
			return
		}
		lastHeard = time.Now()
		if silent = 0; sh.delay > 0 {
			ws.mu.Lock()
			sh.delay = 0 // the connection works: the next failure starts afresh
			ws.mu.Unlock()
		}
		switch m := msg.(type) {
		case *redis.Message:
			ws.signal(sh, m.Channel)
		case *redis.Subscription:
			switch m.Kind {
			case "ssubscribe":
				ws.confirmed(sh, m.Channel)
			case "sunsubscribe":
				if ws.unsubscribed(sh, m.Channel) {
					return
				}
			}
		}
	}
}

func (ws *Watches) signal(sh *shard, channel string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if c := sh.chans[channel]; c != nil {
		signalAll(c)
	}
}

func signalAll(c *wchan) {
	for _, s := range c.watchers {
		select {
		case s <- struct{}{}:
		default:
		}
	}
}

// confirmed handles Redis's confirmation of a subscription.
func (ws *Watches) confirmed(sh *shard, channel string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	c := sh.chans[channel]
	if c == nil {
		return
	}
	switch c.state {
	case stSubscribing:
		c.state = stSubscribed
		if c.ready != nil {
			close(c.ready)
			c.ready = nil
		}
		if c.lost {
			c.lost = false
			signalAll(c)
		}
		if len(c.watchers) == 0 {
			ws.enqueue(c, false)
		}
	case stSubscribed:
		// go-redis subscribed again after reconnecting by itself.
		signalAll(c)
	}
}

// unsubscribed handles a SUNSUBSCRIBE reply, ours or Redis's own when the
// channel's slot left this master. It reports whether the shard closed.
func (ws *Watches) unsubscribed(sh *shard, channel string) bool {
	ws.mu.Lock()
	c := sh.chans[channel]
	if c == nil {
		ws.mu.Unlock()
		return false
	}
	if c.state != stUnsubscribing {
		// Redis dropped it: the slot moved. Subscribe on its new owner.
		ws.detachLocked(c)
		ws.mu.Unlock()
		go ws.placeLater(c)
		return false
	}
	delete(sh.chans, channel)
	c.shard, c.state = nil, stIdle
	if len(c.watchers) > 0 {
		c.routing = true
		ws.mu.Unlock()
		ws.place(c)
		ws.mu.Lock()
	} else {
		ws.forget(c)
	}
	closing := len(sh.chans) == 0 && len(sh.ops) == 0 && !sh.dead
	if closing {
		ws.closeShardLocked(sh)
	}
	ws.mu.Unlock()
	if closing {
		_ = sh.ps.Close()
	}
	return closing
}

// detachLocked takes c off its shard, to be placed again.
func (ws *Watches) detachLocked(c *wchan) {
	if c.shard != nil {
		delete(c.shard.chans, c.name)
	}
	c.shard, c.state, c.lost, c.routing = nil, stIdle, true, true
}

func (ws *Watches) closeShardLocked(sh *shard) {
	sh.dead = true
	sh.cancel()
	if ws.shards[sh.addr] == sh {
		delete(ws.shards, sh.addr)
	}
}

// moved handles a MOVED reply to a subscription: the slot map was stale.
// The channels of that slot waiting for a confirmation are placed again.
func (ws *Watches) moved(sh *shard, err error) {
	var rerr redis.Error
	errors.As(err, &rerr)
	f := strings.Fields(rerr.Error())
	slot, perr := strconv.Atoi(f[1])
	if ws.cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), ws.timeout)
		ws.cluster.ReloadState(ctx)
		cancel()
	}
	var again []*wchan
	ws.mu.Lock()
	for _, c := range sh.chans {
		if c.state == stSubscribing && (perr != nil || c.slot == slot) {
			ws.detachLocked(c)
			again = append(again, c)
		}
	}
	ws.mu.Unlock()
	for _, c := range again {
		go ws.placeLater(c)
	}
}

// demoted reports whether the node of sh, on Cluster, says it is no
// longer a master: after a failover (CLUSTER FAILOVER, or its master
// failing) the old master serves its slots no more, and until it is a
// replica of the new one in every node's view, releases published on the
// new master may not reach it. Its channels are then subscribed again on
// the slots' new owner, after the client reloads the slot map.
func (ws *Watches) demoted(sh *shard) bool {
	ctx, cancel := context.WithTimeout(sh.ctx, ws.timeout)
	defer cancel()
	role, err := sh.node.Do(ctx, "ROLE").Slice()
	if err != nil || len(role) == 0 || role[0] == "master" {
		return false // a node that does not answer is the ping's to judge
	}
	ctx, cancel = context.WithTimeout(sh.ctx, ws.timeout)
	defer cancel()
	ws.cluster.ReloadState(ctx)
	return true
}

// fail closes a broken shard and places its channels again, on a new
// connection opened after a backoff.
func (ws *Watches) fail(sh *shard) {
	ws.mu.Lock()
	if sh.dead {
		ws.mu.Unlock()
		return
	}
	ws.closeShardLocked(sh)
	delay := min(max(2*sh.delay, 20*time.Millisecond), time.Second) // sh.delay is guarded by ws.mu
	var again []*wchan
	for _, c := range sh.chans {
		if len(c.watchers) == 0 {
			c.shard, c.state = nil, stIdle
			ws.forget(c)
			continue
		}
		ws.detachLocked(c)
		again = append(again, c)
	}
	sh.chans = nil
	ws.mu.Unlock()
	_ = sh.ps.Close()
	if len(again) == 0 {
		return
	}
	go func() {
		if sleepCtx(context.Background(), delay) != nil {
			return
		}
		for _, c := range again {
			addr, node, slot, err := ws.route(c.name)
			if err != nil {
				go ws.placeLater(c)
				continue
			}
			ws.mu.Lock()
			if ws.shards[addr] == nil && len(c.watchers) > 0 {
				ws.newShard(addr, node, delay)
			}
			ws.placeLocked(c, addr, node, slot)
			ws.mu.Unlock()
		}
	}()
}

// Connections returns how many subscription connections are open, for
// tests and metrics.
func (ws *Watches) Connections() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.shards)
}
