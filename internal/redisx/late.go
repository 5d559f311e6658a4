package redisx

import (
	"context"
	"time"
)

// LateGrace is how long after its caller gave up (by the sidecar's clock) a
// granting script may still grant (by Redis's clock): it covers a clock
// difference between the two. Revocations are kept as long, so that they
// outlive every grant they must defeat (handback).
const LateGrace = 5 * time.Second

// Latest returns the time, in Unix ms, after which a granting script sent
// now for ctx, on a store whose calls last at most timeout, must grant
// nothing: its caller has given up. Scripts compare it with Redis TIME.
func Latest(ctx context.Context, timeout time.Duration) int64 {
	latest := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(latest) {
		latest = d
	}
	return latest.Add(LateGrace).UnixMilli()
}

// RevocationKeep returns the time, in Unix ms, until which a revocation
// made now must be kept: no Latest of a script sent before it is later.
func RevocationKeep(timeout time.Duration) int64 {
	return time.Now().Add(timeout + LateGrace).UnixMilli()
}

// RevokeLua is the Lua of a revocation, for the stores' revoke scripts to
// include: revoke(zkey, id, keep, now) remembers id in the sorted set zkey
// until keep (ms, as RevocationKeep; now is Redis TIME in ms), forgetting
// the entries past, so that a grant to id still on its way (its script
// refuses ids in zkey) is refused; the set expires with its last entry.
const RevokeLua = `
local function revoke(zkey, id, keep, now)
  if keep <= now then return end
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now)
  redis.call('ZADD', zkey, keep, id)
  if redis.call('PTTL', zkey) < keep - now then redis.call('PEXPIRE', zkey, keep - now) end
end
`
