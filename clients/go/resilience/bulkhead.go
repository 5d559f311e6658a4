package resilience

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Permit is a held bulkhead permit as the application sees it. Pass
// FencingToken to a resource that must never serve more than the limit.
type Permit struct {
	// Name is the bulkhead's (the semaphore's) name.
	Name         string
	FencingToken uint64
	// ExpireTime is the grant's expiry by the sidecar's clock, for
	// display: the client decides by its own clock (see WithPermit).
	ExpireTime time.Time
	Owner      string
}

// ErrBulkheadFull is matched by the *BulkheadFullError of WithPermit when
// the wait ended without a free permit.
var ErrBulkheadFull = errors.New("resilience: bulkhead full")

// BulkheadFullError reports a permit not acquired, as resilience4j's
// BulkheadFullException: Held of Limit permits were live.
type BulkheadFullError struct {
	Name        string
	Held, Limit uint32
}

func (e *BulkheadFullError) Error() string {
	return fmt.Sprintf("resilience: bulkhead %q full: %d of %d permits held", e.Name, e.Held, e.Limit)
}

// Is matches ErrBulkheadFull.
func (e *BulkheadFullError) Is(target error) bool { return target == ErrBulkheadFull }

// WithPermit runs fn while holding one of limit permits of the bulkhead
// name (a semaphore shared by every sidecar), through a HoldPermit
// session. A permit is a lease and gets exactly WithLock's safety, with
// the same options (WithTTL, WithWait, WithOwner, WithMaxHold,
// WithLockCallTimeout): the sidecar renews it every TTL/3 and gives it
// back if this process dies; fn's context is cancelled with a
// *LeaseLostError (errors.Is ErrLeaseLost) the moment the permit is lost,
// by the sidecar's word or by this process's clock (RENEWAL_OVERDUE: no
// renewal received for TTL minus max(TTL/10, 100ms)), so that fn stops
// before the permit expires in the store and another caller takes it.
//
// It never hangs: acquiring is bounded by ctx's deadline or, when ctx has
// none, by the WithWait time plus WithLockCallTimeout (then
// ErrDeadlineExceeded), and the release after fn by the permit's local
// deadline or WithLockCallTimeout (then ErrReleaseUnconfirmed).
//
// It returns a *BulkheadFullError (errors.Is ErrBulkheadFull) when the
// wait (default: none) ended without a permit, fn's error otherwise, and a
// *LeaseLostError (joined with fn's error, if any) when the permit was lost
// while fn ran, even if fn returned nil: the bulkhead's bound may not have
// held for fn.
func WithPermit(ctx context.Context, c v1.SemaphoreServiceClient, name string, limit uint32, fn func(ctx context.Context, p Permit) error, opts ...LockOption) error {
	o := newLockOptions(opts)
	s, err := openPermitSession(ctx, c, name, limit, o)
	if err != nil {
		return err
	}
	defer s.close()
	p := Permit{Name: s.lease.Key, FencingToken: s.lease.FencingToken, ExpireTime: s.lease.ExpireTime, Owner: s.lease.Owner}
	return s.release(fn(s.ctx, p))
}

// openPermitSession opens a HoldPermit stream and acquires a permit,
// bounded as WithLock's acquire.
func openPermitSession(ctx context.Context, c v1.SemaphoreServiceClient, name string, limit uint32, o lockOptions) (*session, error) {
	var stream v1.SemaphoreService_HoldPermitClient
	first, now, end, err := boundedAcquire(ctx, o, fmt.Sprintf("bulkhead %q", name), func(ctx context.Context, wait time.Duration) (*v1.HoldPermitResponse, error) {
		var err error
		stream, err = c.HoldPermit(ctx)
		if err != nil {
			return nil, err
		}
		a := &v1.HoldPermitRequest_Acquire{
			Name: name, Limit: limit, Ttl: optDuration(o.ttl), WaitTimeout: optDuration(wait), Owner: o.owner, MaxHold: optDuration(o.maxHold),
		}
		if err := stream.Send(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Acquire_{Acquire: a}}); err != nil {
			return nil, recvErr(stream, err)
		}
		return stream.Recv()
	})
	if err != nil {
		return nil, err
	}
	if na := first.GetNotAcquired(); na != nil {
		end(nil)
		return nil, &BulkheadFullError{Name: name, Held: na.GetHeld(), Limit: na.GetLimit()}
	}
	p := first.GetAcquired()
	if p == nil {
		end(nil)
		return nil, fmt.Errorf("resilience: bulkhead %q: unexpected first session event %v", name, first)
	}
	lease := Lease{Key: p.GetName(), FencingToken: p.GetFencingToken(), ExpireTime: p.GetExpireTime().AsTime(), Owner: p.GetOwner()}
	return startSession(ctx, "permit", permitStream{stream}, end, lease, o, now), nil
}

// permitStream is a HoldPermit stream as a holdStream.
type permitStream struct {
	v1.SemaphoreService_HoldPermitClient
}

func (s permitStream) recv() (holdEvent, error) {
	m, err := s.Recv()
	if err != nil {
		return holdEvent{}, err
	}
	l := m.GetLost()
	return holdEvent{
		renewed: m.GetRenewed() != nil, released: m.GetReleased() != nil, lost: l != nil,
		reason: strings.TrimPrefix(l.GetReason().String(), "REASON_"), message: l.GetMessage(),
	}, nil
}

func (s permitStream) sendRelease() error {
	return s.Send(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Release_{Release: &v1.HoldPermitRequest_Release{}}})
}
