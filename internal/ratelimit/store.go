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
}

// Store counts limiters' keys. Take takes cost (>= 1, at most the
// capacity) from key of limiter name with policy l, atomically, when it
// fits, by the store's own clock; Get answers the same without taking.
// Errors wrap store.ErrUnavailable when the store is unreachable.
type Store interface {
	Take(ctx context.Context, name, key string, l Limiter, cost int64) (Result, error)
	Get(ctx context.Context, name, key string, l Limiter) (Result, error)
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
// tat, shared by the memory store and (as Lua) the Redis store.
//
// The arithmetic is on d, the TAT's distance from now: absolute times in
// µs are near 2^51, where a float64 is only exact to 0.25µs, while the
// difference of two of them is exact.
func gcra(now, tat float64, l Limiter, cost int64) gcraStep {
	t := usec(l.Period) / l.Rate
	tau := float64(l.Burst) * t
	d := max(tat-now, 0)
	nd := d + float64(cost)*t
	r := Result{Limit: l.Burst}
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
	r.Allowed = true
	r.Remaining = max(0, int64(math.Floor((tau-nd)/t+eps)))
	r.ResetAfter = fromUsec(nd)
	return gcraStep{tat: now + nd, result: r}
}
