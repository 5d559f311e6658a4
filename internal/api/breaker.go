package api

import (
	"context"
	"encoding/base64"
	"log/slog"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// Bounds of the breaker API (DESIGN.md section 4, Circuit breakers).
const (
	MinPermitTTL          = time.Millisecond
	MaxReportDuration     = 24 * time.Hour
	DefaultListPageSize   = 50
	MaxListPageSize       = 100
	MinExecuteTimeout     = time.Millisecond
	maxMethodBytes        = 16
	maxPageTokenBytes     = 1024
	maxExecuteHeaderCount = upstream.MaxHeaders
)

// BreakerServer implements resiliencev1.BreakerServiceServer.
type BreakerServer struct {
	v1.UnimplementedBreakerServiceServer
	svc *breaker.Service
	up  *upstream.Caller
	log *slog.Logger
}

// NewBreakerServer serves svc, and ExecuteCall through up.
func NewBreakerServer(svc *breaker.Service, up *upstream.Caller, log *slog.Logger) *BreakerServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &BreakerServer{svc: svc, up: up, log: log}
}

func (s *BreakerServer) fail(ctx context.Context, err error) error { return toStatus(ctx, s.log, err) }

// ValidateAllowCall checks an AllowCallRequest and returns the permit TTL.
func ValidateAllowCall(r *v1.AllowCallRequest) (time.Duration, error) {
	var v violations
	v.key("breaker", r.GetBreaker())
	ttl := v.duration("permit_ttl", r.GetPermitTtl(), breaker.DefaultPermitTTL, MinPermitTTL, breaker.MaxPermitTTL)
	return ttl, v.err()
}

