package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/semaphore"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// Bounds of the semaphore API (docs/semaphores.md). TTLs, waits and
// max_hold are the lock API's.
const (
	MaxSemaphoreLimit = 100_000
)

// SemaphoreServer implements resiliencev1.SemaphoreServiceServer.
type SemaphoreServer struct {
	v1.UnimplementedSemaphoreServiceServer
	svc *semaphore.Service
	log *slog.Logger
	// stopping is cancelled when the sidecar shuts down: waits end and
	// sessions give their permits back.
	stopping context.Context
	metrics  *metrics.Metrics
}

// NewSemaphoreServer serves svc. Calls in flight when stopping is
// cancelled end promptly: waits with UNAVAILABLE/SHUTTING_DOWN, sessions by
// giving their permit back.
func NewSemaphoreServer(stopping context.Context, svc *semaphore.Service, log *slog.Logger, opts ...Option) *SemaphoreServer {
	o := applyOptions(opts)
	return &SemaphoreServer{svc: svc, log: log, stopping: stopping, metrics: o.metrics}
}

// begin counts a call with a wait as waiting until the returned observe
// records its outcome: acquired, busy (no permit, no wait) or timeout (a
// wait ended without one). observe must be called once, with err nil
// when the call got an answer.
func (s *SemaphoreServer) begin(wait time.Duration) (observe func(acquired bool, err error)) {
	start := time.Now()
	if wait > 0 {
		s.metrics.SemaphoreWaiter(1)
	}
	return func(acquired bool, err error) {
		if wait > 0 {
			s.metrics.SemaphoreWaiter(-1)
		}
		if err != nil {
			return
		}
		result := metrics.LockAcquired
		switch {
		case acquired:
		case wait > 0:
			result = metrics.LockTimeout
		default:
			result = metrics.LockBusy
		}
		s.metrics.ObserveSemaphoreAcquire(result, wait > 0, time.Since(start))
	}
}

func (s *SemaphoreServer) fail(ctx context.Context, err error) error {
	if errors.Is(err, semaphore.ErrShutdown) || s.stopping.Err() != nil && errors.Is(err, context.Canceled) {
		err = errShuttingDown
	}
	return toStatus(ctx, s.log, err)
}

// limit checks a required semaphore limit.
func (v *violations) limit(field string, n uint32) int {
	if n < 1 || n > MaxSemaphoreLimit {
		v.add(field, "must be between 1 and %d, got %d", MaxSemaphoreLimit, n)
	}
	return int(n)
}

// ValidateAcquirePermit checks an AcquirePermitRequest and returns its
// options.
func ValidateAcquirePermit(r *v1.AcquirePermitRequest) (semaphore.AcquireOptions, error) {
	var v violations
	v.key("name", r.GetName())
	v.label("owner", r.GetOwner())
	opts := semaphore.AcquireOptions{
		Limit: v.limit("limit", r.GetLimit()),
		TTL:   v.duration("ttl", r.GetTtl(), DefaultLockTTL, MinLockTTL, MaxLockTTL),
		Wait:  v.duration("wait_timeout", r.GetWaitTimeout(), 0, 0, MaxLockWait),
		Owner: r.GetOwner(),
	}
	return opts, v.err()
}

