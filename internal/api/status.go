// Package api holds the gRPC handlers of every service: request validation,
// proto <-> domain conversion, and (in this file) the one place where domain
// errors become gRPC statuses with ErrorInfo, BadRequest and RetryInfo.
package api

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// ErrorDomain is the ErrorInfo domain of every error the sidecar returns.
const ErrorDomain = "resilience.sidecar"

// Reasons clients may switch on (DESIGN.md section 3). They are stable.
const (
	ReasonLeaseLost        = "LEASE_LOST"
	ReasonStoreUnavailable = "STORE_UNAVAILABLE"
	ReasonLimitExceeded    = "LIMIT_EXCEEDED"
	ReasonShuttingDown     = "SHUTTING_DOWN"
)

// storeRetryDelay is the retry hint for a store outage: about one health
// probe interval.
const storeRetryDelay = time.Second

// errShuttingDown marks calls cut short because the sidecar is stopping.
var errShuttingDown = errors.New("api: sidecar is shutting down")

// toStatus maps err to the status the client sees. Internal causes are
// logged, never sent.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	var v *violationsError
	switch {
	case errors.As(err, &v):
		return v.status()
	case errors.Is(err, errShuttingDown):
		return withDetails(codes.Unavailable, "sidecar is shutting down; retry on another instance", ReasonShuttingDown, nil, time.Second)
	case errors.Is(err, lock.ErrLeaseLost):
		return withDetails(codes.FailedPrecondition, "lease lost: it expired or is held by someone else; the critical section may have run unprotected", ReasonLeaseLost, nil, 0)
	case errors.Is(err, store.ErrUnavailable):
		return withDetails(codes.Unavailable, "store unavailable", ReasonStoreUnavailable, nil, storeRetryDelay)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	}
	log.ErrorContext(ctx, "internal error", "error", err)
	return status.Error(codes.Internal, "internal error")
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
