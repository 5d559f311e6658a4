package redisx

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// noRetryHook keeps go-redis from sending a script again by itself. A
// ClusterClient retries a command after a timeout or a closed connection,
// and, when the first command of a pipeline fails with TRYAGAIN, LOADING
// or the like, every command of that pipeline, including scripts that
// already ran. A script is not idempotent: a lock release that runs twice
// reports LEASE_LOST for a lock it did release, and an acquisition that
// runs again after its caller was told UNAVAILABLE grants a lock nobody
// knows of. So a script runs at most once per call; its error goes to the
// store, which classifies it (Classify) and gives back what it may have
// granted. MOVED and ASK, which mean the script did not run, are still
// followed.
type noRetryHook struct{}

// noRetryCmd is a script call go-redis must not retry.
type noRetryCmd struct{ *redis.Cmd }

// NoRetry implements redis.Cmder.
func (noRetryCmd) NoRetry() bool { return true }

// asNoRetry returns cmd marked as not to be retried when it is a script.
func asNoRetry(cmd redis.Cmder) redis.Cmder {
	if c, ok := cmd.(*redis.Cmd); ok && isScript(c) {
		return noRetryCmd{c}
	}
	return cmd
}

// scriptCmd returns the script call behind cmd, marked or not.
func scriptCmd(cmd redis.Cmder) (*redis.Cmd, bool) {
	switch c := cmd.(type) {
	case *redis.Cmd:
		return c, isScript(c)
	case noRetryCmd:
		return c.Cmd, true
	}
	return nil, false
}

func (noRetryHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (noRetryHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		return next(ctx, asNoRetry(cmd))
	}
}

func (noRetryHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		marked := make([]redis.Cmder, len(cmds))
		for i, c := range cmds {
			marked[i] = asNoRetry(c)
		}
		return next(ctx, marked)
	}
}
