// Package resilience is the idiomatic Go client of the resilience sidecar:
// Dial, typed errors, and helpers built on the generated stubs in
// clients/go/resiliencev1.
package resilience

import (
	"context"
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the ErrorInfo domain of the sidecar's errors.
const ErrorDomain = "resilience.sidecar"

// Sentinel errors for the sidecar's stable ErrorInfo reasons (Reasons):
// every reason has its own, and errors returned by this package match it
// with errors.Is.
var (
	ErrLeaseLost              = errors.New("resilience: lease lost")
	ErrIdempotencyKeyMismatch = errors.New("resilience: idempotency key reused with a different fingerprint")
	ErrBreakerOpen            = errors.New("resilience: breaker open")
	ErrUpstreamUnknown        = errors.New("resilience: upstream unknown")
	ErrStoreUnavailable       = errors.New("resilience: store unavailable")
	ErrSagaNotFound           = errors.New("resilience: saga not found")
	ErrSagaStateConflict      = errors.New("resilience: saga state conflict")
	ErrLimitExceeded          = errors.New("resilience: limit exceeded")
	ErrClockSkew              = errors.New("resilience: clock skew")
	ErrShuttingDown           = errors.New("resilience: sidecar shutting down")
	ErrPermitUnknown          = errors.New("resilience: breaker permit unknown, expired or already reported")
	ErrUpstreamUnavailable    = errors.New("resilience: upstream gave no response")
	ErrUpstreamTimeout        = errors.New("resilience: upstream timed out")
	ErrTopicUnknown           = errors.New("resilience: topic not declared in the sidecar's config")
	ErrLimiterUnknown         = errors.New("resilience: rate limiter not declared in the sidecar's config")
	// The store states that say more than STORE_UNAVAILABLE. Each also
	// matches ErrStoreUnavailable: UNAVAILABLE, retry after RetryDelay.
	ErrStoreFull            = errors.New("resilience: store full (out of memory)")
	ErrStoreReadOnly        = errors.New("resilience: store read-only")
	ErrReplicationShortfall = errors.New("resilience: too few store replicas acknowledged the write")
)

// Sentinel errors for failures that carry no reason.
var (
	// ErrInvalidArgument matches every INVALID_ARGUMENT; Error.Violations
	// names the fields.
	ErrInvalidArgument = errors.New("resilience: invalid argument")
	// ErrSidecarUnreachable matches an UNAVAILABLE without the sidecar's
	// ErrorInfo: the call did not get through to the sidecar (it is
	// stopped, restarting, or the address is wrong). Retrying is safe once
	// it is back; a connection from Dial waits for that (WithConnectWait).
	ErrSidecarUnreachable = errors.New("resilience: sidecar unreachable")
	// ErrDeadlineExceeded matches every DEADLINE_EXCEEDED: the call's
	// deadline (the caller's, or Dial's default) passed without an answer.
	// Such an error also matches context.DeadlineExceeded.
	ErrDeadlineExceeded = errors.New("resilience: deadline exceeded")
)

// reasons maps every reason of Reasons to its sentinel; the test walks
// Reasons so that a reason added to the sidecar cannot be missed here.
var reasons = map[string]error{
	ReasonLeaseLost:              ErrLeaseLost,
	ReasonIdempotencyKeyMismatch: ErrIdempotencyKeyMismatch,
	ReasonBreakerOpen:            ErrBreakerOpen,
	ReasonUpstreamUnknown:        ErrUpstreamUnknown,
	ReasonStoreUnavailable:       ErrStoreUnavailable,
	ReasonSagaNotFound:           ErrSagaNotFound,
	ReasonSagaStateConflict:      ErrSagaStateConflict,
	ReasonLimitExceeded:          ErrLimitExceeded,
	ReasonClockSkew:              ErrClockSkew,
	ReasonShuttingDown:           ErrShuttingDown,
	ReasonPermitUnknown:          ErrPermitUnknown,
	ReasonUpstreamUnavailable:    ErrUpstreamUnavailable,
	ReasonUpstreamTimeout:        ErrUpstreamTimeout,
	ReasonTopicUnknown:           ErrTopicUnknown,
	ReasonLimiterUnknown:         ErrLimiterUnknown,
	ReasonStoreFull:              ErrStoreFull,
	ReasonStoreReadOnly:          ErrStoreReadOnly,
	ReasonReplicationShortfall:   ErrReplicationShortfall,
}

// storeReasons are the reasons that also match ErrStoreUnavailable.
var storeReasons = map[string]bool{ReasonStoreFull: true, ReasonStoreReadOnly: true, ReasonReplicationShortfall: true}

// Error is a sidecar error with its decoded details. It matches the
// sentinel of its reason (errors.Is) and keeps the gRPC status
// (status.FromError still works on it).
type Error struct {
	Code    codes.Code
	Message string
	// Reason is the ErrorInfo reason ("" when the error carries none).
	Reason string
	// RetryDelay is the server's RetryInfo hint (0 when none).
	RetryDelay time.Duration
	// Violations maps field name to description for INVALID_ARGUMENT.
	Violations map[string]string
	// Metadata is the ErrorInfo's metadata (the breaker's name, a saga's
	// state...; nil when there is none).
	Metadata map[string]string

	st          *status.Status
	unreachable bool // a call's deadline passed while it waited for the connection
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return "resilience: " + e.Code.String() + " " + e.Reason + ": " + e.Message
	}
	return "resilience: " + e.Code.String() + ": " + e.Message
}

// Is matches the sentinel of the error's reason (and ErrStoreUnavailable
// for every store reason: STORE_FULL, STORE_READ_ONLY, REPLICATION_SHORTFALL),
// ErrInvalidArgument for INVALID_ARGUMENT, ErrSidecarUnreachable for an
// UNAVAILABLE without the sidecar's ErrorInfo, and ErrDeadlineExceeded for
// DEADLINE_EXCEEDED. A DEADLINE_EXCEEDED or CANCELLED error also matches
// the context error of the same meaning, so callers can test for their
// own deadline.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrInvalidArgument:
		return e.Code == codes.InvalidArgument
	case ErrSidecarUnreachable:
		return e.unreachable || e.Code == codes.Unavailable && e.Reason == ""
	case ErrDeadlineExceeded, context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case context.Canceled:
		return e.Code == codes.Canceled
	case ErrStoreUnavailable:
		if storeReasons[e.Reason] {
			return true
		}
	}
	s, ok := reasons[e.Reason]
	return ok && s == target
}

// GRPCStatus lets status.FromError and status.Code see the original status.
func (e *Error) GRPCStatus() *status.Status { return e.st }

// FromError decodes a gRPC error from the sidecar into *Error. It returns
// nil for nil and err unchanged when it is not a gRPC status.
func FromError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	e := &Error{Code: st.Code(), Message: st.Message(), st: st}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == ErrorDomain {
				e.Reason = d.GetReason()
				e.Metadata = d.GetMetadata()
			}
		case *errdetails.RetryInfo:
			e.RetryDelay = d.GetRetryDelay().AsDuration()
		case *errdetails.BadRequest:
			e.Violations = map[string]string{}
			for _, v := range d.GetFieldViolations() {
				e.Violations[v.GetField()] = v.GetDescription()
			}
		}
	}
	return e
}
