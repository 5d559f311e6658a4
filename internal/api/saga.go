package api

import (
	"context"
	"encoding/base64"
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
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// Bounds of the saga API (DESIGN.md section 4, Sagas).
const (
	DefaultSagaTimeout = time.Hour
	MinSagaTimeout     = 100 * time.Millisecond
	MaxSagaTimeout     = 30 * 24 * time.Hour
	// MaxSagaMetadataEntries, MaxSagaMetadataKeyBytes and
	// MaxSagaMetadataValueBytes bound a saga's metadata.
	MaxSagaMetadataEntries    = 32
	MaxSagaMetadataKeyBytes   = 128
	MaxSagaMetadataValueBytes = 512
	DefaultSagaPageSize       = 50
	MaxSagaPageSize           = 100
)

// SagaServer implements resiliencev1.SagaServiceServer.
type SagaServer struct {
	v1.UnimplementedSagaServiceServer
	svc *saga.Service
	log *slog.Logger
}

// NewSagaServer serves svc.
func NewSagaServer(svc *saga.Service, log *slog.Logger) *SagaServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &SagaServer{svc: svc, log: log}
}

func (s *SagaServer) fail(ctx context.Context, err error) error { return toStatus(ctx, s.log, err) }

// text checks an optional string: at most max bytes of UTF-8 without
// control characters.
func (v *violations) text(field, s string, max int) {
	switch {
	case len(s) > max:
		v.add(field, "must be at most %d bytes, got %d", max, len(s))
	case !utf8.ValidString(s):
		v.add(field, "must be valid UTF-8")
	case strings.ContainsFunc(s, unicode.IsControl):
		v.add(field, "must not contain control characters")
	}
}

// ValidateStartSaga checks a StartSagaRequest and returns the saga to start.
func ValidateStartSaga(r *v1.StartSagaRequest) (saga.NewSaga, error) {
	var v violations
	v.key("saga_id", r.GetSagaId())
	v.key("name", r.GetName())
	n := saga.NewSaga{
		ID: r.GetSagaId(), Name: r.GetName(),
		Timeout: v.duration("timeout", r.GetTimeout(), DefaultSagaTimeout, MinSagaTimeout, MaxSagaTimeout),
	}
	md := r.GetMetadata()
	if len(md) > MaxSagaMetadataEntries {
		v.add("metadata", "must have at most %d entries, got %d", MaxSagaMetadataEntries, len(md))
	} else {
		for _, k := range slices.Sorted(maps.Keys(md)) {
			if k == "" {
				v.add("metadata", "keys must not be empty")
				continue
			}
			v.text("metadata", k, MaxSagaMetadataKeyBytes)
			v.text("metadata", md[k], MaxSagaMetadataValueBytes)
		}
		n.Metadata = md
	}
	return n, v.err()
}

// ValidateRecordStep checks the shape of a RecordStepRequest and returns
// its compensation; the service checks it against the upstreams (name,
// method, path, headers, body size) as the upstream caller will.
func ValidateRecordStep(r *v1.RecordStepRequest) (saga.Compensation, error) {
	var v violations
	v.key("saga_id", r.GetSagaId())
	v.key("step", r.GetStep())
	pc := r.GetCompensation()
	if pc == nil {
		v.add("compensation", "must be set: the HTTP call that undoes the step")
		return saga.Compensation{}, v.err()
	}
	v.key("compensation.upstream", pc.GetUpstream())
	if m := pc.GetMethod(); len(m) > maxMethodBytes {
		v.add("compensation.method", "must be at most %d bytes, got %d", maxMethodBytes, len(m))
	}
	for _, f := range []struct{ name, val string }{{"compensation.path", pc.GetPath()}, {"compensation.query", pc.GetQuery()}} {
		if !utf8.ValidString(f.val) {
			v.add(f.name, "must be valid UTF-8")
		}
	}
	if n := len(pc.GetHeaders()); n > upstream.MaxHeaders {
		v.add("compensation.headers", "at most %d headers, got %d", upstream.MaxHeaders, n)
	}
	c := saga.Compensation{Upstream: pc.GetUpstream(), Method: pc.GetMethod(), Path: pc.GetPath(), Query: pc.GetQuery(), Body: pc.GetBody()}
	for _, h := range pc.GetHeaders() {
		if !utf8.ValidString(h.GetName()) || !utf8.ValidString(h.GetValue()) {
			v.add("compensation.headers", "names and values must be valid UTF-8")
			break
		}
		c.Headers = append(c.Headers, upstream.Header{Name: h.GetName(), Value: h.GetValue()})
	}
	return c, v.err()
}

func validateSagaID(id string) error {
	var v violations
	v.key("saga_id", id)
	return v.err()
}

