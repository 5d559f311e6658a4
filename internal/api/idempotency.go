package api

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

// Bounds of the idempotency API (DESIGN.md section 4, Idempotency).
const (
	DefaultIdempotencyLeaseTTL  = 30 * time.Second
	MinIdempotencyLeaseTTL      = time.Second
	MaxIdempotencyLeaseTTL      = time.Hour
	DefaultIdempotencyRetention = 24 * time.Hour
	MinIdempotencyRetention     = time.Second
	MaxIdempotencyRetention     = 30 * 24 * time.Hour
	MaxIdempotencyWait          = 5 * time.Minute
	// MaxFingerprintBytes bounds a fingerprint: room for a hash, not a request.
	MaxFingerprintBytes = 128
	// MaxCheckpointBytes bounds a checkpoint's data.
	MaxCheckpointBytes = 64 << 10
	// MaxResultMetadataEntries and MaxResultMetadataKeyBytes bound a
	// result's metadata map; its keys and values also count against the
	// result size limit.
	MaxResultMetadataEntries  = 64
	MaxResultMetadataKeyBytes = 256
	// DefaultMaxResultBytes is the default bound on a result's size (data
	// plus metadata keys and values); the sidecar's max_result_bytes.
	DefaultMaxResultBytes = 1 << 20
)

// IdempotencyServer implements resiliencev1.IdempotencyServiceServer.
type IdempotencyServer struct {
	v1.UnimplementedIdempotencyServiceServer
	svc            *idempotency.Service
	log            *slog.Logger
	maxResultBytes int
	// stopping is cancelled when the sidecar shuts down: waits end.
	stopping context.Context
	metrics  *metrics.Metrics
}

// Values of the outcome label of resilience_idempotency_outcome_total.
const (
	idemOutcomeStarted    = "started"
	idemOutcomeInProgress = "in_progress"
	idemOutcomeCompleted  = "completed"
	idemOutcomeMismatch   = "mismatch"
)

