package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// Bounds of the lock API (DESIGN.md section 4, Locks).
const (
	DefaultLockTTL = 10 * time.Second
	MinLockTTL     = 100 * time.Millisecond
	MaxLockTTL     = 24 * time.Hour
	MaxLockWait    = 5 * time.Minute
)

// releaseTimeout bounds releases done on the client's behalf after its
// stream is gone.
const releaseTimeout = 2 * time.Second

// LockServer implements resiliencev1.LockServiceServer.
type LockServer struct {
	v1.UnimplementedLockServiceServer
	svc *lock.Service
	log *slog.Logger
	// stopping is cancelled when the sidecar shuts down: waits end and
	// sessions release their locks.
	stopping context.Context
	metrics  *metrics.Metrics
}

// NewLockServer serves svc. Calls in flight when stopping is cancelled end
// promptly: waits with UNAVAILABLE, sessions by releasing their lock.
func NewLockServer(stopping context.Context, svc *lock.Service, log *slog.Logger, opts ...Option) *LockServer {
	o := applyOptions(opts)
	return &LockServer{svc: svc, log: log, stopping: stopping, metrics: o.metrics}
}

// observeAcquire records an acquisition's outcome: acquired, busy (a try
// found it held) or timeout (a wait ended without it).
func (s *LockServer) observeAcquire(ok bool, wait time.Duration, start time.Time) {
	result := metrics.LockAcquired
	switch {
	case ok:
	case wait > 0:
		result = metrics.LockTimeout
	default:
		result = metrics.LockBusy
	}
	s.metrics.ObserveLockAcquire(result, wait > 0, time.Since(start))
}

func (s *LockServer) fail(ctx context.Context, err error) error {
	if errors.Is(err, lock.ErrShutdown) || s.stopping.Err() != nil && errors.Is(err, context.Canceled) {
		err = errShuttingDown
	}
	return toStatus(ctx, s.log, err)
}

// ValidateAcquireLock checks an AcquireLockRequest and returns its options.
func ValidateAcquireLock(r *v1.AcquireLockRequest) (lock.AcquireOptions, error) {
	var v violations
	v.key("key", r.GetKey())
	v.label("owner", r.GetOwner())
	opts := lock.AcquireOptions{
		TTL:   v.duration("ttl", r.GetTtl(), DefaultLockTTL, MinLockTTL, MaxLockTTL),
		Wait:  v.duration("wait_timeout", r.GetWaitTimeout(), 0, 0, MaxLockWait),
		Owner: r.GetOwner(),
	}
	return opts, v.err()
}

