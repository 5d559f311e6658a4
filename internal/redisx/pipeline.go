package redisx

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of the auto-pipeliner. Measured with 64 concurrent lock ops
// (docs/topologies.md, "Pipelining"): one round trip in flight per node
// gives the deepest batches, so the least Redis CPU per call, and as much
// throughput as two; more split the batches and lose on both.
const (
	// DefaultPipelineFlushers is how many round trips to one Redis node the
	// auto-pipeliner keeps in flight at once.
	DefaultPipelineFlushers = 1
	// DefaultPipelineBatch is the most calls one pipeline carries.
	DefaultPipelineBatch = 128
)

// Call states: a queued call is sent by a flusher unless its caller has
// abandoned it first.
const (
	callQueued int32 = iota
	callSent
	callAbandoned
)

// Coalescer pipelines the scripts of concurrent callers on one client
// (see AutoPipeline). Its methods are safe for concurrent use.
type Coalescer struct {
	c        redis.UniversalClient
	cluster  *redis.ClusterClient // c, when it is a cluster client
	flushers int
	batch    int

	mu     sync.Mutex
	queues map[string]*pipeQueue // by node address; "" on a single node

	calls atomic.Int64 // eval-family calls seen
	trips atomic.Int64 // round trips they took
}

// PipelineStats counts what a Coalescer did since AutoPipeline.
type PipelineStats struct {
	// Calls is how many script calls went through it.
	Calls int64
	// RoundTrips is how many round trips carried them: one per call sent
	// on its own, one per pipeline.
	RoundTrips int64
}

// AutoPipeline makes c send the scripts (EVALSHA, EVAL and their _RO
// forms) of concurrent callers to Redis as pipelines, which costs Redis far
// less CPU per script than one round trip each. A call made while nothing
// is waiting goes out at once on the caller's goroutine, exactly as without
// pipelining, so a lone caller sees no added latency. Calls made while
// flushers round trips to the same node are already in flight queue up,
// and leave together (at most batch per pipeline) as soon as one of those
// completes: there is no timer, batches form by themselves under load. On
// a ClusterClient each master has its own queue, so a slow node delays
// only the calls for its slots, and the cluster pipeline still follows
// MOVED and ASK. flushers and batch below 1 mean DefaultPipelineFlushers
// and DefaultPipelineBatch.
//
// Every call keeps its own semantics. Its reply and error are its own: a
// failed script, NOSCRIPT or redis.Nil does not touch its neighbours, so
// Script.Run still falls back to EVAL. It returns when its ctx ends: a
// call whose ctx ends while queued is never sent; one whose ctx ends while
// its pipeline is in flight returns ctx.Err() and may or may not have run,
// as an unpipelined call that timed out. A pipeline's deadline is the
// latest of its calls' deadlines (none if one call has none), and the
// client's read and write timeouts bound it too, so on a dead Redis it
// fails as a single call would.
//
// AutoPipeline installs a hook. Call it after every other AddHook, so that
// the hooks added before it (latency metrics, tracing) still see each
// script as one command, besides each pipeline sent. Other commands, and
// commands sent through a Pipeline, are untouched. A script sent on a Conn
// of c or inside c.Watch would be pipelined on another connection: send
// none there (the stores do not). Call it once per client. It starts no
// goroutine that outlives the pipelines in flight, so it needs no Close.
func AutoPipeline(c redis.UniversalClient, flushers, batch int) *Coalescer {
	if flushers < 1 {
		flushers = DefaultPipelineFlushers
	}
	if batch < 1 {
		batch = DefaultPipelineBatch
	}
	p := &Coalescer{c: c, flushers: flushers, batch: batch, queues: map[string]*pipeQueue{}}
	p.cluster, _ = c.(*redis.ClusterClient)
	c.AddHook(p)
	return p
}

// Stats returns what p did so far.
func (p *Coalescer) Stats() PipelineStats {
	return PipelineStats{Calls: p.calls.Load(), RoundTrips: p.trips.Load()}
}

// DialHook implements redis.Hook.
func (p *Coalescer) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessPipelineHook implements redis.Hook.
func (p *Coalescer) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// ProcessHook implements redis.Hook: it queues the scripts and lets every
// other command through.
func (p *Coalescer) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c, ok := scriptCmd(cmd)
		if !ok {
			return next(ctx, cmd)
		}
		q := p.queue(ctx, c)
		if q == nil {
			return next(ctx, cmd)
		}
		p.calls.Add(1)
		return q.do(ctx, c, next)
	}
}

// isScript reports whether cmd runs a script on keys (numkeys > 0): those
// have a node to go to and never block the connection. Blocking commands,
// pub/sub, WAIT and the rest never get here.
func isScript(cmd *redis.Cmd) bool {
	switch cmd.Name() {
	case "evalsha", "eval", "evalsha_ro", "eval_ro":
	default:
		return false
	}
	args := cmd.Args()
	if len(args) < 4 {
		return false
	}
	switch n := args[2].(type) {
	case int:
		return n > 0
	case int64:
		return n > 0
	default:
		return fmt.Sprint(n) != "0"
	}
}