// AcquirePermit implements SemaphoreServiceServer.
func (s *SemaphoreServer) AcquirePermit(ctx context.Context, r *v1.AcquirePermitRequest) (*v1.AcquirePermitResponse, error) {
	opts, err := ValidateAcquirePermit(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	opts.Stop = s.stopping.Done()
	observe := s.begin(opts.Wait)
	res, err := s.svc.Acquire(ctx, r.GetName(), opts)
	observe(res.Acquired, err)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &v1.AcquirePermitResponse{Acquired: res.Acquired, Held: uint32(res.Held), Limit: uint32(res.Limit)}
	if res.Acquired {
		resp.Permit = permitPB(res.Permit)
	}
	return resp, nil
}

// ValidateReleasePermit checks a ReleasePermitRequest.
func ValidateReleasePermit(r *v1.ReleasePermitRequest) error {
	var v violations
	v.key("name", r.GetName())
	v.leaseID("permit_id", r.GetPermitId())
	return v.err()
}

// ReleasePermit implements SemaphoreServiceServer.
func (s *SemaphoreServer) ReleasePermit(ctx context.Context, r *v1.ReleasePermitRequest) (*v1.ReleasePermitResponse, error) {
	if err := ValidateReleasePermit(r); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := s.svc.Release(ctx, r.GetName(), r.GetPermitId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.ReleasePermitResponse{}, nil
}

// ValidateRenewPermit checks a RenewPermitRequest and returns the ttl.
func ValidateRenewPermit(r *v1.RenewPermitRequest) (time.Duration, error) {
	var v violations
	v.key("name", r.GetName())
	v.leaseID("permit_id", r.GetPermitId())
	ttl := v.duration("ttl", r.GetTtl(), DefaultLockTTL, MinLockTTL, MaxLockTTL)
	return ttl, v.err()
}

// RenewPermit implements SemaphoreServiceServer.
func (s *SemaphoreServer) RenewPermit(ctx context.Context, r *v1.RenewPermitRequest) (*v1.RenewPermitResponse, error) {
	ttl, err := ValidateRenewPermit(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	exp, err := s.svc.Renew(ctx, r.GetName(), r.GetPermitId(), ttl)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.RenewPermitResponse{ExpireTime: timestamppb.New(exp)}, nil
}

// GetSemaphore implements SemaphoreServiceServer.
func (s *SemaphoreServer) GetSemaphore(ctx context.Context, r *v1.GetSemaphoreRequest) (*v1.GetSemaphoreResponse, error) {
	var v violations
	v.key("name", r.GetName())
	if err := v.err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	info, err := s.svc.Get(ctx, r.GetName())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &v1.GetSemaphoreResponse{Limit: uint32(info.Limit), Held: uint32(info.Held), Waiters: uint32(info.Waiters),
		LastFencingToken: info.LastFencingToken}
	for _, h := range info.Holders {
		resp.Holders = append(resp.Holders, &v1.PermitHolder{Owner: h.Owner, FencingToken: h.FencingToken, ExpireTime: timestamppb.New(h.ExpireTime)})
	}
	return resp, nil
}

// ValidateHoldPermit checks the opening message of a HoldPermit session.
func ValidateHoldPermit(r *v1.HoldPermitRequest) (semaphore.HoldOptions, error) {
	var v violations
	a := r.GetAcquire()
	if a == nil {
		v.add("acquire", "the first message of a session must be acquire")
		return semaphore.HoldOptions{}, v.err()
	}
	v.key("acquire.name", a.GetName())
	v.label("acquire.owner", a.GetOwner())
	opts := semaphore.HoldOptions{AcquireOptions: semaphore.AcquireOptions{
		Limit: v.limit("acquire.limit", a.GetLimit()),
		TTL:   v.duration("acquire.ttl", a.GetTtl(), DefaultLockTTL, MinLockTTL, MaxLockTTL),
		Wait:  v.duration("acquire.wait_timeout", a.GetWaitTimeout(), 0, 0, MaxLockWait),
		Owner: a.GetOwner(),
	}}
	opts.MaxHold = v.duration("acquire.max_hold", a.GetMaxHold(), 0, 0, MaxLockTTL)
	if opts.MaxHold > 0 && opts.MaxHold < MinLockTTL {
		v.add("acquire.max_hold", "must be 0 (no bound) or between %v and %v, got %v", MinLockTTL, MaxLockTTL, opts.MaxHold)
	}
	return opts, v.err()
}

// HoldPermit implements SemaphoreServiceServer. The session's permit is
// given back when the client sends release, the stream ends for any
// reason, or the sidecar shuts down; the client is told which with
// `released` or `lost`.
func (s *SemaphoreServer) HoldPermit(stream v1.SemaphoreService_HoldPermitServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	opts, err := ValidateHoldPermit(first)
	if err != nil {
		return s.fail(ctx, err)
	}
	opts.Stop = s.stopping.Done()
	observe := s.begin(opts.Wait)
	sess, res, err := s.svc.Hold(ctx, first.GetAcquire().GetName(), opts)
	observe(sess != nil, err)
	if err != nil {
		return s.fail(ctx, err)
	}
	if sess == nil {
		return stream.Send(&v1.HoldPermitResponse{Event: &v1.HoldPermitResponse_NotAcquired_{
			NotAcquired: &v1.HoldPermitResponse_NotAcquired{Held: uint32(res.Held), Limit: uint32(res.Limit)}}})
	}
	release := func() error {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		return sess.Release(rctx)
	}
	defer release() //nolint:errcheck // idempotent; the explicit paths report its error
	s.metrics.SemaphoreSessionHeld(1)
	defer s.metrics.SemaphoreSessionHeld(-1)
	if err := stream.Send(&v1.HoldPermitResponse{Event: &v1.HoldPermitResponse_Acquired{Acquired: permitPB(sess.Permit())}}); err != nil {
		return err
	}

	return serveSession(ctx, s.stopping, sess, release, sessionStream[*v1.HoldPermitRequest]{
		recv:      stream.Recv,
		isRelease: func(m *v1.HoldPermitRequest) bool { return m.GetRelease() != nil },
		renewed: func(exp time.Time) error {
			return stream.Send(&v1.HoldPermitResponse{Event: &v1.HoldPermitResponse_Renewed_{
				Renewed: &v1.HoldPermitResponse_Renewed{ExpireTime: timestamppb.New(exp)}}})
		},
		lost: func(err error) error { return stream.Send(permitLostPB(err)) },
		released: func() error {
			return stream.Send(&v1.HoldPermitResponse{Event: &v1.HoldPermitResponse_Released_{Released: &v1.HoldPermitResponse_Released{}}})
		},
		leaseLost: semaphore.ErrLeaseLost,
		held:      "a permit",
	}, s.fail, semaphore.ErrShutdown)
}

func permitLostPB(err error) *v1.HoldPermitResponse {
	reason := v1.HoldPermitResponse_Lost_REASON_LEASE_LOST
	msg := "permit lost: it expired or was released; the work may have run beyond the bulkhead's bound"
	switch {
	case errors.Is(err, semaphore.ErrMaxHold):
		reason, msg = v1.HoldPermitResponse_Lost_REASON_MAX_HOLD, "max_hold reached: the sidecar released the permit"
	case errors.Is(err, semaphore.ErrShutdown):
		reason, msg = v1.HoldPermitResponse_Lost_REASON_SHUTDOWN, "the sidecar is shutting down and released the permit"
	case errors.Is(err, store.ErrUnavailable):
		reason, msg = v1.HoldPermitResponse_Lost_REASON_STORE_UNAVAILABLE, "the store was unreachable until the permit expired"
	}
	return &v1.HoldPermitResponse{Event: &v1.HoldPermitResponse_Lost_{Lost: &v1.HoldPermitResponse_Lost{Reason: reason, Message: msg}}}
}

func permitPB(p semaphore.Permit) *v1.Permit {
	return &v1.Permit{Name: p.Name, PermitId: p.ID, FencingToken: p.FencingToken, ExpireTime: timestamppb.New(p.ExpireTime), Owner: p.Owner}
}
