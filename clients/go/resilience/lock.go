package resilience

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Lease is a held lock as the application sees it. Pass FencingToken to the
// resource the lock protects so it can refuse a stale holder.
type Lease struct {
	Key          string
	FencingToken uint64
	ExpireTime   time.Time
	Owner        string
}

// ErrNotAcquired is returned by WithLock when the wait ended without the
// lock. The error is a *NotAcquiredError telling who holds it.
var ErrNotAcquired = errors.New("resilience: lock not acquired")

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

// LockOption configures WithLock.
type LockOption func(*v1.HoldLockRequest_Acquire)

// WithTTL sets the lease TTL (default 10s); the sidecar renews it every
// TTL/3 while the session lives.
func WithTTL(d time.Duration) LockOption {
	return func(a *v1.HoldLockRequest_Acquire) { a.Ttl = durationpb.New(d) }
}

// WithWait makes WithLock wait up to d for a held lock (default: try once).
func WithWait(d time.Duration) LockOption {
	return func(a *v1.HoldLockRequest_Acquire) { a.WaitTimeout = durationpb.New(d) }
}

// WithOwner sets the label others see as the holder.
func WithOwner(owner string) LockOption {
	return func(a *v1.HoldLockRequest_Acquire) { a.Owner = owner }
}

// WithMaxHold bounds how long the sidecar keeps the lock for this session.
func WithMaxHold(d time.Duration) LockOption {
	return func(a *v1.HoldLockRequest_Acquire) { a.MaxHold = durationpb.New(d) }
}

// WithLock runs fn while holding key through a HoldLock session: the
// sidecar keeps the lease alive, and fn's context is cancelled (with cause
// ErrLeaseLost) the moment the lease is lost, so fn can stop writing. The
// lock is released when fn returns, and also by the sidecar if this process
// dies.
//
// It returns a *NotAcquiredError (errors.Is ErrNotAcquired) when the wait
// ended without the lock, fn's error otherwise, and an error matching
// ErrLeaseLost when the lease was lost while fn ran even if fn returned nil:
// the critical section may have run without exclusion.
func WithLock(ctx context.Context, c v1.LockServiceClient, key string, fn func(ctx context.Context, lease Lease) error, opts ...LockOption) error {
	acq := &v1.HoldLockRequest_Acquire{Key: key}
	for _, o := range opts {
		o(acq)
	}
	sessCtx, endSession := context.WithCancel(ctx)
	defer endSession()
	stream, err := c.HoldLock(sessCtx)
	if err != nil {
		return FromError(err)
	}
	if err := stream.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: acq}}); err != nil {
		return FromError(recvErr(stream, err))
	}
	first, err := stream.Recv()
	if err != nil {
		return FromError(err)
	}
	if na := first.GetNotAcquired(); na != nil {
		return &NotAcquiredError{Key: key, Holder: na.GetHolder().GetOwner(), Token: na.GetHolder().GetFencingToken()}
	}
	l := first.GetAcquired()
	if l == nil {
		return fmt.Errorf("resilience: unexpected first session event %v", first)
	}
	lease := Lease{Key: l.GetKey(), FencingToken: l.GetFencingToken(), ExpireTime: l.GetExpireTime().AsTime(), Owner: l.GetOwner()}

	fnCtx, cancelFn := context.WithCancelCause(ctx)
	defer cancelFn(nil)
	var (
		mu   sync.Mutex
		lost error
	)
	done := make(chan struct{})
	go func() { // the session's only reader; ends with the stream
		defer close(done)
		for {
			m, err := stream.Recv()
			var cause error
			switch {
			case err != nil:
				cause = fmt.Errorf("%w: session stream ended: %w", ErrLeaseLost, FromError(err))
			case m.GetLost() != nil:
				cause = fmt.Errorf("%w: %s (%s)", ErrLeaseLost, m.GetLost().GetMessage(), m.GetLost().GetReason())
			case m.GetReleased() != nil:
				return
			default:
				continue
			}
			mu.Lock()
			lost = cause
			mu.Unlock()
			cancelFn(cause)
			return
		}
	}()

	fnErr := fn(fnCtx, lease)
	_ = stream.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Release_{Release: &v1.HoldLockRequest_Release{}}})
	<-done
	mu.Lock()
	defer mu.Unlock()
	if lost != nil {
		if fnErr != nil {
			return errors.Join(fnErr, lost)
		}
		return lost
	}
	return fnErr
}

// recvErr returns the stream's status when Send failed because the stream
// ended (Send reports only io.EOF then).
func recvErr(stream v1.LockService_HoldLockClient, sendErr error) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return sendErr
}
