package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/linearize"
)

// Recording clients: each wraps a generated client and records every
// lock, idempotency or Lamport call it makes in a linearize.History (the
// invocation just before the call, the response just after), so that a
// test checks its history with linearize.Check on top of its own counts.
// One wrapper is one client of the history: give each goroutine its own.

// storeSlack is the models' allowance for the store's clock: Redis TIME
// in milliseconds, read by another process than the test's monotonic clock.
const storeSlack = 25 * time.Millisecond

// lockModel, idemModel and lamportModel are the models the e2e histories
// are checked against.
var (
	lockModel    = linearize.Locks(storeSlack)
	idemModel    = linearize.Idempotency(storeSlack)
	lamportModel = linearize.Lamport()
)

// end records how a call that returned err ended: LEASE_LOST and
// IDEMPOTENCY_KEY_MISMATCH are answers; a refusal before anything happened
// changes nothing; any other error leaves the outcome unknown.
func end(c linearize.Call, err error) {
	switch code, reason := reasonOf(err); {
	case code == codes.FailedPrecondition && reason == "LEASE_LOST":
		c.Return(linearize.LeaseLost{})
	case code == codes.FailedPrecondition && reason == "IDEMPOTENCY_KEY_MISMATCH":
		c.Return(linearize.Mismatch{})
	case code == codes.InvalidArgument, code == codes.ResourceExhausted, code == codes.OutOfRange,
		code == codes.Unauthenticated, code == codes.PermissionDenied:
		c.Return(linearize.Refused{Err: err.Error()})
	default:
		c.Unknown(err)
	}
}

// histories are the histories of one test that uses all three services.
type histories struct{ locks, idem, clocks *linearize.History }

func newHistories() histories {
	return histories{linearize.NewHistory(), linearize.NewHistory(), linearize.NewHistory()}
}

// check checks each history against its model.
func (h histories) check(t *testing.T) {
	t.Helper()
	linearize.Check(t, lockModel, h.locks)
	linearize.Check(t, idemModel, h.idem)
	linearize.Check(t, lamportModel, h.clocks)
}

type recordedLocks struct {
	v1.LockServiceClient
	h      *linearize.History
	client int
}

// recordLocks returns c recording its AcquireLock, ReleaseLock and
// RenewLock calls in h.
func recordLocks(h *linearize.History, c v1.LockServiceClient) v1.LockServiceClient {
	return &recordedLocks{LockServiceClient: c, h: h, client: h.Client()}
}

func (r *recordedLocks) AcquireLock(ctx context.Context, in *v1.AcquireLockRequest, opts ...grpc.CallOption) (*v1.AcquireLockResponse, error) {
	ttl := in.GetTtl().AsDuration()
	if ttl == 0 {
		ttl = api.DefaultLockTTL
	}
	c := r.h.Invoke(r.client, linearize.LockAcquire{Key: in.GetKey(), TTL: ttl})
	resp, err := r.LockServiceClient.AcquireLock(ctx, in, opts...)
	switch {
	case err != nil:
		end(c, err)
	case resp.GetAcquired():
		c.Return(linearize.Granted{Lease: resp.GetLease().GetLeaseId(), Token: resp.GetLease().GetFencingToken()})
	default:
		c.Return(linearize.NotGranted{HolderToken: resp.GetHolder().GetFencingToken()})
	}
	return resp, err
}

func (r *recordedLocks) ReleaseLock(ctx context.Context, in *v1.ReleaseLockRequest, opts ...grpc.CallOption) (*v1.ReleaseLockResponse, error) {
	c := r.h.Invoke(r.client, linearize.LockRelease{Key: in.GetKey(), Lease: in.GetLeaseId()})
	resp, err := r.LockServiceClient.ReleaseLock(ctx, in, opts...)
	if err != nil {
		end(c, err)
	} else {
		c.Return(linearize.OK{})
	}
	return resp, err
}

func (r *recordedLocks) RenewLock(ctx context.Context, in *v1.RenewLockRequest, opts ...grpc.CallOption) (*v1.RenewLockResponse, error) {
	ttl := in.GetTtl().AsDuration()
	if ttl == 0 {
		ttl = api.DefaultLockTTL
	}
	c := r.h.Invoke(r.client, linearize.LockRenew{Key: in.GetKey(), Lease: in.GetLeaseId(), TTL: ttl})
	resp, err := r.LockServiceClient.RenewLock(ctx, in, opts...)
	if err != nil {
		end(c, err)
	} else {
		c.Return(linearize.OK{})
	}
	return resp, err
}

type recordedIdem struct {
	v1.IdempotencyServiceClient
	h      *linearize.History
	client int
}

// recordIdem returns c recording its CheckOrRecord, Complete, Release
// and Checkpoint calls in h.
func recordIdem(h *linearize.History, c v1.IdempotencyServiceClient) v1.IdempotencyServiceClient {
	return &recordedIdem{IdempotencyServiceClient: c, h: h, client: h.Client()}
}

// idemResult is a stored result in the models' comparable form.
func idemResult(r *v1.IdempotencyResult) string {
	return fmt.Sprintf("%q %v", r.GetData(), r.GetMetadata()) // %v prints a map sorted
}

