package redisx

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Runner runs one store's scripts the same way everywhere: each call is
// bounded by Timeout, a durable write is followed by WAIT (Wait), a script
// Redis forgot (NOSCRIPT, after a restart or a failover) is sent again by
// body, and every error is classified (Classify) against the caller's
// context. The zero Wait does not wait.
type Runner struct {
	Client  redis.UniversalClient
	Timeout time.Duration
	Wait    Wait
}

// Run runs s on keys and returns its reply.
func (r Runner) Run(ctx context.Context, s *redis.Script, keys []string, args ...any) (any, error) {
	sctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	var v any
	err := untilSettled(sctx, func() (err error) {
		v, err = s.Run(sctx, r.Client, keys, args...).Result()
		return err
	})
	return v, Classify(ctx, err)
}

// RunDurable is Run for a write that must reach Wait.Replicas replicas
// when wrote(reply) says it changed something (RunWait).
func (r Runner) RunDurable(ctx context.Context, s *redis.Script, wrote func(any) bool, keys []string, args ...any) (any, error) {
	sctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	var v any
	err := untilSettled(sctx, func() (err error) {
		v, err = RunWait(sctx, r.Client, s, r.Wait, wrote, keys, args...)
		return err
	})
	return v, Classify(ctx, err)
}

// settleBackoff is the pause before the attempt-th retry of a TRYAGAIN.
func settleBackoff(attempt int) time.Duration {
	return min(time.Duration(attempt)*5*time.Millisecond, 50*time.Millisecond)
}

// untilSettled runs try again while it fails with TRYAGAIN, which Redis
// Cluster answers, without running anything, to a command whose keys are
// split between two nodes while their slot migrates; the migration ends
// within milliseconds. It stops when ctx ends. Nothing else is retried: a
// script that may have run is never sent twice (noRetryHook).
func untilSettled(ctx context.Context, try func() error) error {
	for attempt := 1; ; attempt++ {
		err := try()
		if !redis.HasErrorPrefix(err, "TRYAGAIN") {
			return err
		}
		if sleepCtx(ctx, settleBackoff(attempt)) != nil {
			return err
		}
	}
}

// Call is one call of a script in RunMany.
type Call struct {
	Keys []string
	Args []any
}

// Reply is the outcome of one Call: the script's reply, or its classified
// error.
type Reply struct {
	Val any
	Err error
}

// RunMany runs s once per call in one pipeline (on Cluster, one per node),
// bounded by Timeout as a whole, and returns one reply per call, in order.
// Each call is atomic on its own, the batch is not.
func (r Runner) RunMany(ctx context.Context, s *redis.Script, calls []Call) []Reply {
	sctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	cmds := make([]*redis.Cmd, len(calls))
	pipe := r.Client.Pipeline()
	for i, c := range calls {
		cmds[i] = s.EvalSha(sctx, pipe, c.Keys, c.Args...)
	}
	_, _ = pipe.Exec(sctx) // errors are read per command
	// Calls Redis did not run: the script was missing (NOSCRIPT, after a
	// restart) or its slot was migrating (TRYAGAIN). Send them again, by
	// body, until they run or ctx ends.
	for attempt := 1; ; attempt++ {
		var again []int
		for i, c := range cmds {
			if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") || redis.HasErrorPrefix(c.Err(), "TRYAGAIN") {
				again = append(again, i)
			}
		}
		if len(again) == 0 || attempt > 1 && sleepCtx(sctx, settleBackoff(attempt)) != nil {
			break
		}
		pipe := r.Client.Pipeline()
		for _, i := range again {
			cmds[i] = s.Eval(sctx, pipe, calls[i].Keys, calls[i].Args...)
		}
		_, _ = pipe.Exec(sctx)
	}
	out := make([]Reply, len(calls))
	for i, c := range cmds {
		v, err := c.Result()
		out[i] = Reply{Val: v, Err: Classify(ctx, err)}
	}
	return out
}