// AcquireLock implements LockServiceServer.
func (s *LockServer) AcquireLock(ctx context.Context, r *v1.AcquireLockRequest) (*v1.AcquireLockResponse, error) {
	opts, err := ValidateAcquireLock(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	opts.Stop = s.stopping.Done()
	start := time.Now()
	lease, holder, ok, err := s.svc.Acquire(ctx, r.GetKey(), opts)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.observeAcquire(ok, opts.Wait, start)
	if !ok {
		return &v1.AcquireLockResponse{Holder: holderPB(holder)}, nil
	}
	return &v1.AcquireLockResponse{Acquired: true, Lease: leasePB(lease)}, nil
}

// ValidateReleaseLock checks a ReleaseLockRequest.
func ValidateReleaseLock(r *v1.ReleaseLockRequest) error {
	var v violations
	v.key("key", r.GetKey())
	v.leaseID("lease_id", r.GetLeaseId())
	return v.err()
}

// ReleaseLock implements LockServiceServer.
func (s *LockServer) ReleaseLock(ctx context.Context, r *v1.ReleaseLockRequest) (*v1.ReleaseLockResponse, error) {
	if err := ValidateReleaseLock(r); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := s.svc.Release(ctx, r.GetKey(), r.GetLeaseId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.ReleaseLockResponse{}, nil
}

// ValidateRenewLock checks a RenewLockRequest and returns the ttl.
func ValidateRenewLock(r *v1.RenewLockRequest) (time.Duration, error) {
	var v violations
	v.key("key", r.GetKey())
	v.leaseID("lease_id", r.GetLeaseId())
	ttl := v.duration("ttl", r.GetTtl(), DefaultLockTTL, MinLockTTL, MaxLockTTL)
	return ttl, v.err()
}

// RenewLock implements LockServiceServer.
func (s *LockServer) RenewLock(ctx context.Context, r *v1.RenewLockRequest) (*v1.RenewLockResponse, error) {
	ttl, err := ValidateRenewLock(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	exp, err := s.svc.Renew(ctx, r.GetKey(), r.GetLeaseId(), ttl)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.RenewLockResponse{ExpireTime: timestamppb.New(exp)}, nil
}

// GetLock implements LockServiceServer.
func (s *LockServer) GetLock(ctx context.Context, r *v1.GetLockRequest) (*v1.GetLockResponse, error) {
	var v violations
	v.key("key", r.GetKey())
	if err := v.err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	info, err := s.svc.Get(ctx, r.GetKey())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &v1.GetLockResponse{Held: info.Held, LastFencingToken: info.LastFencingToken}
	if info.Held {
		resp.Holder = holderPB(info.Holder)
	}
	return resp, nil
}

// ValidateHoldLock checks the opening message of a HoldLock session.
func ValidateHoldLock(r *v1.HoldLockRequest) (lock.HoldOptions, error) {
	var v violations
	a := r.GetAcquire()
	if a == nil {
		v.add("acquire", "the first message of a session must be acquire")
		return lock.HoldOptions{}, v.err()
	}
	v.key("acquire.key", a.GetKey())
	v.label("acquire.owner", a.GetOwner())
	opts := lock.HoldOptions{
		AcquireOptions: lock.AcquireOptions{
			TTL:   v.duration("acquire.ttl", a.GetTtl(), DefaultLockTTL, MinLockTTL, MaxLockTTL),
			Wait:  v.duration("acquire.wait_timeout", a.GetWaitTimeout(), 0, 0, MaxLockWait),
			Owner: a.GetOwner(),
		},
	}
	// max_hold: 0 (or unset) means no bound; otherwise 100ms-24h.
	opts.MaxHold = v.duration("acquire.max_hold", a.GetMaxHold(), 0, 0, MaxLockTTL)
	if opts.MaxHold > 0 && opts.MaxHold < MinLockTTL {
		v.add("acquire.max_hold", "must be 0 (no bound) or between %v and %v, got %v", MinLockTTL, MaxLockTTL, opts.MaxHold)
	}
	return opts, v.err()
}

// HoldLock implements LockServiceServer. The session's lock is released
// when the client sends release, the stream ends for any reason, or the
// sidecar shuts down; the client is told which with `released` or `lost`.
func (s *LockServer) HoldLock(stream v1.LockService_HoldLockServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	opts, err := ValidateHoldLock(first)
	if err != nil {
		return s.fail(ctx, err)
	}
	opts.Stop = s.stopping.Done()
	start := time.Now()
	sess, holder, ok, err := s.svc.Hold(ctx, first.GetAcquire().GetKey(), opts)
	if err != nil {
		return s.fail(ctx, err)
	}
	s.observeAcquire(ok, opts.Wait, start)
	if !ok {
		return stream.Send(&v1.HoldLockResponse{Event: &v1.HoldLockResponse_NotAcquired_{
			NotAcquired: &v1.HoldLockResponse_NotAcquired{Holder: holderPB(holder)}}})
	}
	release := func() error {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		return sess.Release(rctx)
	}
	defer release() //nolint:errcheck // idempotent; the explicit paths report its error
	s.metrics.LockSessionHeld(1)
	defer s.metrics.LockSessionHeld(-1)
	if err := stream.Send(&v1.HoldLockResponse{Event: &v1.HoldLockResponse_Acquired{Acquired: leasePB(sess.Lease())}}); err != nil {
		return err
	}

	return serveSession(ctx, s.stopping, sess, release, sessionStream[*v1.HoldLockRequest]{
		recv:      stream.Recv,
		isRelease: func(m *v1.HoldLockRequest) bool { return m.GetRelease() != nil },
		renewed: func(exp time.Time) error {
			return stream.Send(&v1.HoldLockResponse{Event: &v1.HoldLockResponse_Renewed_{
				Renewed: &v1.HoldLockResponse_Renewed{ExpireTime: timestamppb.New(exp)}}})
		},
		lost: func(err error) error { return stream.Send(lostPB(err)) },
		released: func() error {
			return stream.Send(&v1.HoldLockResponse{Event: &v1.HoldLockResponse_Released_{Released: &v1.HoldLockResponse_Released{}}})
		},
		leaseLost: lock.ErrLeaseLost,
		held:      "the lock",
	}, s.fail, lock.ErrShutdown)
}

func lostPB(err error) *v1.HoldLockResponse {
	reason := v1.HoldLockResponse_Lost_REASON_LEASE_LOST
	msg := "lease lost: it expired or was taken; stop the critical section"
	switch {
	case errors.Is(err, lock.ErrMaxHold):
		reason, msg = v1.HoldLockResponse_Lost_REASON_MAX_HOLD, "max_hold reached: the sidecar released the lock"
	case errors.Is(err, lock.ErrShutdown):
		reason, msg = v1.HoldLockResponse_Lost_REASON_SHUTDOWN, "the sidecar is shutting down and released the lock"
	case errors.Is(err, store.ErrUnavailable):
		reason, msg = v1.HoldLockResponse_Lost_REASON_STORE_UNAVAILABLE, "the store was unreachable until the lease expired"
	}
	return &v1.HoldLockResponse{Event: &v1.HoldLockResponse_Lost_{Lost: &v1.HoldLockResponse_Lost{Reason: reason, Message: msg}}}
}

func leasePB(l lock.Lease) *v1.Lease {
	return &v1.Lease{Key: l.Key, LeaseId: l.LeaseID, FencingToken: l.FencingToken, ExpireTime: timestamppb.New(l.ExpireTime), Owner: l.Owner}
}

func holderPB(h lock.Holder) *v1.Holder {
	if h == (lock.Holder{}) {
		return nil
	}
	return &v1.Holder{Owner: h.Owner, FencingToken: h.FencingToken, ExpireTime: timestamppb.New(h.ExpireTime)}
}
