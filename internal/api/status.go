// Package api holds the gRPC handlers of every service: request validation,
// proto <-> domain conversion, and (in this file) the one place where domain
// errors become gRPC statuses with ErrorInfo, BadRequest and RetryInfo.
package api

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/semaphore"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// ErrorDomain is the ErrorInfo domain of every error the sidecar returns.
const ErrorDomain = "resilience.sidecar"

// Reasons clients may switch on (DESIGN.md section 3). They are stable.
const (
	ReasonLeaseLost        = "LEASE_LOST"
	ReasonStoreUnavailable = "STORE_UNAVAILABLE"
	ReasonLimitExceeded    = "LIMIT_EXCEEDED"
	ReasonShuttingDown     = "SHUTTING_DOWN"

	ReasonIdempotencyKeyMismatch = "IDEMPOTENCY_KEY_MISMATCH"

	ReasonClockSkew = "CLOCK_SKEW"

	ReasonSagaNotFound      = "SAGA_NOT_FOUND"
	ReasonSagaStateConflict = "SAGA_STATE_CONFLICT"

	ReasonTopicUnknown = "TOPIC_UNKNOWN"

	// A rate limiter the config file does not declare (NOT_FOUND).
	ReasonLimiterUnknown = "LIMITER_UNKNOWN"

	ReasonBreakerOpen     = "BREAKER_OPEN"
	ReasonUpstreamUnknown = "UPSTREAM_UNKNOWN"
	// Beyond DESIGN.md's list: a report for a permit that is not
	// outstanding, and an upstream that gave no response.
	ReasonPermitUnknown       = "PERMIT_UNKNOWN"
	ReasonUpstreamUnavailable = "UPSTREAM_UNAVAILABLE"
	ReasonUpstreamTimeout     = "UPSTREAM_TIMEOUT"
	// Store states that say more than STORE_UNAVAILABLE (UNAVAILABLE with
	// RetryInfo, like it): the store is full (Redis OOM: maxmemory with
	// noeviction), refuses writes (a read-only replica, or MISCONF: writes
	// stopped since an RDB save failed), or lacks the replicas a write
	// needs (NOREPLICAS, or fewer WAIT acknowledgements than required).
	ReasonStoreFull            = "STORE_FULL"
	ReasonStoreReadOnly        = "STORE_READ_ONLY"
	ReasonReplicationShortfall = "REPLICATION_SHORTFALL"
)

// StoreReasons are the reasons of UNAVAILABLE errors caused by the store,
// STORE_UNAVAILABLE and the more precise ones. Each is counted in
// resilience_store_errors_total (metrics.StoreErrorReasons).
var StoreReasons = []string{ReasonStoreUnavailable, ReasonStoreFull, ReasonStoreReadOnly, ReasonReplicationShortfall}

// storeRetryDelay is the retry hint for a store outage: about one health
// probe interval.
const storeRetryDelay = time.Second

// errShuttingDown marks calls cut short because the sidecar is stopping.
var errShuttingDown = errors.New("api: sidecar is shutting down")

// Status is the status the client sees for err, as every handler maps
// it; the server's interceptors use it for the calls they refuse.
func Status(ctx context.Context, log *slog.Logger, err error) error { return toStatus(ctx, log, err) }

