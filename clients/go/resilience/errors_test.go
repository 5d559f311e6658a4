package resilience_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

func statusErr(t *testing.T, code codes.Code, msg string, details ...protoadapt.MessageV1) error {
	t.Helper()
	st := status.New(code, msg)
	if len(details) > 0 {
		var err error
		if st, err = st.WithDetails(details...); err != nil {
			t.Fatalf("WithDetails: %v", err)
		}
	}
	return st.Err()
}

func info(reason string) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Domain: resilience.ErrorDomain, Reason: reason}
}

// reasonSentinels is the typed error of every reason the sidecar sends.
// TestErrorsEveryReason walks the generated resilience.Reasons against
// it: a reason added to internal/api/status.go fails the test until it
// has a sentinel of its own here and in errors.go.
var reasonSentinels = map[string]error{
	resilience.ReasonLeaseLost:              resilience.ErrLeaseLost,
	resilience.ReasonStoreUnavailable:       resilience.ErrStoreUnavailable,
	resilience.ReasonLimitExceeded:          resilience.ErrLimitExceeded,
	resilience.ReasonShuttingDown:           resilience.ErrShuttingDown,
	resilience.ReasonIdempotencyKeyMismatch: resilience.ErrIdempotencyKeyMismatch,
	resilience.ReasonClockSkew:              resilience.ErrClockSkew,
	resilience.ReasonSagaNotFound:           resilience.ErrSagaNotFound,
	resilience.ReasonSagaStateConflict:      resilience.ErrSagaStateConflict,
	resilience.ReasonTopicUnknown:           resilience.ErrTopicUnknown,
	resilience.ReasonLimiterUnknown:         resilience.ErrLimiterUnknown,
	resilience.ReasonBreakerOpen:            resilience.ErrBreakerOpen,
	resilience.ReasonUpstreamUnknown:        resilience.ErrUpstreamUnknown,
	resilience.ReasonPermitUnknown:          resilience.ErrPermitUnknown,
	resilience.ReasonUpstreamUnavailable:    resilience.ErrUpstreamUnavailable,
	resilience.ReasonUpstreamTimeout:        resilience.ErrUpstreamTimeout,
	resilience.ReasonStoreFull:              resilience.ErrStoreFull,
	resilience.ReasonStoreReadOnly:          resilience.ErrStoreReadOnly,
	resilience.ReasonReplicationShortfall:   resilience.ErrReplicationShortfall,
}

// allSentinels is every sentinel of the package.
var allSentinels = append(slices.Collect(maps.Values(reasonSentinels)),
	resilience.ErrInvalidArgument, resilience.ErrSidecarUnreachable, resilience.ErrDeadlineExceeded)

