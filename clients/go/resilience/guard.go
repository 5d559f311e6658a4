package resilience

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// reportTimeout bounds Guard's ReportCall, which is made even after ctx
// ended so the outcome is not lost.
const reportTimeout = 5 * time.Second

// maxPermitTTL is the sidecar's bound on permit_ttl.
const maxPermitTTL = 10 * time.Minute

// permitTTLSlack is added to ctx's remaining time for the permit's TTL.
const permitTTLSlack = 5 * time.Second

// GuardOption configures Guard.
type GuardOption func(*guardOptions)

type guardOptions struct {
	ttl     time.Duration
	outcome func(error) v1.CallOutcome
}

// WithPermitTTL sets how long the sidecar waits for the outcome before it
// counts the call as failed (1ms-10m). By default it is the time left
// until ctx's deadline plus 5s, or the sidecar's default (60s) when ctx
// has no deadline.
func WithPermitTTL(d time.Duration) GuardOption {
	return func(o *guardOptions) { o.ttl = d }
}

// WithOutcome sets how fn's error is reported. The default: nil is
// SUCCESS; an error after ctx was cancelled is IGNORED (the caller gave
// up, the dependency is not to blame); any other error is FAILURE. Return
// IGNORED for errors that say nothing about the dependency's health
// (invalid input, not found).
func WithOutcome(f func(err error) v1.CallOutcome) GuardOption {
	return func(o *guardOptions) { o.outcome = f }
}

// Guard runs fn under the sidecar's circuit breaker named breaker: it asks
// AllowCall, runs fn when the call is allowed, and reports fn's outcome and
// duration with ReportCall. It returns fn's error.
//
// When the breaker refuses the call, fn does not run and Guard returns an
// *Error matching ErrBreakerOpen (code UNAVAILABLE) whose RetryDelay says
// when asking again makes sense. An AllowCall failure is returned as it is
// (an *Error when client comes from Dial). A failed ReportCall does not
// change Guard's result: fn already ran, and the sidecar counts a permit
// that is never reported as a failure when it expires. If fn panics, the
// call is reported as a FAILURE and the panic continues.
//
// Cancelling ctx cancels fn's context; the report is still sent, bounded
// by its own 5s timeout.
func Guard(ctx context.Context, client v1.BreakerServiceClient, breaker string, fn func(ctx context.Context) error, opts ...GuardOption) error {
	o := guardOptions{outcome: defaultOutcome(ctx)}
	if dl, ok := ctx.Deadline(); ok {
		o.ttl = min(max(time.Until(dl), 0)+permitTTLSlack, maxPermitTTL)
	}
	for _, opt := range opts {
		opt(&o)
	}
	req := &v1.AllowCallRequest{Breaker: breaker}
	if o.ttl > 0 {
		req.PermitTtl = durationpb.New(o.ttl)
	}
	allowed, err := client.AllowCall(ctx, req)
	if err != nil {
		return FromError(err)
	}
	if !allowed.GetAllowed() {
		return openError(breaker, allowed)
	}

	start := time.Now()
	report := func(outcome v1.CallOutcome) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reportTimeout)
		defer cancel()
		// The error is dropped on purpose: see the doc comment.
		_, _ = client.ReportCall(rctx, &v1.ReportCallRequest{
			PermitId: allowed.GetPermitId(), Outcome: outcome, Duration: durationpb.New(time.Since(start)),
		})
	}
	panicked := true
	defer func() {
		if panicked {
			report(v1.CallOutcome_CALL_OUTCOME_FAILURE)
		}
	}()
	err = fn(ctx)
	panicked = false
	report(o.outcome(err))
	return err
}

func defaultOutcome(ctx context.Context) func(error) v1.CallOutcome {
	return func(err error) v1.CallOutcome {
		switch {
		case err == nil:
			return v1.CallOutcome_CALL_OUTCOME_SUCCESS
		case ctx.Err() != nil && errors.Is(err, context.Canceled):
			return v1.CallOutcome_CALL_OUTCOME_IGNORED
		}
		return v1.CallOutcome_CALL_OUTCOME_FAILURE
	}
}

// openError is the error Guard returns for a refused call: the same
// UNAVAILABLE/BREAKER_OPEN with RetryInfo that ExecuteCall returns.
func openError(breaker string, r *v1.AllowCallResponse) error {
	state := "open"
	if r.GetState() == v1.BreakerState_BREAKER_STATE_HALF_OPEN {
		state = "half-open with every probe slot taken"
	}
	st := status.New(codes.Unavailable, fmt.Sprintf("breaker %q is %s: the call was not made", breaker, state))
	if d, err := st.WithDetails(
		&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: ReasonBreakerOpen, Metadata: map[string]string{"breaker": breaker}},
		&errdetails.RetryInfo{RetryDelay: r.GetRetryAfter()},
	); err == nil {
		st = d
	}
	return FromError(st.Err())
}