// toStatus maps err to the status the client sees. Internal causes are
// logged, never sent.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	var v *violationsError
	var limit *admission.LimitError
	switch {
	case errors.As(err, &v):
		return v.status()
	case errors.As(err, &limit):
		// An admission limit: nothing was done; the limit is named.
		return withDetails(codes.ResourceExhausted, limit.Limit+" ("+strconv.FormatInt(limit.Max, 10)+") reached: the sidecar is at capacity and did nothing; retry later",
			ReasonLimitExceeded, map[string]string{"limit": limit.Limit, "max": strconv.FormatInt(limit.Max, 10)}, limit.RetryAfter)
	case errors.Is(err, errShuttingDown):
		return withDetails(codes.Unavailable, "sidecar is shutting down; retry on another instance", ReasonShuttingDown, nil, time.Second)
	case errors.Is(err, lock.ErrLeaseLost):
		return withDetails(codes.FailedPrecondition, "lease lost: it expired or is held by someone else; the critical section may have run unprotected", ReasonLeaseLost, nil, 0)
	case errors.Is(err, semaphore.ErrLeaseLost):
		return withDetails(codes.FailedPrecondition, "permit lost: it expired or was released; the work may have run beyond the bulkhead's bound", ReasonLeaseLost, nil, 0)
	case errors.Is(err, idempotency.ErrLeaseLost):
		return withDetails(codes.FailedPrecondition, "lease lost: the idempotency key was taken over after the lease expired, or was released or completed; the operation may have run twice", ReasonLeaseLost, nil, 0)
	case errors.Is(err, idempotency.ErrKeyMismatch):
		return withDetails(codes.FailedPrecondition, "idempotency key reused with a different fingerprint: a different request needs a new key", ReasonIdempotencyKeyMismatch, nil, 0)
	case errors.Is(err, clock.ErrClockSkew):
		return clockSkewStatus(err)
	case errors.Is(err, clock.ErrExhausted):
		return withDetails(codes.OutOfRange, "lamport clock exhausted: it would pass 2^63-1; nothing was changed", ReasonLimitExceeded, nil, 0)
	case errors.Is(err, clock.ErrRegressed):
		// Logged loudly by the clock service, with the clock and values.
		return status.Error(codes.Internal, "lamport clock went backwards in the store, which lost writes (Redis restarted without appendfsync always?): refusing to hand out a value twice; ObserveLamport with the highest value known repairs it")
	case errors.Is(err, breaker.ErrOpen), errors.Is(err, breaker.ErrPermitUnknown), errors.Is(err, breaker.ErrLimitExceeded),
		errors.Is(err, upstream.ErrInvalidRequest), errors.Is(err, upstream.ErrUnavailable),
		errors.Is(err, upstream.ErrTimeout), errors.Is(err, upstream.ErrResponseTooLarge):
		return breakerStatus(err)
	case errors.Is(err, saga.ErrNotFound), errors.Is(err, saga.ErrStateConflict), errors.Is(err, saga.ErrAlreadyExists),
		errors.Is(err, saga.ErrTooManySteps):
		return sagaStatus(err)
	case errors.Is(err, events.ErrTopicUnknown):
		return withDetails(codes.NotFound, "topic unknown: the configuration declares its topics (events.topics) and this is not one of them", ReasonTopicUnknown, nil, 0)
	case errors.Is(err, ratelimit.ErrLimiterUnknown):
		return withDetails(codes.NotFound, "limiter unknown: the configuration declares its rate limiters (ratelimits) and this is not one of them", ReasonLimiterUnknown, nil, 0)
	case errors.Is(err, store.ErrUnavailable):
		return storeStatus(err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	}
	log.ErrorContext(ctx, "internal error", "error", err)
	return status.Error(codes.Internal, "internal error")
}

// storeStatus maps a store.ErrUnavailable (or one of its kinds) to
// UNAVAILABLE with its reason and RetryInfo. Nothing of the cause is sent.
func storeStatus(err error) error {
	switch {
	case errors.Is(err, store.ErrFull):
		return withDetails(codes.Unavailable, "store full: it reached its memory limit and refuses writes; retry after keys expire or memory is freed", ReasonStoreFull, nil, storeRetryDelay)
	case errors.Is(err, store.ErrReadOnly):
		return withDetails(codes.Unavailable, "store read-only: it refuses writes (a replica, or it cannot persist); retry after a failover or the fix", ReasonStoreReadOnly, nil, storeRetryDelay)
	case errors.Is(err, store.ErrNotReplicated):
		return withDetails(codes.Unavailable, "replication shortfall: fewer store replicas than required acknowledged the write, or a failover had begun; it must be treated as not done", ReasonReplicationShortfall, nil, storeRetryDelay)
	}
	return withDetails(codes.Unavailable, "store unavailable", ReasonStoreUnavailable, nil, storeRetryDelay)
}

func withDetails(code codes.Code, msg, reason string, meta map[string]string, retry time.Duration) error {
	st := status.New(code, msg)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: reason, Metadata: meta}}
	if retry > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	if withD, err := st.WithDetails(details...); err == nil {
		st = withD
	}
	return st.Err()
}

