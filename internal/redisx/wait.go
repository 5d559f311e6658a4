package redisx

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Wait is how much replication a store asks for after the writes that hand
// out ownership or record state clients rely on (a lock grant, an
// idempotency claim or result, a saga transition, an event published from
// the outbox): Redis WAIT for Replicas replicas, or for every replica with
// All, for at most Timeout. The zero value does not wait.
//
// WAIT for a number narrows, but does not close, the window in which a
// failover loses an acknowledged write: a planned switchover promotes one
// replica while another still follows the old master and acknowledges
// writes the resync then erases. All closes it for any single failover
// (docs/topologies.md): every replica the master reports online must
// acknowledge, and on Sentinel the Fence confirms, after WAIT, that no
// failover had begun and that the node that took the write is the master
// every sentinel names. Fencing tokens remain the safety net.
type Wait struct {
	Replicas int
	// All waits for every replica the master reports online (ROLE), and
	// refuses the write when fewer than Min are.
	All bool
	Min int
	// Fence, with All, confirms each acknowledged write against the
	// failover authority (SentinelFence); nil: no confirmation.
	Fence   Fence
	Timeout time.Duration
}

// enabled reports whether w waits at all.
func (w Wait) enabled() bool { return w.Replicas > 0 || w.All }

// Fence confirms that a write survives failovers that begin later.
type Fence interface {
	// Confirm returns nil only if, at some moment after Confirm was
	// called, node (the host:port of the master that took the write)
	// was the master every failover authority names and none of them had
	// begun a failover.
	Confirm(ctx context.Context, node string) error
}

// ErrNotReplicated is returned (wrapped) when a write was made on the
// master but fewer replicas than Wait asks for acknowledged it in time, or
// its Fence could not confirm it. The write may survive or may be lost in
// a failover: the caller must treat the operation as failed (Classify
// makes it store.ErrNotReplicated, a kind of store.ErrUnavailable:
// REPLICATION_SHORTFALL at the API edge), and what it wrote (a lock grant,
// an in-progress key) stays until it expires unless the caller undoes it.
var ErrNotReplicated = errors.New("redisx: write not acknowledged by enough replicas")

// maxWaitRedirects bounds how often RunWait follows MOVED or ASK on Cluster.
const maxWaitRedirects = 8

// RunWait runs the script s on keys like Script.Run and, when w waits,
// sends WAIT on the same connection right after it (one pipeline, one
// round trip; on Cluster on the master that serves keys[0]). With w.All
// the pipeline also asks the master for its online replicas (ROLE) and, on
// the rare call that finds more than it waited for, waits again on the
// same connection. When wrote(reply) (never nil) reports that the script
// changed something that must be replicated, and fewer replicas than w
// asks for acknowledged it, or w.Fence does not confirm it, RunWait
// returns the reply together with an error wrapping ErrNotReplicated.
// Script errors are returned unclassified, as Script.Run returns them;
// pass them to Classify.
//
// WAIT is not sent through the client's routing because it must follow the
// write on one connection: go-redis pools connections, and on Cluster it
// would send a keyless WAIT to every shard.
func RunWait(ctx context.Context, c redis.UniversalClient, s *redis.Script, w Wait, wrote func(reply any) bool, keys []string, args ...any) (any, error) {
	if !w.enabled() {
		return s.Run(ctx, c, keys, args...).Result()
	}
	var r waitResult
	switch c := c.(type) {
	case *redis.ClusterClient:
		r = runWaitCluster(ctx, c, s, w, keys, args)
	case pipeliner:
		r = runWaitOn(ctx, c, s, w, false, keys, args)
	default:
		return nil, fmt.Errorf("redisx: WAIT needs one connection, and %T does not give one", c)
	}
	switch {
	case r.err != nil:
		return r.v, r.err
	case !wrote(r.v):
		return r.v, nil
	case r.waitErr != nil:
		return r.v, fmt.Errorf("%w: WAIT failed: %v; the write may remain on the master until it expires",
			ErrNotReplicated, r.waitErr)
	case w.All && r.online < int64(w.Min):
		return r.v, fmt.Errorf("%w: %d replicas online, %d required; the write may remain on the master until it expires",
			ErrNotReplicated, r.online, w.Min)
	case r.acked < r.need:
		return r.v, fmt.Errorf("%w: %d of %d replicas within %v; the write may remain on the master until it expires",
			ErrNotReplicated, r.acked, r.need, w.Timeout)
	case w.All && w.Fence != nil:
		if err := w.Fence.Confirm(ctx, r.node); err != nil {
			return r.v, fmt.Errorf("%w: %w; the write may remain on the master until it expires", ErrNotReplicated, err)
		}
	}
	return r.v, nil
}

