package resilience

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Lease is a held lock as the application sees it. Pass FencingToken to the
// resource the lock protects so it can refuse a stale holder.
type Lease struct {
	Key          string
	FencingToken uint64
	// ExpireTime is the grant's expiry by the sidecar's clock, for
	// display: the client decides by its own clock (see WithLock).
	ExpireTime time.Time
	Owner      string
}

// ErrNotAcquired is returned by WithLock and Mutex.Lock when the wait
// ended without the lock. The error is a *NotAcquiredError telling who
// holds it.
var ErrNotAcquired = errors.New("resilience: lock not acquired")

// ErrReleaseUnconfirmed is matched by the error of WithLock and
// Mutex.Unlock when the sidecar did not confirm the release in time (it is
// frozen, or gone): the lock then expires on its own within its TTL.
var ErrReleaseUnconfirmed = errors.New("resilience: lock release not confirmed (the lease expires on its own)")

// ErrNotLocked is returned by Mutex.Unlock and Mutex.Extend on a Mutex
// that holds no lease.
var ErrNotLocked = errors.New("resilience: mutex not locked")

// NotAcquiredError reports the holder of a lock that was not acquired.
type NotAcquiredError struct {
	Key    string
	Holder string // the holder's owner label
	Token  uint64 // the holder's fencing token
}

func (e *NotAcquiredError) Error() string {
	return fmt.Sprintf("resilience: lock %q not acquired: held by %q", e.Key, e.Holder)
}

// Is matches ErrNotAcquired.
func (e *NotAcquiredError) Is(target error) bool { return target == ErrNotAcquired }

// Lost reasons of a LeaseLostError found by the client itself. The others
// are the sidecar's (v1.HoldLockResponse_Lost_Reason without "REASON_":
// LEASE_LOST, MAX_HOLD, SHUTDOWN, STORE_UNAVAILABLE).
const (
	// LostRenewalOverdue: no grant or renewal confirmation arrived before
	// the lease's local deadline (see WithLock).
	LostRenewalOverdue = "RENEWAL_OVERDUE"
	// LostStreamEnded: the session's stream ended before the release (the
	// sidecar was killed, the connection broke, ctx was cancelled).
	LostStreamEnded = "STREAM_ENDED"
)

// LeaseLostError says why and when a lease was lost. It matches
// ErrLeaseLost, and unwraps to the stream's error for STREAM_ENDED.
type LeaseLostError struct {
	what string // "lock" (when empty) or "permit"
	// Key is the lock's key, or the bulkhead's name for a permit.
	Key string
	// Reason is LostRenewalOverdue, LostStreamEnded or the sidecar's.
	Reason  string
	Message string
	// LastConfirmed is when this process received the grant or the last
	// renewal confirmation (a time.Now reading: monotonic).
	LastConfirmed time.Time
	// Err is the stream's error (STREAM_ENDED) or the sidecar's
	// LEASE_LOST error (Mutex); nil otherwise.
	Err error
}

func (e *LeaseLostError) Error() string {
	what := e.what
	if what == "" {
		what = "lock"
	}
	msg := fmt.Sprintf("resilience: lease lost: %s %q: %s (%s)", what, e.Key, e.Message, e.Reason)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is matches ErrLeaseLost.
func (e *LeaseLostError) Is(target error) bool { return target == ErrLeaseLost }

// Unwrap returns Err.
func (e *LeaseLostError) Unwrap() error { return e.Err }

// DefaultLockTTL is the lease TTL of WithLock and Mutex without WithTTL.
const DefaultLockTTL = 10 * time.Second

// minLeaseMargin is the least margin taken off the TTL for the local
// deadline.
const minLeaseMargin = 100 * time.Millisecond

// leaseLifetime is how long after receiving a grant or a renewal
// confirmation the client holds the lease by its own clock: ttl minus a
// margin of max(ttl/10, 100ms) for the time the confirmation took to
// arrive and for clock rate differences. It is the same rule in every
// client (clients/CONTRACT.md).
func leaseLifetime(ttl time.Duration) time.Duration {
	return ttl - max(ttl/10, minLeaseMargin)
}

// LockOption configures WithLock and Mutex.
type LockOption func(*lockOptions)

type lockOptions struct {
	ttl, wait, maxHold, callTimeout time.Duration
	owner                           string
}

func newLockOptions(opts []LockOption) lockOptions {
	o := lockOptions{ttl: DefaultLockTTL, callTimeout: DefaultCallTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithTTL sets the lease TTL (DefaultLockTTL; 100ms-24h). A WithLock
// session is renewed by the sidecar every TTL/3; a Mutex by Extend.
func WithTTL(d time.Duration) LockOption {
	return func(o *lockOptions) { o.ttl = d }
}

// WithWait makes acquiring wait up to d for a held lock (default: try
// once; at most 5m).
func WithWait(d time.Duration) LockOption {
	return func(o *lockOptions) { o.wait = d }
}

// WithOwner sets the label others see as the holder.
func WithOwner(owner string) LockOption {
	return func(o *lockOptions) { o.owner = owner }
}

// WithMaxHold bounds how long the sidecar keeps the lock for a WithLock
// session (a Mutex ignores it).
func WithMaxHold(d time.Duration) LockOption {
	return func(o *lockOptions) { o.maxHold = d }
}

// WithLockCallTimeout bounds the lock's calls when ctx has no deadline
// (DefaultCallTimeout): acquiring waits at most the WithWait time plus
// this, and a release or an Extend at most this (WithLock's release also
// at most until the lease's local deadline). 0 removes the bound.
func WithLockCallTimeout(d time.Duration) LockOption {
	return func(o *lockOptions) { o.callTimeout = d }
}

// optDuration is d as a proto Duration, nil for 0 (the sidecar's default).
func optDuration(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// bounded returns ctx with a deadline d away when it has none.
func bounded(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || d <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// deadlineError is the DEADLINE_EXCEEDED *Error a lock helper returns when
// its own bound passed.
func deadlineError(format string, args ...any) error {
	return FromError(status.Errorf(codes.DeadlineExceeded, format, args...))
}