func TestFromErrorDecodesDetails(t *testing.T) {
	cases := []struct {
		name       string
		err        func(t *testing.T) error
		code       codes.Code
		reason     string
		sentinels  []error // all and only these match
		retry      time.Duration
		violations map[string]string
	}{
		{
			name: "lease lost",
			err: func(t *testing.T) error {
				return statusErr(t, codes.FailedPrecondition, "lease lost", info("LEASE_LOST"))
			},
			code: codes.FailedPrecondition, reason: "LEASE_LOST", sentinels: []error{resilience.ErrLeaseLost},
		},
		{
			name: "store unavailable with retry",
			err: func(t *testing.T) error {
				return statusErr(t, codes.Unavailable, "store unavailable", info("STORE_UNAVAILABLE"),
					&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
			},
			code: codes.Unavailable, reason: "STORE_UNAVAILABLE", sentinels: []error{resilience.ErrStoreUnavailable}, retry: 1500 * time.Millisecond,
		},
		{
			name: "store full is a store unavailable",
			err: func(t *testing.T) error {
				return statusErr(t, codes.Unavailable, "store full", info("STORE_FULL"),
					&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
			},
			code: codes.Unavailable, reason: "STORE_FULL", sentinels: []error{resilience.ErrStoreFull, resilience.ErrStoreUnavailable}, retry: time.Second,
		},
		{
			name: "store read-only is a store unavailable",
			err: func(t *testing.T) error {
				return statusErr(t, codes.Unavailable, "read-only", info("STORE_READ_ONLY"),
					&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
			},
			code: codes.Unavailable, reason: "STORE_READ_ONLY", sentinels: []error{resilience.ErrStoreReadOnly, resilience.ErrStoreUnavailable}, retry: time.Second,
		},
		{
			name: "replication shortfall is a store unavailable",
			err: func(t *testing.T) error {
				return statusErr(t, codes.Unavailable, "shortfall", info("REPLICATION_SHORTFALL"),
					&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
			},
			code: codes.Unavailable, reason: "REPLICATION_SHORTFALL", sentinels: []error{resilience.ErrReplicationShortfall, resilience.ErrStoreUnavailable}, retry: time.Second,
		},
		{
			name: "retry info before error info",
			err: func(t *testing.T) error {
				return statusErr(t, codes.Unavailable, "open", &errdetails.RetryInfo{RetryDelay: durationpb.New(30 * time.Second)}, info("BREAKER_OPEN"))
			},
			code: codes.Unavailable, reason: "BREAKER_OPEN", sentinels: []error{resilience.ErrBreakerOpen}, retry: 30 * time.Second,
		},
		{
			name: "bad request",
			err: func(t *testing.T) error {
				return statusErr(t, codes.InvalidArgument, "invalid argument", &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
					{Field: "key", Description: "must not be empty"},
					{Field: "acquire.max_hold", Description: "must be between 100ms and 24h0m0s"},
				}})
			},
			code: codes.InvalidArgument, sentinels: []error{resilience.ErrInvalidArgument},
			violations: map[string]string{"key": "must not be empty", "acquire.max_hold": "must be between 100ms and 24h0m0s"},
		},
		{
			name: "invalid argument with a reason",
			err: func(t *testing.T) error {
				return statusErr(t, codes.InvalidArgument, "too many", info("LIMIT_EXCEEDED"),
					&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "count", Description: "at most 1000"}}})
			},
			code: codes.InvalidArgument, reason: "LIMIT_EXCEEDED", sentinels: []error{resilience.ErrLimitExceeded, resilience.ErrInvalidArgument},
			violations: map[string]string{"count": "at most 1000"},
		},
		{
			name: "shutting down",
			err: func(t *testing.T) error {
				return statusErr(t, codes.Unavailable, "bye", info("SHUTTING_DOWN"), &errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
			},
			code: codes.Unavailable, reason: "SHUTTING_DOWN", sentinels: []error{resilience.ErrShuttingDown}, retry: time.Second,
		},
		{
			name: "every other reason: clock skew",
			err: func(t *testing.T) error {
				return statusErr(t, codes.FailedPrecondition, "skew", info("CLOCK_SKEW"))
			},
			code: codes.FailedPrecondition, reason: "CLOCK_SKEW", sentinels: []error{resilience.ErrClockSkew},
		},
		{
			name: "foreign domain is not ours",
			err: func(t *testing.T) error {
				return statusErr(t, codes.FailedPrecondition, "x", &errdetails.ErrorInfo{Domain: "googleapis.com", Reason: "LEASE_LOST"})
			},
			code: codes.FailedPrecondition,
		},
		{
			name: "unknown reason",
			err: func(t *testing.T) error {
				return statusErr(t, codes.Aborted, "x", info("SOMETHING_NEW"))
			},
			code: codes.Aborted, reason: "SOMETHING_NEW",
		},
		{
			name: "no details",
			err: func(t *testing.T) error {
				return status.Error(codes.Internal, "internal error")
			},
			code: codes.Internal,
		},
		{
			name: "plain unavailable: the sidecar unreachable",
			err: func(t *testing.T) error {
				return status.Error(codes.Unavailable, "connection error: connection refused")
			},
			code: codes.Unavailable, sentinels: []error{resilience.ErrSidecarUnreachable},
		},
		{
			name: "deadline exceeded",
			err: func(t *testing.T) error {
				return status.Error(codes.DeadlineExceeded, "context deadline exceeded")
			},
			code: codes.DeadlineExceeded, sentinels: []error{resilience.ErrDeadlineExceeded},
		},
		{
			name: "wrapped status",
			err: func(t *testing.T) error {
				return fmt.Errorf("acquire orders: %w", statusErr(t, codes.FailedPrecondition, "lease lost", info("LEASE_LOST")))
			},
			code: codes.FailedPrecondition, reason: "LEASE_LOST", sentinels: []error{resilience.ErrLeaseLost},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.err(t)
			err := resilience.FromError(in)
			var e *resilience.Error
			if !errors.As(err, &e) {
				t.Fatalf("FromError(%v) = %T %v; want *resilience.Error", in, err, err)
			}
			if e.Code != tc.code || e.Reason != tc.reason || e.RetryDelay != tc.retry {
				t.Errorf("decoded code %v reason %q retry %v; want %v %q %v", e.Code, e.Reason, e.RetryDelay, tc.code, tc.reason, tc.retry)
			}
			if !maps.Equal(e.Violations, tc.violations) {
				t.Errorf("Violations = %v; want %v", e.Violations, tc.violations)
			}
			for _, s := range allSentinels {
				want := false
				for _, w := range tc.sentinels {
					want = want || w == s
				}
				if got := errors.Is(err, s); got != want {
					t.Errorf("errors.Is(err, %v) = %v; want %v", s, got, want)
				}
			}
			// The gRPC status survives the decoding, details included.
			if got := status.Code(err); got != tc.code {
				t.Errorf("status.Code = %v; want %v", got, tc.code)
			}
			st, ok := status.FromError(err)
			if !ok || st.Code() != tc.code || len(st.Details()) != len(status.Convert(in).Details()) {
				t.Errorf("status.FromError = %v, %v; want the original status", st, ok)
			}
			if e.Message != status.Convert(in).Message() || e.Error() == "" {
				t.Errorf("Message = %q, Error() = %q", e.Message, e.Error())
			}
			if again := resilience.FromError(err); again != err {
				t.Errorf("FromError is not idempotent: %v then %v", err, again)
			}
		})
	}
}

