package resilience

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Decision is the answer of a Take: whether the cost was taken and the
// key's state after it.
type Decision struct {
	// Allowed reports whether the cost was taken.
	Allowed bool
	// Remaining is the largest cost a Take made now would be allowed.
	Remaining int64
	// RetryAfter is set when not allowed: how long until the cost fits if
	// no one else takes from the key.
	RetryAfter time.Duration
	// ResetAfter is how long until the key is back to full capacity.
	ResetAfter time.Duration
	// Limit is the limiter's capacity (burst, or limit per window).
	Limit int64
	// Degraded: the store was unreachable and the limiter's store_down
	// mode answered.
	Degraded bool
	// Cached: the sidecar refused from its memory of an exhausted key.
	Cached bool
}

// ErrRateLimited is matched by the *RateLimitedError of RateLimited when
// the cost did not fit within the wait.
var ErrRateLimited = errors.New("resilience: rate limited")

// RateLimitedError reports a refused Take: the function did not run. Try
// again after RetryAfter.
type RateLimitedError struct {
	Limiter, Key string
	Cost         int64
	// RetryAfter is the Decision's: how long until the cost fits if no one
	// else takes from the key.
	RetryAfter time.Duration
	// Decision is the whole answer.
	Decision Decision
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("resilience: rate limited: limiter %q key %q: cost %d does not fit; retry after %v", e.Limiter, e.Key, e.Cost, e.RetryAfter)
}

// Is matches ErrRateLimited.
func (e *RateLimitedError) Is(target error) bool { return target == ErrRateLimited }

// TakeOption configures Take and RateLimited.
type TakeOption func(*takeOptions)

type takeOptions struct {
	cost              int64
	wait, callTimeout time.Duration
}

func newTakeOptions(opts []TakeOption) takeOptions {
	o := takeOptions{cost: 1, callTimeout: DefaultCallTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithCost sets how much a Take takes (default 1; at most the limiter's
// max_cost).
func WithCost(n int64) TakeOption {
	return func(o *takeOptions) { o.cost = n }
}

// WithTakeWait makes the sidecar wait up to d for the cost to fit (in
// arrival order per key; default 0: answer at once; at most 10m). The
// sidecar answers refused at once when the cost cannot fit within d.
func WithTakeWait(d time.Duration) TakeOption {
	return func(o *takeOptions) { o.wait = d }
}

// WithTakeCallTimeout bounds a Take when ctx has no deadline: the wait
// plus d (DefaultCallTimeout). 0 removes the bound.
func WithTakeCallTimeout(d time.Duration) TakeOption {
	return func(o *takeOptions) { o.callTimeout = d }
}

// Take takes the WithCost cost (default 1) from key of the declared
// limiter, waiting up to the WithTakeWait time for it to fit. A refusal is
// a Decision with Allowed false and RetryAfter, not an error; an
// undeclared limiter is an error matching ErrLimiterUnknown, a bad cost
// ErrInvalidArgument. The call is bounded by ctx's deadline or, when ctx
// has none, by the wait plus WithTakeCallTimeout (then ErrDeadlineExceeded).
func Take(ctx context.Context, c v1.RateLimitServiceClient, limiter, key string, opts ...TakeOption) (Decision, error) {
	return take(ctx, c, limiter, key, newTakeOptions(opts))
}

func take(ctx context.Context, c v1.RateLimitServiceClient, limiter, key string, o takeOptions) (Decision, error) {
	ctx, cancel := bounded(ctx, o.wait+o.callTimeout)
	defer cancel()
	r, err := c.Take(ctx, &v1.TakeRequest{Limiter: limiter, Key: key, Cost: o.cost, WaitTimeout: optDuration(waitWithin(ctx, o.wait))})
	if err != nil {
		return Decision{}, FromError(err)
	}
	return Decision{
		Allowed: r.GetAllowed(), Remaining: r.GetRemaining(), RetryAfter: r.GetRetryAfter().AsDuration(),
		ResetAfter: r.GetResetAfter().AsDuration(), Limit: r.GetLimit(), Degraded: r.GetDegraded(), Cached: r.GetCached(),
	}, nil
}

// RateLimited runs fn once the WithCost cost (default 1) was taken from
// key of the limiter, as resilience4j's RateLimiter.decorateCheckedSupplier:
// the sidecar waits up to the WithTakeWait time (default 0: try once) for
// the cost to fit. When it does not fit, fn does not run and the error is
// a *RateLimitedError (errors.Is ErrRateLimited) carrying RetryAfter; the
// errors of Take are returned as they are. Otherwise it returns fn's
// error. The Take is bounded as Take says; fn runs under ctx.
func RateLimited(ctx context.Context, c v1.RateLimitServiceClient, limiter, key string, fn func(ctx context.Context) error, opts ...TakeOption) error {
	o := newTakeOptions(opts)
	d, err := take(ctx, c, limiter, key, o)
	if err != nil {
		return err
	}
	if !d.Allowed {
		return &RateLimitedError{Limiter: limiter, Key: key, Cost: max(o.cost, 1), RetryAfter: d.RetryAfter, Decision: d}
	}
	return fn(ctx)
}