// queue returns the queue of the node that serves cmd's first key, or nil
// when the cluster's topology is not known yet (the call then goes out on
// its own and fails or succeeds as it would have).
func (p *Coalescer) queue(ctx context.Context, cmd *redis.Cmd) *pipeQueue {
	node := ""
	if p.cluster != nil {
		key, ok := cmd.Args()[3].(string)
		if !ok {
			key = fmt.Sprint(cmd.Args()[3])
		}
		c, err := p.cluster.MasterForKey(ctx, key)
		if err != nil {
			return nil
		}
		node = c.Options().Addr
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	q := p.queues[node]
	if q == nil {
		q = &pipeQueue{p: p}
		p.queues[node] = q
	}
	return q
}

// pipeQueue holds the calls waiting for one node and counts the round
// trips in flight to it.
type pipeQueue struct {
	p *Coalescer

	mu      sync.Mutex
	pending []*call
	active  int // round trips in flight, at most p.flushers
}

// call is one queued script. wire is a copy of the caller's command, so a
// caller that gave up never shares memory with the flusher still reading
// the reply.
type call struct {
	ctx   context.Context
	wire  *redis.Cmd
	state atomic.Int32
	done  chan struct{} // closed once wire holds the reply or error
}

// do runs cmd: at once on this goroutine when the node is idle enough,
// otherwise in the next pipeline to the node.
func (q *pipeQueue) do(ctx context.Context, cmd *redis.Cmd, next redis.ProcessHook) error {
	q.mu.Lock()
	if q.active < q.p.flushers && len(q.pending) == 0 {
		q.active++
		q.mu.Unlock()
		q.p.trips.Add(1)
		err := next(ctx, noRetryCmd{cmd})
		q.release()
		return err
	}
	c := &call{ctx: ctx, wire: redis.NewCmd(ctx, cmd.Args()...), done: make(chan struct{})}
	q.pending = append(q.pending, c)
	spawn := q.active < q.p.flushers
	if spawn {
		q.active++
	}
	q.mu.Unlock()
	if spawn {
		go q.flush()
	}

	select {
	case <-c.done:
	case <-ctx.Done():
		select {
		case <-c.done: // the reply won the race: keep it
		default:
			// Queued: never sent. Sent: the outcome is unknown, as for an
			// unpipelined call that timed out. Either way this call is over.
			c.state.CompareAndSwap(callQueued, callAbandoned)
			err := ctx.Err()
			cmd.SetErr(err)
			return err
		}
	}
	cmd.SetVal(c.wire.Val())
	cmd.SetErr(c.wire.Err())
	return cmd.Err()
}

// release ends a round trip sent on the caller's goroutine, handing its
// slot to a flusher if calls queued meanwhile.
func (q *pipeQueue) release() {
	q.mu.Lock()
	if len(q.pending) > 0 {
		q.mu.Unlock()
		go q.flush()
		return
	}
	q.active--
	q.mu.Unlock()
}

// flush sends the queued calls, a batch per round trip, until none is
// left, then frees its slot and ends.
func (q *pipeQueue) flush() {
	for {
		q.mu.Lock()
		n := len(q.pending)
		if n == 0 {
			q.active--
			q.mu.Unlock()
			return
		}
		n = min(n, q.p.batch)
		batch := make([]*call, n)
		copy(batch, q.pending)
		q.pending = append(q.pending[:0], q.pending[n:]...)
		q.mu.Unlock()
		// No yield here for the callers just woken to queue their next
		// calls: a sidecar's caller makes its next call only after a round
		// trip to its client, so the calls queued meanwhile are the next
		// batch. The yield that was here showed as 9% of the sidecar's CPU
		// in scheduler work at 64 concurrent lock calls (issue 24).
		q.send(batch)
	}
}

// send runs the calls still wanted as one pipeline and wakes every caller.
func (q *pipeQueue) send(batch []*call) {
	defer func() {
		for _, c := range batch {
			close(c.done)
		}
	}()
	var deadline time.Time
	bounded := true
	pipe := q.p.c.Pipeline()
	for _, c := range batch {
		if !c.state.CompareAndSwap(callQueued, callSent) {
			continue // its caller is gone
		}
		if d, ok := c.ctx.Deadline(); !ok {
			bounded = false
		} else if d.After(deadline) {
			deadline = d
		}
		_ = pipe.Process(c.ctx, noRetryCmd{c.wire})
	}
	if pipe.Len() == 0 {
		return
	}
	ctx := context.Background()
	if bounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	q.p.trips.Add(1)
	_, _ = pipe.Exec(ctx) // each command carries its own reply or error
}