// AllowCall implements BreakerServiceServer.
func (s *BreakerServer) AllowCall(ctx context.Context, r *v1.AllowCallRequest) (*v1.AllowCallResponse, error) {
	ttl, err := ValidateAllowCall(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	// A failed Allow leaves no permit behind: the service hands back
	// whatever the store may have granted (breaker.Service.Allow).
	d, err := s.svc.Allow(ctx, r.GetBreaker(), ttl)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if d.Allowed && ctx.Err() != nil {
		// The caller is gone: the permit could not reach it. Hand it
		// back now rather than let it hold a probe's slot until it
		// expires as a failure.
		s.svc.Release(ctx, d.PermitID)
		return nil, s.fail(ctx, ctx.Err())
	}
	resp := &v1.AllowCallResponse{Allowed: d.Allowed, State: statePB(d.State), Degraded: d.Degraded}
	if d.Allowed {
		resp.PermitId = d.PermitID
		resp.PermitExpireTime = timestamppb.New(d.PermitExpire)
	} else {
		resp.RetryAfter = durationpb.New(d.RetryAfter)
	}
	return resp, nil
}

// ValidateReportCall checks a ReportCallRequest and returns its outcome and
// duration (-1 when unset).
func ValidateReportCall(r *v1.ReportCallRequest) (breaker.Outcome, time.Duration, error) {
	var v violations
	switch id := r.GetPermitId(); {
	case id == "":
		v.add("permit_id", "must not be empty")
	case len(id) > breaker.MaxPermitIDLen:
		v.add("permit_id", "must be at most %d bytes, got %d", breaker.MaxPermitIDLen, len(id))
	default:
		if _, err := breaker.ParsePermit(id); err != nil {
			v.add("permit_id", "must be a permit_id returned by AllowCall")
		}
	}
	var o breaker.Outcome
	switch r.GetOutcome() {
	case v1.CallOutcome_CALL_OUTCOME_SUCCESS:
		o = breaker.Success
	case v1.CallOutcome_CALL_OUTCOME_FAILURE:
		o = breaker.Failure
	case v1.CallOutcome_CALL_OUTCOME_IGNORED:
		o = breaker.Ignored
	default:
		v.add("outcome", "must be SUCCESS, FAILURE or IGNORED, got %v", r.GetOutcome())
	}
	dur := v.duration("duration", r.GetDuration(), -1, 0, MaxReportDuration)
	return o, dur, v.err()
}

// ReportCall implements BreakerServiceServer.
func (s *BreakerServer) ReportCall(ctx context.Context, r *v1.ReportCallRequest) (*v1.ReportCallResponse, error) {
	o, dur, err := ValidateReportCall(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	res, err := s.svc.Report(ctx, r.GetPermitId(), o, dur)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.ReportCallResponse{State: statePB(res.State), Counted: res.Counted, Degraded: res.Degraded}, nil
}

// ValidateExecuteCall checks the shape of an ExecuteCallRequest; the
// upstream caller checks the target (upstream, path, headers, body size).
func ValidateExecuteCall(r *v1.ExecuteCallRequest) (upstream.Request, error) {
	var v violations
	v.key("upstream", r.GetUpstream())
	if m := r.GetMethod(); len(m) > maxMethodBytes {
		v.add("method", "must be at most %d bytes, got %d", maxMethodBytes, len(m))
	}
	if n := len(r.GetHeaders()); n > maxExecuteHeaderCount {
		v.add("headers", "at most %d headers, got %d", maxExecuteHeaderCount, n)
	}
	if k := r.GetIdempotencyKey(); len(k) > upstream.MaxIdempotencyKey {
		v.add("idempotency_key", "must be at most %d bytes, got %d", upstream.MaxIdempotencyKey, len(k))
	}
	for _, f := range []struct{ name, val string }{{"path", r.GetPath()}, {"query", r.GetQuery()}} {
		if !utf8.ValidString(f.val) {
			v.add(f.name, "must be valid UTF-8")
		}
	}
	req := upstream.Request{
		Upstream:       r.GetUpstream(),
		Method:         r.GetMethod(),
		Path:           r.GetPath(),
		Query:          r.GetQuery(),
		Body:           r.GetBody(),
		Timeout:        v.duration("timeout", r.GetTimeout(), upstream.DefaultCallTimeout, MinExecuteTimeout, upstream.MaxCallTimeout),
		IdempotencyKey: r.GetIdempotencyKey(),
	}
	for _, h := range r.GetHeaders() {
		req.Headers = append(req.Headers, upstream.Header{Name: h.GetName(), Value: h.GetValue()})
	}
	return req, v.err()
}

// ExecuteCall implements BreakerServiceServer.
func (s *BreakerServer) ExecuteCall(ctx context.Context, r *v1.ExecuteCallRequest) (*v1.ExecuteCallResponse, error) {
	req, err := ValidateExecuteCall(r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp, err := s.up.Do(ctx, req)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &v1.ExecuteCallResponse{
		Status:       int32(resp.Status),
		Body:         resp.Body,
		Attempts:     int32(resp.Attempts),
		BreakerState: statePB(resp.BreakerState),
	}
	for _, h := range resp.Headers {
		out.Headers = append(out.Headers, &v1.HttpHeader{Name: h.Name, Value: h.Value})
	}
	return out, nil
}

// GetBreaker implements BreakerServiceServer.
func (s *BreakerServer) GetBreaker(ctx context.Context, r *v1.GetBreakerRequest) (*v1.GetBreakerResponse, error) {
	var v violations
	v.key("breaker", r.GetBreaker())
	if err := v.err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	info, err := s.svc.Get(ctx, r.GetBreaker())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.GetBreakerResponse{Breaker: breakerPB(info)}, nil
}

// ListBreakers implements BreakerServiceServer. The page token is the
// last name of the previous page, base64url-encoded.
func (s *BreakerServer) ListBreakers(ctx context.Context, r *v1.ListBreakersRequest) (*v1.ListBreakersResponse, error) {
	var v violations
	size := int(r.GetPageSize())
	switch {
	case size == 0:
		size = DefaultListPageSize
	case size < 0 || size > MaxListPageSize:
		v.add("page_size", "must be between 0 (default %d) and %d, got %d", DefaultListPageSize, MaxListPageSize, size)
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
	infos, more, err := s.svc.List(ctx, after, size)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	resp := &v1.ListBreakersResponse{}
	for _, info := range infos {
		resp.Breakers = append(resp.Breakers, breakerPB(info))
	}
	if more && len(infos) > 0 {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(infos[len(infos)-1].Name))
	}
	return resp, nil
}

// ResetBreaker implements BreakerServiceServer.
func (s *BreakerServer) ResetBreaker(ctx context.Context, r *v1.ResetBreakerRequest) (*v1.ResetBreakerResponse, error) {
	var v violations
	v.key("breaker", r.GetBreaker())
	v.label("reason", r.GetReason())
	if err := v.err(); err != nil {
		return nil, s.fail(ctx, err)
	}
	info, err := s.svc.Reset(ctx, r.GetBreaker(), r.GetReason())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &v1.ResetBreakerResponse{Breaker: breakerPB(info)}, nil
}

func statePB(s breaker.State) v1.BreakerState {
	switch s {
	case breaker.Closed:
		return v1.BreakerState_BREAKER_STATE_CLOSED
	case breaker.Open:
		return v1.BreakerState_BREAKER_STATE_OPEN
	case breaker.HalfOpen:
		return v1.BreakerState_BREAKER_STATE_HALF_OPEN
	}
	return v1.BreakerState_BREAKER_STATE_UNSPECIFIED
}

func breakerPB(info breaker.Info) *v1.Breaker {
	p := info.Policy
	scope := v1.BreakerScope_BREAKER_SCOPE_LOCAL
	if p.Scope == breaker.Shared {
		scope = v1.BreakerScope_BREAKER_SCOPE_SHARED
	}
	c := info.Counts
	out := &v1.Breaker{
		Name:     info.Name,
		State:    statePB(info.State),
		Declared: info.Declared,
		Degraded: info.Degraded,
		Policy: &v1.BreakerPolicy{
			Scope:               scope,
			ConsecutiveFailures: uint32(p.ConsecutiveFailures),
			FailureRate:         p.FailureRate,
			Window:              durationpb.New(p.Window),
			MinCalls:            uint32(p.MinCalls),
			SlowCallRate:        p.SlowCallRate,
			OpenDuration:        durationpb.New(p.OpenDuration),
			HalfOpenMaxCalls:    uint32(p.HalfOpenMaxCalls),
			MinReporters:        uint32(p.MinReporters),
		},
		Counts: &v1.BreakerCounts{
			Calls:               uint32(c.Calls),
			Failures:            uint32(c.Failures),
			SlowCalls:           uint32(c.SlowCalls),
			ConsecutiveFailures: uint32(c.ConsecutiveFailures),
			HalfOpenInFlight:    uint32(c.HalfOpenInFlight),
			HalfOpenSuccesses:   uint32(c.HalfOpenSuccesses),
			OutstandingPermits:  uint32(c.OutstandingPermits),
			FailureReporters:    uint32(c.FailureReporters),
		},
	}
	if p.SlowCallDuration > 0 {
		out.Policy.SlowCallDuration = durationpb.New(p.SlowCallDuration)
	}
	if !info.NextTransition.IsZero() {
		out.NextTransitionTime = timestamppb.New(info.NextTransition)
	}
	return out
}
