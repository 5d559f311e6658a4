package resilience

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Result is what an operation run through Idempotent returns to every
// caller of its key: bytes (e.g. a response body) and a small string map
// (e.g. "status": "201").
type Result struct {
	Data     []byte
	Metadata map[string]string
}

// Fingerprint returns a fingerprint of a request for Idempotent:
// "sha256:" and the hex SHA-256 of request. Pass the request in a canonical
// form (e.g. the body as received), so that a retry of the same request has
// the same fingerprint and a different request reusing the key does not.
func Fingerprint(request []byte) string {
	sum := sha256.Sum256(request)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// IdempotentOption configures Idempotent.
type IdempotentOption func(*idempotentOptions)

type idempotentOptions struct {
	leaseTTL  time.Duration
	retention time.Duration
	wait      time.Duration
	retries   int
}

// WithLeaseTTL sets how long the sidecar waits for this process to finish
// the operation before another caller may take it over (1s-1h, default 30s
// as set by the sidecar). Choose it longer than the operation takes;
// Execution.Checkpoint extends it.
func WithLeaseTTL(d time.Duration) IdempotentOption {
	return func(o *idempotentOptions) { o.leaseTTL = d }
}

// WithRetention sets how long the result is kept for duplicates (1s-720h,
// default 24h as set by the sidecar).
func WithRetention(d time.Duration) IdempotentOption {
	return func(o *idempotentOptions) { o.retention = d }
}

// WithInProgressWait sets how long one call to the sidecar waits for a
// duplicate that is running the operation (0-5m, default 5s, kept under
// the context's deadline). Idempotent calls again until ctx ends. When ctx
// has no deadline, keep it under the connection's call timeout
// (DefaultCallTimeout for a connection from Dial).
func WithInProgressWait(d time.Duration) IdempotentOption {
	return func(o *idempotentOptions) { o.wait = d }
}

// WithUnavailableRetries sets how many times a call that failed with
// UNAVAILABLE (store or sidecar unreachable) is retried, after the delay
// the sidecar suggests (default 3).
func WithUnavailableRetries(n int) IdempotentOption {
	return func(o *idempotentOptions) { o.retries = n }
}

// Execution is one run of an operation under an idempotency key, as the
// function given to Idempotent sees it through ExecutionFrom.
type Execution struct {
	Key string
	// Attempt is 1 for the first run, more when this run takes over from
	// an executor whose lease expired (it died or was too slow).
	Attempt int
	// RecoveryPoint and RecoveryData are the last checkpoint of an earlier
	// attempt ("" and nil when there is none): resume after that phase
	// instead of redoing it.
	RecoveryPoint string
	RecoveryData  []byte

	client  v1.IdempotencyServiceClient
	leaseID string
}

// Checkpoint records that the operation finished the phase recoveryPoint
// (a name, 1-512 bytes), with data the next phases need (at most 64 KiB),
// and extends the lease. If this process dies, the run that takes over sees
// them in its Execution. An error matching ErrLeaseLost means another run
// has taken over: stop.
func (e *Execution) Checkpoint(ctx context.Context, recoveryPoint string, data []byte) error {
	_, err := e.client.CheckpointIdempotency(ctx, &v1.CheckpointIdempotencyRequest{
		Key: e.Key, LeaseId: e.leaseID, RecoveryPoint: recoveryPoint, Data: data,
	})
	return FromError(err)
}

type executionKey struct{}

// ExecutionFrom returns the Execution of the operation running with ctx,
// or nil when ctx does not come from Idempotent.
func ExecutionFrom(ctx context.Context) *Execution {
	e, _ := ctx.Value(executionKey{}).(*Execution)
	return e
}

// idempotentCleanupTimeout bounds the Complete and Release calls Idempotent
// makes after fn returned, which run even if ctx was cancelled meanwhile.
const idempotentCleanupTimeout = 10 * time.Second

// Idempotent runs fn at most once for key across every caller of every
// sidecar sharing the store, and returns its Result to all of them.
//
// The first caller runs fn and records its Result; callers that find the
// key in progress wait for it (and call again until ctx ends); callers that
// find it completed get the stored Result without running fn. When fn
// returns an error the key is released, so that a later call runs fn again,
// and the error is returned; when fn panics the key is released and the
// panic goes on. If the process running fn dies, the key is taken over by
// the next caller after the lease expires (see WithLeaseTTL), which runs fn
// with ExecutionFrom(ctx).Attempt > 1 and the last checkpoint.
//
// fingerprint identifies the request (see Fingerprint); a key already used
// with another fingerprint fails with ErrIdempotencyKeyMismatch.
//
// If fn succeeded but its lease was taken over meanwhile, Idempotent
// returns fn's Result with an error matching ErrLeaseLost: the operation may
// have run twice. Cancelling ctx stops the waiting with ctx's error; a
// completion or release already due is still sent, with its own deadline.
// Other failures are returned as *Error (see FromError).
func Idempotent(ctx context.Context, c v1.IdempotencyServiceClient, key, fingerprint string, fn func(ctx context.Context) (Result, error), opts ...IdempotentOption) (Result, error) {
	o := idempotentOptions{wait: 5 * time.Second, retries: 3}
	for _, opt := range opts {
		opt(&o)
	}
	for {
		req := &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: fingerprint, WaitTimeout: durationpb.New(waitWithin(ctx, o.wait))}
		if o.leaseTTL > 0 {
			req.LeaseTtl = durationpb.New(o.leaseTTL)
		}
		if o.retention > 0 {
			req.Retention = durationpb.New(o.retention)
		}
		var resp *v1.CheckOrRecordIdempotencyResponse
		err := retryUnavailable(ctx, o.retries, func() (err error) {
			resp, err = c.CheckOrRecordIdempotency(ctx, req)
			return err
		})
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return Result{}, cerr
			}
			return Result{}, err
		}
		switch resp.GetOutcome() {
		case v1.CheckOrRecordIdempotencyResponse_OUTCOME_COMPLETED:
			return Result{Data: resp.GetResult().GetData(), Metadata: resp.GetResult().GetMetadata()}, nil
		case v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED:
			exec := &Execution{
				Key:           key,
				Attempt:       int(resp.GetAttempt()),
				RecoveryPoint: resp.GetCheckpoint().GetRecoveryPoint(),
				RecoveryData:  resp.GetCheckpoint().GetData(),
				client:        c,
				leaseID:       resp.GetLeaseId(),
			}
			return exec.run(ctx, fn, o)
		case v1.CheckOrRecordIdempotencyResponse_OUTCOME_IN_PROGRESS:
			if req.GetWaitTimeout().AsDuration() > 0 {
				continue // the sidecar already waited
			}
			if err := sleepCtx(ctx, resp.GetRetryAfter().AsDuration()); err != nil {
				return Result{}, err
			}
		default:
			return Result{}, fmt.Errorf("resilience: unexpected outcome %v", resp.GetOutcome())
		}
	}
}