// StartSaga implements SagaServiceServer.
func (s *SagaServer) StartSaga(ctx context.Context, r *v1.StartSagaRequest) (*v1.StartSagaResponse, error) {
	n, err := ValidateStartSaga(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	sg, created, err := s.svc.Start(ctx, n)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.StartSagaResponse{Saga: sagaPB(sg), Created: created}, nil
}

// RecordStep implements SagaServiceServer.
func (s *SagaServer) RecordStep(ctx context.Context, r *v1.RecordStepRequest) (*v1.RecordStepResponse, error) {
	c, err := ValidateRecordStep(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	idx, created, err := s.svc.RecordStep(ctx, r.GetSagaId(), r.GetStep(), c)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.RecordStepResponse{Index: uint32(idx), Created: created}, nil
}

// CompleteSaga implements SagaServiceServer.
func (s *SagaServer) CompleteSaga(ctx context.Context, r *v1.CompleteSagaRequest) (*v1.CompleteSagaResponse, error) {
	if err := validateSagaID(r.GetSagaId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	sg, err := s.svc.Complete(ctx, r.GetSagaId())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.CompleteSagaResponse{Saga: sagaPB(sg)}, nil
}

// AbortSaga implements SagaServiceServer.
func (s *SagaServer) AbortSaga(ctx context.Context, r *v1.AbortSagaRequest) (*v1.AbortSagaResponse, error) {
	var v violations
	v.key("saga_id", r.GetSagaId())
	v.label("reason", r.GetReason())
	if err := v.err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	sg, err := s.svc.Abort(ctx, r.GetSagaId(), r.GetReason())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.AbortSagaResponse{Saga: sagaPB(sg)}, nil
}

// GetSaga implements SagaServiceServer.
func (s *SagaServer) GetSaga(ctx context.Context, r *v1.GetSagaRequest) (*v1.GetSagaResponse, error) {
	if err := validateSagaID(r.GetSagaId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	sg, err := s.svc.Get(ctx, r.GetSagaId())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.GetSagaResponse{Saga: sagaPB(sg)}, nil
}

// ListSagas implements SagaServiceServer. The page token is the last
// saga_id of the previous page, base64url-encoded.
func (s *SagaServer) ListSagas(ctx context.Context, r *v1.ListSagasRequest) (*v1.ListSagasResponse, error) {
	var v violations
	state, ok := sagaStateFromPB[r.GetState()]
	if !ok {
		v.add("state", "must be a SagaState, got %v", r.GetState())
	}
	size := int(r.GetPageSize())
	switch {
	case size == 0:
		size = DefaultSagaPageSize
	case size < 0 || size > MaxSagaPageSize:
		v.add("page_size", "must be between 0 (default %d) and %d, got %d", DefaultSagaPageSize, MaxSagaPageSize, size)
	}
	var after string
	if tok := r.GetPageToken(); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(tok) > maxPageTokenBytes || len(b) == 0 {
			v.add("page_token", "must be a next_page_token from a previous response")
		}
		after = string(b)
	}
	if err := v.err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	list, more, err := s.svc.List(ctx, state, after, size)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &v1.ListSagasResponse{}
	for _, sg := range list {
		resp.Sagas = append(resp.Sagas, sagaPB(sg))
	}
	if more && len(list) > 0 {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(list[len(list)-1].ID))
	}
	return resp, nil
}

// RetryCompensation implements SagaServiceServer.
func (s *SagaServer) RetryCompensation(ctx context.Context, r *v1.RetryCompensationRequest) (*v1.RetryCompensationResponse, error) {
	if err := validateSagaID(r.GetSagaId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	sg, err := s.svc.RetryCompensation(ctx, r.GetSagaId())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.RetryCompensationResponse{Saga: sagaPB(sg)}, nil
}

var sagaStatePB = map[saga.State]v1.SagaState{
	saga.Running:            v1.SagaState_SAGA_STATE_RUNNING,
	saga.Completed:          v1.SagaState_SAGA_STATE_COMPLETED,
	saga.Compensating:       v1.SagaState_SAGA_STATE_COMPENSATING,
	saga.Compensated:        v1.SagaState_SAGA_STATE_COMPENSATED,
	saga.CompensationFailed: v1.SagaState_SAGA_STATE_COMPENSATION_FAILED,
}

var sagaStateFromPB = map[v1.SagaState]saga.State{v1.SagaState_SAGA_STATE_UNSPECIFIED: 0}

func init() {
	for k, v := range sagaStatePB {
		sagaStateFromPB[v] = k
	}
}

var stepStatusPB = map[saga.StepStatus]v1.CompensationStatus{
	saga.StepPending:   v1.CompensationStatus_COMPENSATION_STATUS_PENDING,
	saga.StepSucceeded: v1.CompensationStatus_COMPENSATION_STATUS_SUCCEEDED,
	saga.StepFailed:    v1.CompensationStatus_COMPENSATION_STATUS_FAILED,
}

func tsPB(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func sagaPB(s saga.Saga) *v1.Saga {
	out := &v1.Saga{
		SagaId: s.ID, Name: s.Name, State: sagaStatePB[s.State], Metadata: s.Metadata,
		Timeout: durationpb.New(s.Timeout), CreateTime: tsPB(s.CreateTime), UpdateTime: tsPB(s.UpdateTime),
		Deadline: tsPB(s.Deadline), EndTime: tsPB(s.EndTime), ExpireTime: tsPB(s.ExpireTime),
		Reason: s.Reason, LastError: s.LastError, StepCount: uint32(s.StepCount),
	}
	for _, st := range s.Steps {
		c := st.Compensation
		pc := &v1.Compensation{Upstream: c.Upstream, Method: c.Method, Path: c.Path, Query: c.Query, Body: c.Body}
		for _, h := range c.Headers {
			pc.Headers = append(pc.Headers, &v1.HttpHeader{Name: h.Name, Value: h.Value})
		}
		out.Steps = append(out.Steps, &v1.SagaStep{
			Step: st.Name, Index: uint32(st.Index), Compensation: pc, Status: stepStatusPB[st.Status],
			Attempts: uint32(st.Attempts), LastError: st.LastError,
			RecordTime: tsPB(st.RecordTime), CompensateTime: tsPB(st.CompensateTime),
		})
	}
	return out
}