// NewIdempotencyServer serves svc, refusing results larger than
// maxResultBytes (DefaultMaxResultBytes when <= 0). Waits in flight when
// stopping is cancelled end with UNAVAILABLE.
func NewIdempotencyServer(stopping context.Context, svc *idempotency.Service, log *slog.Logger, maxResultBytes int, opts ...Option) *IdempotencyServer {
	if maxResultBytes <= 0 {
		maxResultBytes = DefaultMaxResultBytes
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := applyOptions(opts)
	return &IdempotencyServer{svc: svc, log: log, maxResultBytes: maxResultBytes, stopping: stopping, metrics: o.metrics}
}

func (s *IdempotencyServer) fail(ctx context.Context, err error) error {
	if s.stopping.Err() != nil && errors.Is(err, context.Canceled) {
		err = errShuttingDown
	}
	return toStatus(ctx, s.log, err)
}

// idempotencyFingerprint checks a fingerprint: at most MaxFingerprintBytes
// of UTF-8 without control characters; empty is allowed.
func (v *violations) idempotencyFingerprint(field, s string) {
	switch {
	case len(s) > MaxFingerprintBytes:
		v.add(field, "must be at most %d bytes (send a hash of the request, e.g. \"sha256:<hex>\"), got %d", MaxFingerprintBytes, len(s))
	case !utf8.ValidString(s):
		v.add(field, "must be valid UTF-8")
	case strings.ContainsFunc(s, unicode.IsControl):
		v.add(field, "must not contain control characters")
	}
}

// idempotencyLeaseID checks the shape of a lease id returned with STARTED.
func (v *violations) idempotencyLeaseID(field, s string) {
	if len(s) != 32 || strings.IndexFunc(s, func(r rune) bool { return !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') }) >= 0 {
		v.add(field, "must be the 32 hex digits returned with STARTED")
	}
}

// ValidateCheckOrRecordIdempotency checks a CheckOrRecordIdempotencyRequest
// and returns its options.
func ValidateCheckOrRecordIdempotency(r *v1.CheckOrRecordIdempotencyRequest) (idempotency.Options, error) {
	var v violations
	v.key("key", r.GetKey())
	v.idempotencyFingerprint("fingerprint", r.GetFingerprint())
	opts := idempotency.Options{
		Fingerprint: r.GetFingerprint(),
		LeaseTTL:    v.duration("lease_ttl", r.GetLeaseTtl(), DefaultIdempotencyLeaseTTL, MinIdempotencyLeaseTTL, MaxIdempotencyLeaseTTL),
		Retention:   v.duration("retention", r.GetRetention(), DefaultIdempotencyRetention, MinIdempotencyRetention, MaxIdempotencyRetention),
		Wait:        v.duration("wait_timeout", r.GetWaitTimeout(), 0, 0, MaxIdempotencyWait),
	}
	return opts, v.err()
}

// ValidateCompleteIdempotency checks a CompleteIdempotencyRequest against
// the result size limit and returns its result.
func ValidateCompleteIdempotency(r *v1.CompleteIdempotencyRequest, maxResultBytes int) (idempotency.Result, error) {
	var v violations
	v.key("key", r.GetKey())
	v.idempotencyLeaseID("lease_id", r.GetLeaseId())
	res := idempotency.Result{Data: r.GetResult().GetData(), Metadata: r.GetResult().GetMetadata()}
	md := res.Metadata
	if len(md) > MaxResultMetadataEntries {
		v.add("result.metadata", "must have at most %d entries, got %d", MaxResultMetadataEntries, len(md))
	} else {
		for _, k := range slices.Sorted(maps.Keys(md)) {
			val := md[k]
			switch {
			case k == "":
				v.add("result.metadata", "keys must not be empty")
			case len(k) > MaxResultMetadataKeyBytes:
				v.add("result.metadata", "keys must be at most %d bytes, got %d", MaxResultMetadataKeyBytes, len(k))
			case !utf8.ValidString(k) || !utf8.ValidString(val):
				v.add("result.metadata", "keys and values must be valid UTF-8")
			case strings.ContainsFunc(k, unicode.IsControl):
				v.add("result.metadata", "keys must not contain control characters")
			}
		}
	}
	if n := res.Size(); n > maxResultBytes {
		v.add("result", "must be at most %d bytes (data plus metadata keys and values), got %d", maxResultBytes, n)
	}
	return res, v.err()
}

// ValidateCheckpointIdempotency checks a CheckpointIdempotencyRequest and
// returns its checkpoint.
func ValidateCheckpointIdempotency(r *v1.CheckpointIdempotencyRequest) (idempotency.Checkpoint, error) {
	var v violations
	v.key("key", r.GetKey())
	v.idempotencyLeaseID("lease_id", r.GetLeaseId())
	v.key("recovery_point", r.GetRecoveryPoint())
	if n := len(r.GetData()); n > MaxCheckpointBytes {
		v.add("data", "must be at most %d bytes, got %d", MaxCheckpointBytes, n)
	}
	return idempotency.Checkpoint{RecoveryPoint: r.GetRecoveryPoint(), Data: r.GetData()}, v.err()
}

// ValidateReleaseIdempotency checks a ReleaseIdempotencyRequest.
func ValidateReleaseIdempotency(r *v1.ReleaseIdempotencyRequest) error {
	var v violations
	v.key("key", r.GetKey())
	v.idempotencyLeaseID("lease_id", r.GetLeaseId())
	return v.err()
}

// ValidateGetIdempotency checks a GetIdempotencyRequest.
func ValidateGetIdempotency(r *v1.GetIdempotencyRequest) error {
	var v violations
	v.key("key", r.GetKey())
	v.idempotencyFingerprint("fingerprint", r.GetFingerprint())
	return v.err()
}

// CheckOrRecordIdempotency implements IdempotencyServiceServer.
func (s *IdempotencyServer) CheckOrRecordIdempotency(ctx context.Context, r *v1.CheckOrRecordIdempotencyRequest) (*v1.CheckOrRecordIdempotencyResponse, error) {
	opts, err := ValidateCheckOrRecordIdempotency(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	wctx, done := s.withStopping(ctx)
	defer done()
	c, err := s.svc.CheckOrRecord(wctx, r.GetKey(), opts)
	if err != nil {
		if errors.Is(err, idempotency.ErrKeyMismatch) {
			s.metrics.ObserveIdempotency(idemOutcomeMismatch)
		}
		return nil, s.fail(ctx, err)
	}
	resp := &v1.CheckOrRecordIdempotencyResponse{}
	switch c.Outcome {
	case idempotency.Started:
		s.metrics.ObserveIdempotency(idemOutcomeStarted)
		resp.Outcome = v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED
		resp.LeaseId = c.LeaseID
		resp.LeaseExpireTime = timestamppb.New(c.LeaseExpireTime)
		resp.Attempt = uint32(c.Attempt)
		if cp := c.Checkpoint; cp != nil {
			resp.Checkpoint = &v1.IdempotencyCheckpoint{RecoveryPoint: cp.RecoveryPoint, Data: cp.Data, CreateTime: timestamppb.New(cp.Time)}
		}
	case idempotency.InProgress:
		s.metrics.ObserveIdempotency(idemOutcomeInProgress)
		resp.Outcome = v1.CheckOrRecordIdempotencyResponse_OUTCOME_IN_PROGRESS
		resp.LeaseExpireTime = timestamppb.New(c.LeaseExpireTime)
		resp.Attempt = uint32(c.Attempt)
		resp.RetryAfter = durationpb.New(c.RetryAfter)
	case idempotency.Completed:
		s.metrics.ObserveIdempotency(idemOutcomeCompleted)
		resp.Outcome = v1.CheckOrRecordIdempotencyResponse_OUTCOME_COMPLETED
		resp.Result = &v1.IdempotencyResult{Data: c.Result.Data, Metadata: c.Result.Metadata}
		resp.CompleteTime = timestamppb.New(c.CompleteTime)
	}
	return resp, nil
}

// CompleteIdempotency implements IdempotencyServiceServer.
func (s *IdempotencyServer) CompleteIdempotency(ctx context.Context, r *v1.CompleteIdempotencyRequest) (*v1.CompleteIdempotencyResponse, error) {
	res, err := ValidateCompleteIdempotency(r, s.maxResultBytes)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	exp, err := s.svc.Complete(ctx, r.GetKey(), r.GetLeaseId(), res)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.CompleteIdempotencyResponse{ExpireTime: timestamppb.New(exp)}, nil
}

// CheckpointIdempotency implements IdempotencyServiceServer.
func (s *IdempotencyServer) CheckpointIdempotency(ctx context.Context, r *v1.CheckpointIdempotencyRequest) (*v1.CheckpointIdempotencyResponse, error) {
	cp, err := ValidateCheckpointIdempotency(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	exp, err := s.svc.Checkpoint(ctx, r.GetKey(), r.GetLeaseId(), cp)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.CheckpointIdempotencyResponse{LeaseExpireTime: timestamppb.New(exp)}, nil
}

// ReleaseIdempotency implements IdempotencyServiceServer.
func (s *IdempotencyServer) ReleaseIdempotency(ctx context.Context, r *v1.ReleaseIdempotencyRequest) (*v1.ReleaseIdempotencyResponse, error) {
	if err := ValidateReleaseIdempotency(r); err != nil {
		return nil, s.fail(ctx, err)
	}
	if err := s.svc.Release(ctx, r.GetKey(), r.GetLeaseId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.ReleaseIdempotencyResponse{}, nil
}

// GetIdempotency implements IdempotencyServiceServer. It never returns the
// lease id, the result or the checkpoint data.
func (s *IdempotencyServer) GetIdempotency(ctx context.Context, r *v1.GetIdempotencyRequest) (*v1.GetIdempotencyResponse, error) {
	if err := ValidateGetIdempotency(r); err != nil {
		return nil, s.fail(ctx, err)
	}
	info, err := s.svc.Get(ctx, r.GetKey())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &v1.GetIdempotencyResponse{State: v1.GetIdempotencyResponse_STATE_ABSENT}
	if info.State == idempotency.Absent {
		return resp, nil
	}
	switch info.State {
	case idempotency.Running:
		resp.State = v1.GetIdempotencyResponse_STATE_IN_PROGRESS
	case idempotency.LeaseExpired:
		resp.State = v1.GetIdempotencyResponse_STATE_LEASE_EXPIRED
	case idempotency.Done:
		resp.State = v1.GetIdempotencyResponse_STATE_COMPLETED
	}
	resp.FingerprintMatch = info.Fingerprint == r.GetFingerprint()
	resp.Attempts = uint32(info.Attempts)
	resp.CreateTime = timestamppb.New(info.CreateTime)
	resp.UpdateTime = timestamppb.New(info.UpdateTime)
	resp.ExpireTime = timestamppb.New(info.ExpireTime)
	resp.RecoveryPoint = info.RecoveryPoint
	if !info.LeaseExpireTime.IsZero() {
		resp.LeaseExpireTime = timestamppb.New(info.LeaseExpireTime)
	}
	if !info.CompleteTime.IsZero() {
		resp.CompleteTime = timestamppb.New(info.CompleteTime)
	}
	return resp, nil
}

// withStopping returns ctx cancelled also when the sidecar shuts down.
func (s *IdempotencyServer) withStopping(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.stopping, cancel)
	return ctx, func() { stop(); cancel() }
}
