package api

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
)

// MaxTakeWait bounds a Take's wait_timeout.
const MaxTakeWait = 10 * time.Minute

// RateLimitServer implements resiliencev1.RateLimitServiceServer.
type RateLimitServer struct {
	v1.UnimplementedRateLimitServiceServer
	svc *ratelimit.Service
	log *slog.Logger
}

// NewRateLimitServer serves svc.
func NewRateLimitServer(svc *ratelimit.Service, log *slog.Logger) *RateLimitServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &RateLimitServer{svc: svc, log: log}
}

func (s *RateLimitServer) fail(ctx context.Context, err error) error {
	return toStatus(ctx, s.log, err)
}

// ValidateTake checks a TakeRequest and returns its cost (0 read as 1) and
// wait. A cost above the limiter's max_cost is checked by the handler,
// which knows the limiter.
func ValidateTake(r *v1.TakeRequest) (int64, time.Duration, error) {
	var v violations
	v.key("limiter", r.GetLimiter())
	v.label("key", r.GetKey())
	cost := r.GetCost()
	switch {
	case cost == 0:
		cost = 1
	case cost < 0:
		v.add("cost", "must be 0 (meaning 1) or more, got %d", cost)
	}
	wait := v.duration("wait_timeout", r.GetWaitTimeout(), 0, 0, MaxTakeWait)
	return cost, wait, v.err()
}

// Take implements RateLimitServiceServer.
func (s *RateLimitServer) Take(ctx context.Context, r *v1.TakeRequest) (*v1.TakeResponse, error) {
	cost, wait, err := ValidateTake(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	l, ok := s.svc.Limiter(r.GetLimiter())
	if !ok {
		return nil, s.fail(ctx, ratelimit.ErrLimiterUnknown)
	}
	o := ratelimit.Override{Rate: r.GetRate(), Burst: r.GetBurst(), Limit: r.GetLimit()}
	var v violations
	eff, err := l.With(o)
	var fe *field.Error
	if errors.As(err, &fe) {
		v.add(fe.Path, "%s", fe.Msg)
	}
	switch {
	case cost > l.MaxCost:
		v.add("cost", "must be at most the limiter's max_cost %d, got %d", l.MaxCost, cost)
	case err == nil && cost > eff.Capacity():
		v.add("cost", "must be at most the capacity %d this Take asks for, got %d", eff.Capacity(), cost)
	}
	if err := v.err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	if dl, ok := ctx.Deadline(); ok && wait > 0 {
		// Answer before the deadline rather than be cut off by it.
		wait = min(wait, time.Until(dl)*9/10)
	}
	d, err := s.svc.Take(ctx, r.GetLimiter(), r.GetKey(), cost, wait, o)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &v1.TakeResponse{Allowed: d.Allowed, Remaining: d.Remaining, Limit: d.Limit, Degraded: d.Degraded, Cached: d.Cached,
		ResetAfter: durationpb.New(d.ResetAfter)}
	if !d.Allowed {
		resp.RetryAfter = durationpb.New(d.RetryAfter)
	}
	return resp, nil
}

// GetLimit implements RateLimitServiceServer.
func (s *RateLimitServer) GetLimit(ctx context.Context, r *v1.GetLimitRequest) (*v1.GetLimitResponse, error) {
	var v violations
	v.key("limiter", r.GetLimiter())
	v.label("key", r.GetKey())
	if err := v.err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	d, l, err := s.svc.Get(ctx, r.GetLimiter(), r.GetKey())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &v1.GetLimitResponse{Limiter: limiterPB(r.GetLimiter(), l), Allowed: d.Allowed, Remaining: d.Remaining, Limit: d.Limit,
		ResetAfter: durationpb.New(d.ResetAfter), Degraded: d.Degraded}
	if !d.Allowed {
		resp.RetryAfter = durationpb.New(d.RetryAfter)
	}
	return resp, nil
}

func limiterPB(name string, l ratelimit.Limiter) *v1.RateLimiter {
	out := &v1.RateLimiter{Name: name, MaxCost: l.MaxCost, ExpectedSidecars: int32(l.ExpectedSidecars),
		MaxRate: l.MaxRate, MaxBurst: l.MaxBurst, MaxLimit: l.MaxLimit}
	switch l.Algorithm {
	case ratelimit.GCRA:
		out.Algorithm = v1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA
		out.Rate, out.Period, out.Burst = l.Rate, durationpb.New(l.Period), l.Burst
	case ratelimit.SlidingWindow:
		out.Algorithm = v1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW
		out.Limit, out.Window = l.Limit, durationpb.New(l.Window)
	case ratelimit.FixedWindow:
		out.Algorithm = v1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_FIXED_WINDOW
		out.Limit, out.Window = l.Limit, durationpb.New(l.Window)
	}
	switch l.StoreDown {
	case ratelimit.FailOpen:
		out.StoreDown = v1.RateLimitStoreDown_RATE_LIMIT_STORE_DOWN_FAIL_OPEN
	case ratelimit.FailClosed:
		out.StoreDown = v1.RateLimitStoreDown_RATE_LIMIT_STORE_DOWN_FAIL_CLOSED
	case ratelimit.Local:
		out.StoreDown = v1.RateLimitStoreDown_RATE_LIMIT_STORE_DOWN_LOCAL
	}
	return out
}