// waitResult is the outcome of one script-then-WAIT pipeline.
type waitResult struct {
	v       any    // the script's reply
	err     error  // the script's error
	acked   int64  // WAIT's reply
	need    int64  // the acknowledgements required
	online  int64  // with All: the replicas ROLE reported online
	node    string // with a Fence: the master's address, as CLIENT INFO's laddr
	waitErr error  // WAIT's, ROLE's or CLIENT INFO's error
}

// pipeliner is what runs a pipeline on one connection: a *redis.Client
// (standalone, Sentinel, or one node of a Cluster).
type pipeliner interface {
	Pipeline() redis.Pipeliner
	Conn() *redis.Conn
	Options() *redis.Options
}

// onlineHint is, per master address, how many replicas ROLE last reported
// online: the number an All call's WAIT asks for. A stale hint costs one
// more WAIT (too few) or a wait to the timeout (too many), never safety:
// the answer is judged against ROLE's count on the same connection.
var onlineHint sync.Map // string -> int64

// runWaitOn sends [ASKING,] EVALSHA, WAIT as one pipeline of p (one
// connection), and again with EVAL when the script is not loaded there
// (after a restart or a failover the script cache is empty).
func runWaitOn(ctx context.Context, p pipeliner, s *redis.Script, w Wait, asking bool, keys []string, args []any) waitResult {
	if w.All {
		return runWaitAll(ctx, p, s, w, asking, keys, args)
	}
	var wait *redis.Cmd
	v, err := evalPipelined(ctx, p.Pipeline, s, asking, keys, args, func(pipe redis.Pipeliner) {
		wait = pipe.Do(ctx, "wait", w.Replicas, max(w.Timeout.Milliseconds(), 1))
	})
	if err != nil {
		return waitResult{v: v, err: err}
	}
	n, werr := wait.Int64()
	return waitResult{v: v, acked: n, need: int64(w.Replicas), waitErr: werr}
}

// runWaitAll is runWaitOn for Wait.All: on one connection it sends [ASKING,]
// EVALSHA (EVAL when not loaded), WAIT for the hinted number of replicas,
// ROLE and, with a Fence, CLIENT INFO; and WAIT again for the replicas
// ROLE reported online when the hint was lower.
func runWaitAll(ctx context.Context, p pipeliner, s *redis.Script, w Wait, asking bool, keys []string, args []any) waitResult {
	conn := p.Conn() // WAIT counts the writes of its own connection
	defer conn.Close()
	key := p.Options().Addr
	hint := int64(w.Min)
	if h, ok := onlineHint.Load(key); ok {
		hint = max(hint, h.(int64))
	}
	timeoutMS := max(w.Timeout.Milliseconds(), 1)
	var wait, role, info *redis.Cmd
	v, err := evalPipelined(ctx, conn.Pipeline, s, asking, keys, args, func(pipe redis.Pipeliner) {
		wait = pipe.Do(ctx, "wait", hint, timeoutMS)
		role = pipe.Do(ctx, "role")
		if w.Fence != nil {
			info = pipe.Do(ctx, "client", "info")
		}
	})
	if err != nil {
		return waitResult{v: v, err: err}
	}
	r := waitResult{v: v}
	if r.acked, r.waitErr = wait.Int64(); r.waitErr != nil {
		return r
	}
	if r.online, r.waitErr = onlineReplicas(role); r.waitErr != nil {
		return r
	}
	onlineHint.Store(key, r.online)
	if info != nil {
		if r.node, r.waitErr = laddr(info); r.waitErr != nil {
			return r
		}
	}
	r.need = max(r.online, int64(w.Min))
	if r.acked < r.need && hint < r.need {
		// A replica came online after the hint: wait for it too.
		r.acked, r.waitErr = conn.Do(ctx, "wait", r.need, timeoutMS).Int64()
	}
	return r
}