// clockSkewStatus is FAILED_PRECONDITION/CLOCK_SKEW with how far ahead the
// remote timestamp was and the allowed offset, in the message and in the
// ErrorInfo metadata (ahead, max_offset).
func clockSkewStatus(err error) error {
	var skew *clock.SkewError
	if !errors.As(err, &skew) {
		return withDetails(codes.FailedPrecondition, "remote timestamp too far ahead of this sidecar's clock; it was not adopted", ReasonClockSkew, nil, 0)
	}
	return withDetails(codes.FailedPrecondition,
		"remote timestamp is "+skew.Ahead.String()+" ahead of this sidecar's clock, more than max_offset "+skew.MaxOffset.String()+"; it was not adopted",
		ReasonClockSkew, map[string]string{"ahead": skew.Ahead.String(), "max_offset": skew.MaxOffset.String()}, 0)
}

// breakerStatus maps the errors of the breaker service and of the calls
// the sidecar makes to upstreams. Their messages carry no secrets (no
// URLs, no permit ids).
func breakerStatus(err error) error {
	var open *breaker.OpenError
	var req *upstream.RequestError
	switch {
	case errors.As(err, &open):
		return withDetails(codes.Unavailable, "breaker "+strconv.Quote(open.Breaker)+" is "+open.State.String()+": the call was not made",
			ReasonBreakerOpen, map[string]string{"breaker": open.Breaker, "state": open.State.String()}, open.RetryAfter)
	case errors.Is(err, breaker.ErrPermitUnknown):
		return withDetails(codes.FailedPrecondition, "permit unknown: never issued, already reported, or expired (an expired permit was counted as a failure)", ReasonPermitUnknown, nil, 0)
	case errors.Is(err, breaker.ErrLimitExceeded):
		return withDetails(codes.ResourceExhausted, err.Error(), ReasonLimitExceeded, nil, 0)
	case errors.As(err, &req):
		st := status.New(codes.InvalidArgument, "invalid argument: "+req.Field+": "+req.Msg)
		details := []protoadapt.MessageV1{&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: req.Field, Description: req.Msg}}}}
		if req.Target {
			details = append(details, &errdetails.ErrorInfo{Domain: ErrorDomain, Reason: ReasonUpstreamUnknown})
		}
		if d, derr := st.WithDetails(details...); derr == nil {
			st = d
		}
		return st.Err()
	case errors.Is(err, upstream.ErrResponseTooLarge):
		return withDetails(codes.ResourceExhausted, strings.TrimPrefix(err.Error(), "upstream: "), ReasonLimitExceeded, nil, 0)
	case errors.Is(err, upstream.ErrTimeout):
		// The request may have been processed: no RetryInfo.
		return withDetails(codes.DeadlineExceeded, err.Error(), ReasonUpstreamTimeout, nil, 0)
	default: // upstream.ErrUnavailable
		return withDetails(codes.Unavailable, err.Error(), ReasonUpstreamUnavailable, nil, 0)
	}
}

// sagaStatus maps the saga service's errors. A conflict carries the saga's
// current state (a SagaState name) as ErrorInfo metadata "state".
func sagaStatus(err error) error {
	var c *saga.ConflictError
	switch {
	case errors.Is(err, saga.ErrNotFound):
		return withDetails(codes.NotFound, "saga not found (never started, or removed after its retention)", ReasonSagaNotFound, nil, 0)
	case errors.Is(err, saga.ErrTooManySteps):
		return withDetails(codes.ResourceExhausted, "the saga has the most steps allowed (saga_max_steps)", ReasonLimitExceeded, nil, 0)
	case errors.As(err, &c):
		code := codes.FailedPrecondition
		if c.Exists {
			code = codes.AlreadyExists
		}
		return withDetails(code, strings.TrimPrefix(c.Error(), "saga: "), ReasonSagaStateConflict,
			map[string]string{"state": sagaStatePB[c.State].String()}, 0)
	}
	return withDetails(codes.FailedPrecondition, "saga state conflict", ReasonSagaStateConflict, nil, 0)
}
