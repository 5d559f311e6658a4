package redisx

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Wait is how much replication a store asks for after the writes that hand
// out ownership (a lock grant, an idempotency key started): Redis WAIT for
// Replicas replicas, for at most Timeout. The zero value does not wait.
//
// WAIT narrows, but does not close, the window in which a failover loses an
// acknowledged write: a replica that acknowledged is not necessarily the
// one promoted (Sentinel and Cluster promote the most up-to-date replica
// they can reach, which usually is), and a write whose WAIT fell short may
// still exist on the master. Fencing tokens remain the safety net.
type Wait struct {
	Replicas int
	Timeout  time.Duration
}

// ErrNotReplicated is returned (wrapped) when a write was made on the
// master but fewer replicas than Wait.Replicas acknowledged it in time.
// The write may survive or may be lost in a failover: the caller must treat
// the operation as failed (Classify makes it store.ErrNotReplicated, a kind
// of store.ErrUnavailable: REPLICATION_SHORTFALL at the API edge), and
// what it wrote (a lock grant, an in-progress key) stays until it expires
// unless the caller undoes it.
var ErrNotReplicated = errors.New("redisx: write not acknowledged by enough replicas")

// maxWaitRedirects bounds how often RunWait follows MOVED or ASK on Cluster.
const maxWaitRedirects = 8

// RunWait runs the script s on keys like Script.Run and, when w.Replicas is
// positive, sends WAIT w.Replicas w.Timeout on the same connection right
// after it (one pipeline, one round trip; on Cluster on the master that
// serves keys[0]). When wrote(reply) (never nil) reports that the script
// changed something that must be replicated, and fewer than w.Replicas
// replicas acknowledged it, RunWait returns the reply together with an
// error wrapping ErrNotReplicated. Script errors are returned unclassified, as
// Script.Run returns them; pass them to Classify.
//
// WAIT is not sent through the client's routing because it must follow the
// write on one connection: go-redis pools connections, and on Cluster it
// would send a keyless WAIT to every shard.
func RunWait(ctx context.Context, c redis.UniversalClient, s *redis.Script, w Wait, wrote func(reply any) bool, keys []string, args ...any) (any, error) {
	if w.Replicas <= 0 {
		return s.Run(ctx, c, keys, args...).Result()
	}
	var r waitResult
	if cc, ok := c.(*redis.ClusterClient); ok {
		r = runWaitCluster(ctx, cc, s, w, keys, args)
	} else {
		r = runWaitOn(ctx, c, s, w, false, keys, args)
	}
	switch {
	case r.err != nil:
		return r.v, r.err
	case !wrote(r.v):
		return r.v, nil
	case r.waitErr != nil:
		return r.v, fmt.Errorf("%w: WAIT failed: %v; the write may remain on the master until it expires",
			ErrNotReplicated, r.waitErr)
	case r.acked < int64(w.Replicas):
		return r.v, fmt.Errorf("%w: %d of %d replicas within %v; the write may remain on the master until it expires",
			ErrNotReplicated, r.acked, w.Replicas, w.Timeout)
	}
	return r.v, nil
}

// waitResult is the outcome of one script-then-WAIT pipeline.
type waitResult struct {
	v       any   // the script's reply
	err     error // the script's error
	acked   int64 // WAIT's reply
	waitErr error // WAIT's error
}

// pipeliner is what runs a pipeline on one connection: a *redis.Client
// (standalone, Sentinel, or one node of a Cluster).
type pipeliner interface {
	Pipeline() redis.Pipeliner
}

// runWaitOn sends [ASKING,] EVALSHA, WAIT as one pipeline of p (one
// connection), and again with EVAL when the script is not loaded there
// (after a restart or a failover the script cache is empty).
func runWaitOn(ctx context.Context, p pipeliner, s *redis.Script, w Wait, asking bool, keys []string, args []any) waitResult {
	for _, sha := range []bool{true, false} {
		pipe := p.Pipeline()
		if asking {
			pipe.Do(ctx, "asking")
		}
		var run *redis.Cmd
		if sha {
			run = s.EvalSha(ctx, pipe, keys, args...)
		} else {
			run = s.Eval(ctx, pipe, keys, args...)
		}
		wait := pipe.Do(ctx, "wait", w.Replicas, max(w.Timeout.Milliseconds(), 1))
		_, _ = pipe.Exec(ctx) // errors are read per command below
		v, err := run.Result()
		if sha && err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			continue
		}
		if err != nil {
			return waitResult{v: v, err: err}
		}
		n, werr := wait.Int64()
		return waitResult{v: v, acked: n, waitErr: werr}
	}
	panic("not reached")
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