// run runs fn as the owner of the key, then completes or releases it.
func (e *Execution) run(ctx context.Context, fn func(context.Context) (Result, error), o idempotentOptions) (res Result, err error) {
	done := false
	defer func() {
		if !done { // fn panicked
			e.release(ctx, o)
		}
	}()
	res, err = fn(context.WithValue(ctx, executionKey{}, e))
	done = true
	if err != nil {
		if rerr := e.release(ctx, o); rerr != nil && !errors.Is(rerr, ErrLeaseLost) {
			return Result{}, errors.Join(err, fmt.Errorf("resilience: release of %q failed; it frees itself when the lease expires: %w", e.Key, rerr))
		}
		return Result{}, err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), idempotentCleanupTimeout)
	defer cancel()
	err = retryUnavailable(cctx, o.retries, func() error {
		_, err := e.client.CompleteIdempotency(cctx, &v1.CompleteIdempotencyRequest{
			Key: e.Key, LeaseId: e.leaseID, Result: &v1.IdempotencyResult{Data: res.Data, Metadata: res.Metadata},
		})
		return err
	})
	if errors.Is(err, ErrLeaseLost) {
		return res, fmt.Errorf("resilience: %q ran but its lease was taken over; it may have run twice: %w", e.Key, err)
	}
	if err != nil {
		return res, fmt.Errorf("resilience: %q ran but its result was not recorded: %w", e.Key, err)
	}
	return res, nil
}

func (e *Execution) release(ctx context.Context, o idempotentOptions) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), idempotentCleanupTimeout)
	defer cancel()
	return retryUnavailable(rctx, o.retries, func() error {
		_, err := e.client.ReleaseIdempotency(rctx, &v1.ReleaseIdempotencyRequest{Key: e.Key, LeaseId: e.leaseID})
		return err
	})
}

// retryUnavailable runs call, retrying UNAVAILABLE up to retries times after
// the server's RetryInfo delay (100ms when none). Errors come back as
// FromError makes them.
func retryUnavailable(ctx context.Context, retries int, call func() error) error {
	for i := 0; ; i++ {
		err := FromError(call())
		if err == nil || i >= retries || status.Code(err) != codes.Unavailable {
			return err
		}
		delay := 100 * time.Millisecond
		var e *Error
		if errors.As(err, &e) && e.RetryDelay > 0 {
			delay = e.RetryDelay
		}
		if serr := sleepCtx(ctx, delay); serr != nil {
			return err
		}
	}
}

// waitWithin keeps a server-side wait inside ctx's deadline, so that the
// sidecar answers IN_PROGRESS before the call times out.
func waitWithin(ctx context.Context, wait time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)*8/10)
	}
	return max(wait, 0).Truncate(time.Millisecond)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