func (r *recordedIdem) CheckOrRecordIdempotency(ctx context.Context, in *v1.CheckOrRecordIdempotencyRequest, opts ...grpc.CallOption) (*v1.CheckOrRecordIdempotencyResponse, error) {
	ttl := in.GetLeaseTtl().AsDuration()
	if ttl == 0 {
		ttl = api.DefaultIdempotencyLeaseTTL
	}
	c := r.h.Invoke(r.client, linearize.IdemCheck{Key: in.GetKey(), Fingerprint: in.GetFingerprint(), LeaseTTL: ttl})
	resp, err := r.IdempotencyServiceClient.CheckOrRecordIdempotency(ctx, in, opts...)
	switch {
	case err != nil:
		end(c, err)
	case resp.GetOutcome() == v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED:
		c.Return(linearize.Started{Lease: resp.GetLeaseId(), Attempt: int(resp.GetAttempt())})
	case resp.GetOutcome() == v1.CheckOrRecordIdempotencyResponse_OUTCOME_IN_PROGRESS:
		c.Return(linearize.InProgress{Attempt: int(resp.GetAttempt())})
	case resp.GetOutcome() == v1.CheckOrRecordIdempotencyResponse_OUTCOME_COMPLETED:
		c.Return(linearize.Completed{Result: idemResult(resp.GetResult())})
	default:
		c.Return(fmt.Sprintf("outcome %v", resp.GetOutcome())) // no model accepts it
	}
	return resp, err
}

func (r *recordedIdem) CompleteIdempotency(ctx context.Context, in *v1.CompleteIdempotencyRequest, opts ...grpc.CallOption) (*v1.CompleteIdempotencyResponse, error) {
	c := r.h.Invoke(r.client, linearize.IdemComplete{Key: in.GetKey(), Lease: in.GetLeaseId(), Result: idemResult(in.GetResult())})
	resp, err := r.IdempotencyServiceClient.CompleteIdempotency(ctx, in, opts...)
	if err != nil {
		end(c, err)
	} else {
		c.Return(linearize.OK{})
	}
	return resp, err
}

func (r *recordedIdem) ReleaseIdempotency(ctx context.Context, in *v1.ReleaseIdempotencyRequest, opts ...grpc.CallOption) (*v1.ReleaseIdempotencyResponse, error) {
	c := r.h.Invoke(r.client, linearize.IdemRelease{Key: in.GetKey(), Lease: in.GetLeaseId()})
	resp, err := r.IdempotencyServiceClient.ReleaseIdempotency(ctx, in, opts...)
	if err != nil {
		end(c, err)
	} else {
		c.Return(linearize.OK{})
	}
	return resp, err
}

func (r *recordedIdem) CheckpointIdempotency(ctx context.Context, in *v1.CheckpointIdempotencyRequest, opts ...grpc.CallOption) (*v1.CheckpointIdempotencyResponse, error) {
	c := r.h.Invoke(r.client, linearize.IdemCheckpoint{Key: in.GetKey(), Lease: in.GetLeaseId()})
	resp, err := r.IdempotencyServiceClient.CheckpointIdempotency(ctx, in, opts...)
	if err != nil {
		end(c, err)
	} else {
		c.Return(linearize.OK{})
	}
	return resp, err
}

type recordedClock struct {
	v1.ClockServiceClient
	h      *linearize.History
	client int
}

// recordClock returns c recording its NextLamport, ObserveLamport and
// GetLamport calls in h.
func recordClock(h *linearize.History, c v1.ClockServiceClient) v1.ClockServiceClient {
	return &recordedClock{ClockServiceClient: c, h: h, client: h.Client()}
}

func (r *recordedClock) NextLamport(ctx context.Context, in *v1.NextLamportRequest, opts ...grpc.CallOption) (*v1.NextLamportResponse, error) {
	n := uint64(in.GetCount())
	if n == 0 {
		n = 1
	}
	c := r.h.Invoke(r.client, linearize.LamportNext{Clock: in.GetClock(), Count: n})
	resp, err := r.ClockServiceClient.NextLamport(ctx, in, opts...)
	if err != nil {
		end(c, err)
	} else {
		c.Return(linearize.Values{First: resp.GetFirst(), Last: resp.GetLast()})
	}
	return resp, err
}

func (r *recordedClock) ObserveLamport(ctx context.Context, in *v1.ObserveLamportRequest, opts ...grpc.CallOption) (*v1.ObserveLamportResponse, error) {
	c := r.h.Invoke(r.client, linearize.LamportObserve{Clock: in.GetClock(), Timestamp: in.GetTimestamp()})
	resp, err := r.ClockServiceClient.ObserveLamport(ctx, in, opts...)
	if err != nil {
		end(c, err)
	} else {
		c.Return(linearize.Value{V: resp.GetTimestamp()})
	}
	return resp, err
}

func (r *recordedClock) GetLamport(ctx context.Context, in *v1.GetLamportRequest, opts ...grpc.CallOption) (*v1.GetLamportResponse, error) {
	c := r.h.Invoke(r.client, linearize.LamportGet{Clock: in.GetClock()})
	resp, err := r.ClockServiceClient.GetLamport(ctx, in, opts...)
	if err != nil {
		end(c, err)
	} else {
		c.Return(linearize.Value{V: resp.GetTimestamp()})
	}
	return resp, err
}
