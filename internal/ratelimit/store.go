// Package ratelimit is the sidecar's rate limiters: declared limiters
// (GCRA, sliding window, fixed window) counted per key in a Store, shared
// by every sidecar of a namespace on Redis, with a local answer for
// exhausted keys and a mode for when the store is down.
package ratelimit

import (
	"context"
	"errors"
	"math"
	"time"
)

// Result is a store's answer for one key.
type Result struct {
	// Allowed is whether the cost was taken (for Get: whether a cost of 1
	// would be).
	Allowed bool
	// Remaining is what the key holds after the call: the largest cost a
	// Take made now would be allowed.
	Remaining int64
	// Limit is the limiter's capacity (burst or limit).
	Limit int64
	// RetryAfter, when not Allowed, is how long until the cost fits if no
	// one else takes from the key.
	RetryAfter time.Duration
	// ResetAfter is how long until the key is back to its full capacity.
	ResetAfter time.Duration
	// Taken is what an allowed call took: its cost, or for a Lease up to
	// the lease's batch.
	Taken int64
	// Delay, for an allowed Reserve, is how long from now the take is
	// due: the caller must wait it out before acting on the admission.
	Delay time.Duration
}

// Store counts limiters' keys. Take takes cost (>= 1, at most the
// capacity) from key of limiter name with policy l, atomically, when it
// fits, by the store's own clock; Get answers the same without taking.
// Errors wrap store.ErrUnavailable when the store is unreachable.
type Store interface {
	Take(ctx context.Context, name, key string, l Limiter, cost int64) (Result, error)
	Get(ctx context.Context, name, key string, l Limiter) (Result, error)
}

// Reserver is a Store that books a take for later: Reserve takes
// cost now when it fits; otherwise, when it fits within wait, it takes it
// for the moment it fits (Result.Delay from now), so that later takes of
// the key, waiting or not, come after it (first come, first served across
// sidecars). Beyond wait it answers refused like Take, taking nothing.
type Reserver interface {
	Reserve(ctx context.Context, name, key string, l Limiter, cost int64, wait time.Duration) (Result, error)
}

// LeaseRequest is one store call of a leasing limiter: besides the call's
// own cost it asks for up to Batch-cost more tokens, recorded as unused
// under ID until TTL ends or the ID is listed in a later call's Done, and
// granted only while the key's unused leased tokens stay within Tolerance.
type LeaseRequest struct {
	Batch, Tolerance int64
	TTL              time.Duration
	ID               string
	Done             []string
}

// Leaser is a Store that leases (Limiter.Lease): Lease is Take that may
// take more than cost (Result.Taken), per q.
type Leaser interface {
	Lease(ctx context.Context, name, key string, l Limiter, cost int64, q LeaseRequest) (Result, error)
}

// ErrLimiterUnknown is the error for a limiter the configuration does not
// declare.
var ErrLimiterUnknown = errors.New("ratelimit: limiter unknown")

// usec is time in microseconds, the unit of every store's arithmetic.
func usec(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// fromUsec rounds microseconds up to a Duration (a retry hint is never
// early).
func fromUsec(us float64) time.Duration {
	if us <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(us)) * time.Microsecond
}

// eps absorbs floating-point error in the GCRA comparisons (1 ns).
const eps = 1e-3

// gcraStep is a GCRA decision and the key's theoretical arrival time
// (µs) after it.
type gcraStep struct {
	tat    float64 // the new TAT to store when allowed
	result Result
}

// gcra is the GCRA decision at now (µs) for a key whose stored TAT is
// tat, shared by the memory store and (as Lua) the Redis store. With wait
// (µs) > 0, a cost that fits within wait is reserved (allowed, Delay until
// it is due).
//
// The arithmetic is on d, the TAT's distance from now: absolute times in
// µs are near 2^51, where a float64 is only exact to 0.25µs, while the
// difference of two of them is exact.
func gcra(now, tat float64, l Limiter, cost int64, wait float64) gcraStep {
	t := usec(l.Period) / l.Rate
	tau := float64(l.Burst) * t
	d := max(tat-now, 0)
	nd := d + float64(cost)*t
	r := Result{Limit: l.Burst}
	if cost > 0 && wait > 0 && nd > tau+eps && nd-tau <= wait+eps {
		r.Allowed, r.Taken = true, cost
		r.Delay = fromUsec(nd - tau)
		r.ResetAfter = fromUsec(nd)
		return gcraStep{tat: now + nd, result: r}
	}
	if nd > tau+eps || cost == 0 && d+t > tau+eps {
		r.Remaining = max(0, int64(math.Floor((tau-d)/t+eps)))
		want := nd
		if cost == 0 {
			want = d + t
		}
		r.RetryAfter = fromUsec(want - tau)
		r.ResetAfter = fromUsec(d)
		return gcraStep{tat: now + d, result: r}
	}
	r.Allowed, r.Taken = true, cost
	r.Remaining = max(0, int64(math.Floor((tau-nd)/t+eps)))
	r.ResetAfter = fromUsec(nd)
	return gcraStep{tat: now + nd, result: r}
}
