// Package idempotency makes HTTP handlers and gRPC unary methods
// idempotent with the resilience sidecar, the way Stripe's API honours an
// Idempotency-Key header: the first request carrying a key runs, its
// response is stored, and every later request with that key gets the
// stored response again without running the handler, from any replica of
// the service and through any sidecar that shares the store.
//
// Middleware wraps a net/http handler; UnaryServerInterceptor wraps the
// unary methods of a gRPC server, reading the key from the
// "idempotency-key" metadata entry. Both keep one record per key in the
// sidecar (CheckOrRecordIdempotency, then CompleteIdempotency or
// ReleaseIdempotency), under the store key "<scope>:<key>".
//
// What is guaranteed, for requests carrying the same key within the
// retention (WithRetention, default 24h):
//
//   - the handler runs at most once at a time: while it runs, a duplicate
//     is answered 409 Conflict with Retry-After (ABORTED over gRPC), or
//     waits for it with WithWait;
//   - once it has succeeded (HTTP status below 500, or a gRPC method that
//     returned no error) it does not run again: duplicates get its
//     response, HTTP status, headers and body, with the header
//     Idempotent-Replayed: true;
//   - a failure (HTTP 5xx, a returned gRPC error, a panic) is not stored:
//     the key is released and the next duplicate runs the handler again;
//   - the key is bound to the request it was first used for (method, path
//     with query, body; or gRPC method and request message): reusing it
//     for another request is refused (422 / FAILED_PRECONDITION);
//   - when the sidecar cannot be asked (stopped, unreachable, its store
//     down, a deadline), the request is refused (503 / UNAVAILABLE) and the
//     handler does not run: a possible duplicate never runs unguarded.
//
// The lease of a running request lasts WithLeaseTTL (default 30s) and is
// not renewed: a handler that runs longer may be run again by a duplicate
// that takes the key over. A response is stored only if the sidecar
// accepts it (at most its max_result_bytes, 1 MiB by default, and 64
// metadata entries); one that is not stored is still sent, and the failure
// logged (WithLogger), so a duplicate would run again.
package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Problem codes: the "code" member of Middleware's problem bodies, and the
// ErrorInfo reason of UnaryServerInterceptor's errors.
const (
	CodeKeyMissing   = "IDEMPOTENCY_KEY_MISSING"
	CodeKeyInvalid   = "IDEMPOTENCY_KEY_INVALID"
	CodeKeyInUse     = "IDEMPOTENCY_KEY_IN_USE"
	CodeKeyReused    = "IDEMPOTENCY_KEY_REUSED"
	CodeBodyTooLarge = "IDEMPOTENCY_BODY_TOO_LARGE"
	// CodeBodyUnreadable (400) answers a request whose body could not be
	// read (the client went away, or a broken chunked encoding).
	CodeBodyUnreadable     = "IDEMPOTENCY_BODY_UNREADABLE"
	CodeSidecarUnavailable = "SIDECAR_UNAVAILABLE"
)

// ErrorDomain is the ErrorInfo domain of UnaryServerInterceptor's errors.
const ErrorDomain = "idempotency.resilience.sidecar"

// maxKeyLen is the longest key accepted.
const maxKeyLen = 255

// validKey reports whether key is 1-255 printable ASCII characters.
func validKey(key string) bool { return len(key) <= maxKeyLen && printableASCII(key) }

// fingerprint is the hex SHA-256 of the parts joined by "\n".
func fingerprint(parts ...[]byte) string {
	h := sha256.New()
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{'\n'})
		}
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkOutcome is what CheckOrRecord said, as the middlewares act on it.
type checkOutcome int

const (
	outcomeStarted     checkOutcome = iota // run the handler, then complete or release
	outcomeCompleted                       // replay result
	outcomeInProgress                      // 409 / ABORTED after retryAfter
	outcomeMismatch                        // the key was used for another request
	outcomeInvalid                         // the sidecar refused the key
	outcomeUnavailable                     // the sidecar could not be asked
)

type checked struct {
	outcome    checkOutcome
	leaseID    string
	result     *v1.IdempotencyResult
	retryAfter time.Duration
	err        error // the sidecar's error, for the mismatch, invalid and unavailable outcomes
}

// check calls CheckOrRecordIdempotency for storeKey and fingerprint fp.
func (c *config) check(ctx context.Context, client v1.IdempotencyServiceClient, storeKey, fp string) checked {
	req := &v1.CheckOrRecordIdempotencyRequest{
		Key:         storeKey,
		Fingerprint: fp,
		LeaseTtl:    durationpb.New(c.leaseTTL),
		Retention:   durationpb.New(c.retention),
		WaitTimeout: durationpb.New(waitWithin(ctx, c.wait)),
	}
	resp, err := client.CheckOrRecordIdempotency(ctx, req)
	if err = resilience.FromError(err); err != nil {
		switch {
		case errors.Is(err, resilience.ErrIdempotencyKeyMismatch):
			return checked{outcome: outcomeMismatch, err: err}
		case errors.Is(err, resilience.ErrInvalidArgument):
			return checked{outcome: outcomeInvalid, err: err}
		default:
			return checked{outcome: outcomeUnavailable, err: err}
		}
	}
	switch resp.GetOutcome() {
	case v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED:
		return checked{outcome: outcomeStarted, leaseID: resp.GetLeaseId()}
	case v1.CheckOrRecordIdempotencyResponse_OUTCOME_COMPLETED:
		return checked{outcome: outcomeCompleted, result: resp.GetResult()}
	case v1.CheckOrRecordIdempotencyResponse_OUTCOME_IN_PROGRESS:
		return checked{outcome: outcomeInProgress, retryAfter: resp.GetRetryAfter().AsDuration()}
	}
	return checked{outcome: outcomeUnavailable, err: errors.New("idempotency: the sidecar answered outcome " + resp.GetOutcome().String())}
}

// complete stores result for storeKey; it runs even when ctx has ended.
func (c *config) complete(ctx context.Context, client v1.IdempotencyServiceClient, storeKey, leaseID string, result *v1.IdempotencyResult) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_, err := client.CompleteIdempotency(cctx, &v1.CompleteIdempotencyRequest{Key: storeKey, LeaseId: leaseID, Result: result})
	if err != nil {
		c.log().WarnContext(ctx, "idempotency: the response was sent but not stored; a duplicate will run the handler again",
			"key", storeKey, "error", resilience.FromError(err))
	}
}

// release gives storeKey up so that a duplicate runs again; it runs even
// when ctx has ended.
func (c *config) release(ctx context.Context, client v1.IdempotencyServiceClient, storeKey, leaseID string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_, err := client.ReleaseIdempotency(rctx, &v1.ReleaseIdempotencyRequest{Key: storeKey, LeaseId: leaseID})
	if err != nil {
		c.log().WarnContext(ctx, "idempotency: the key was not released; a duplicate runs again once its lease expires",
			"key", storeKey, "error", resilience.FromError(err))
	}
}

// waitWithin keeps the sidecar's wait inside ctx's deadline, so that it
// answers before the call times out.
func waitWithin(ctx context.Context, wait time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)*8/10)
	}
	return max(wait, 0).Truncate(time.Millisecond)
}

// retryAfterSeconds is d rounded up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int64 {
	return max(1, int64(math.Ceil(d.Seconds())))
}