func TestFromErrorPassesThroughNonStatus(t *testing.T) {
	if err := resilience.FromError(nil); err != nil {
		t.Fatalf("FromError(nil) = %v; want nil", err)
	}
	plain := errors.New("dial failed")
	wrappedEOF := fmt.Errorf("read: %w", io.EOF)
	for _, in := range []error{plain, io.EOF, wrappedEOF, context.Canceled, context.DeadlineExceeded} {
		out := resilience.FromError(in)
		if out != in {
			t.Errorf("FromError(%v) = %v (%T); want the same error back", in, out, out)
		}
		var e *resilience.Error
		if errors.As(out, &e) {
			t.Errorf("FromError(%v) became a *resilience.Error", in)
		}
	}
}

// Every reason of the generated list decodes to its own sentinel, and to
// no other (but ErrStoreUnavailable for the store states), with its
// ErrorInfo metadata; against the real sidecar on Redis, errors of a few
// reasons come with their metadata, an unreachable sidecar is
// ErrSidecarUnreachable and a passed deadline ErrDeadlineExceeded.
func TestErrorsEveryReason(t *testing.T) {
	scenario(t, "errors-every-reason")
	for _, reason := range resilience.Reasons {
		sentinel, ok := reasonSentinels[reason]
		if !ok {
			t.Errorf("reason %s has no typed error", reason)
			continue
		}
		for _, code := range []codes.Code{codes.FailedPrecondition, codes.Unavailable} {
			err := resilience.FromError(statusErr(t, code, "m",
				&errdetails.ErrorInfo{Domain: resilience.ErrorDomain, Reason: reason, Metadata: map[string]string{"reason": reason}}))
			var e *resilience.Error
			if !errors.As(err, &e) || e.Reason != reason || e.Metadata["reason"] != reason {
				t.Errorf("%s: %#v; want the reason and its metadata", reason, err)
			}
			for _, s := range allSentinels {
				want := s == sentinel || s == resilience.ErrStoreUnavailable && slices.Contains(
					[]string{resilience.ReasonStoreFull, resilience.ReasonStoreReadOnly, resilience.ReasonReplicationShortfall}, reason)
				if errors.Is(err, s) != want {
					t.Errorf("%s (%v): errors.Is(%v) = %v", reason, code, s, !want)
				}
			}
		}
	}

	conn := dial(t, redisSidecars(t, 1)[0].Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	locks, sagas := v1.NewLockServiceClient(conn), v1.NewSagaServiceClient(conn)

	_, err := locks.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "errors/none", LeaseId: "0123456789abcdef0123456789abcdef"})
	if !errors.Is(err, resilience.ErrLeaseLost) {
		t.Errorf("release of an unknown lease: %v; want ErrLeaseLost", err)
	}
	id := "errors-" + rand.Text()
	s, err := resilience.StartSaga(ctx, sagas, id, "errors", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx); err != nil {
		t.Fatal(err)
	}
	err = s.Abort(ctx, "too late")
	var e *resilience.Error
	if !errors.Is(err, resilience.ErrSagaStateConflict) || !errors.As(err, &e) || e.Metadata["state"] != "SAGA_STATE_COMPLETED" {
		t.Errorf("abort of a completed saga: %#v; want SAGA_STATE_CONFLICT with metadata state SAGA_STATE_COMPLETED", err)
	}

	// The lock held: an acquire that waits past the caller's deadline.
	holder := resilience.NewMutex(locks, "errors/held")
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	_, err = locks.AcquireLock(short, &v1.AcquireLockRequest{Key: "errors/held", WaitTimeout: durationpb.New(time.Minute)})
	if !errors.Is(err, resilience.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, resilience.ErrSidecarUnreachable) {
		t.Errorf("acquire past the deadline: %v; want ErrDeadlineExceeded only", err)
	}

	// Nothing listens on a free port: unreachable, at once without a
	// connect wait, and at the deadline when it is shorter than the wait.
	nowhere := testharness.FreeAddr(t)
	clocks := v1.NewClockServiceClient(dial(t, nowhere, resilience.WithConnectWait(0)))
	_, err = clocks.NextLamport(ctx, &v1.NextLamportRequest{Clock: "c"})
	if !errors.Is(err, resilience.ErrSidecarUnreachable) || errors.Is(err, resilience.ErrDeadlineExceeded) || status.Code(err) != codes.Unavailable {
		t.Errorf("call to nothing, no connect wait: %v; want UNAVAILABLE, ErrSidecarUnreachable", err)
	}
	clocks = v1.NewClockServiceClient(dial(t, nowhere))
	short, cancelShort = context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	_, err = clocks.NextLamport(short, &v1.NextLamportRequest{Clock: "c"})
	if !errors.Is(err, resilience.ErrSidecarUnreachable) || !errors.Is(err, resilience.ErrDeadlineExceeded) || status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("call to nothing, deadline within the connect wait: %v; want DEADLINE_EXCEEDED, ErrSidecarUnreachable", err)
	}
}