// evalPipelined sends one pipeline from newPipe (one connection): [ASKING,]
// the script as EVALSHA, then the commands more queues; and again with
// EVAL when the script is not loaded there (after a restart or a failover
// the script cache is empty), more queuing its commands anew. It returns
// the script's reply; the commands of more are read by the caller.
func evalPipelined(ctx context.Context, newPipe func() redis.Pipeliner, s *redis.Script, asking bool, keys []string, args []any, more func(redis.Pipeliner)) (any, error) {
	for _, sha := range []bool{true, false} {
		pipe := newPipe()
		if asking {
			pipe.Do(ctx, "asking")
		}
		var run *redis.Cmd
		if sha {
			run = s.EvalSha(ctx, pipe, keys, args...)
		} else {
			run = s.Eval(ctx, pipe, keys, args...)
		}
		more(pipe)
		_, _ = pipe.Exec(ctx) // errors are read per command
		v, err := run.Result()
		if sha && err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			continue
		}
		return v, err
	}
	panic("not reached")
}

// onlineReplicas reads a master's ROLE reply: the number of replicas it
// lists (those online). Any other role is an error: the node is no longer
// the master.
func onlineReplicas(role *redis.Cmd) (int64, error) {
	v, err := role.Result()
	if err != nil {
		return 0, err
	}
	a, _ := v.([]any)
	if len(a) < 3 || a[0] != "master" {
		return 0, fmt.Errorf("ROLE = %v: not a master", v)
	}
	replicas, _ := a[2].([]any)
	return int64(len(replicas)), nil
}

// laddr reads the laddr field (the server's own host:port on this
// connection) of a CLIENT INFO reply.
func laddr(info *redis.Cmd) (string, error) {
	v, err := info.Text()
	if err != nil {
		return "", err
	}
	for f := range strings.FieldsSeq(v) {
		if a, ok := strings.CutPrefix(f, "laddr="); ok {
			return a, nil
		}
	}
	return "", fmt.Errorf("CLIENT INFO without laddr: %q", v)
}

// runWaitCluster runs the pipeline on the master serving keys[0], and
// follows MOVED and ASK itself (the node's own client does not), so that
// WAIT always follows the write on the node that made it.
func runWaitCluster(ctx context.Context, cc *redis.ClusterClient, s *redis.Script, w Wait, keys []string, args []any) waitResult {
	node, err := cc.MasterForKey(ctx, keys[0])
	if err != nil {
		return waitResult{err: err}
	}
	asking := false
	for attempt := 0; ; attempt++ {
		r := runWaitOn(ctx, node, s, w, asking, keys, args)
		moved, ask, addr := redirect(r.err)
		if !moved && !ask || attempt == maxWaitRedirects {
			return r
		}
		if moved {
			cc.ReloadState(ctx)
		}
		asking = ask
		if node = masterAt(ctx, cc, addr); node == nil {
			// Not a known master yet: wait for the new slot map.
			if err := sleepCtx(ctx, time.Duration(attempt+1)*10*time.Millisecond); err != nil {
				return waitResult{err: err}
			}
			asking = false
			if node, err = cc.MasterForKey(ctx, keys[0]); err != nil {
				return waitResult{err: err}
			}
		}
	}
}

// redirect parses a MOVED or ASK reply.
func redirect(err error) (moved, ask bool, addr string) {
	var rerr redis.Error
	if err == nil || !errors.As(err, &rerr) {
		return false, false, ""
	}
	f := strings.Fields(rerr.Error())
	if len(f) != 3 {
		return false, false, ""
	}
	switch f[0] {
	case "MOVED":
		return true, false, f[2]
	case "ASK":
		return false, true, f[2]
	}
	return false, false, ""
}

// masterAt returns the client of the master at addr, or nil if the
// cluster client does not know one there.
func masterAt(ctx context.Context, cc *redis.ClusterClient, addr string) *redis.Client {
	ch := make(chan *redis.Client, 1) // ForEachMaster calls fn concurrently
	_ = cc.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		if c.Options().Addr == addr {
			select {
			case ch <- c:
			default:
			}
		}
		return nil
	})
	select {
	case c := <-ch:
		return c
	default:
		return nil
	}
}

// sleepCtx sleeps d or until ctx is done, returning ctx's error then.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
