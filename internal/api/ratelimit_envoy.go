package api

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
)

// Bounds of ShouldRateLimit requests.
const (
	maxEnvoyDescriptors = 64
	maxEnvoyEntries     = 32
)

// The X-RateLimit-* response headers of ShouldRateLimit.
const (
	HeaderRateLimitLimit     = "X-RateLimit-Limit"
	HeaderRateLimitRemaining = "X-RateLimit-Remaining"
	HeaderRateLimitReset     = "X-RateLimit-Reset"
)

// EnvoyRateLimitServer implements Envoy's
// envoy.service.ratelimit.v3.RateLimitService over the rate limit service.
type EnvoyRateLimitServer struct {
	rlsv3.UnimplementedRateLimitServiceServer
	svc     *ratelimit.Service
	headers bool
	log     *slog.Logger
}

// NewEnvoyRateLimitServer serves svc's Envoy domains; headers adds the
// X-RateLimit-* response headers.
func NewEnvoyRateLimitServer(svc *ratelimit.Service, headers bool, log *slog.Logger) *EnvoyRateLimitServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &EnvoyRateLimitServer{svc: svc, headers: headers, log: log}
}

var envoyUnitNames = map[typev3.RateLimitUnit]string{
	typev3.RateLimitUnit_SECOND: "second", typev3.RateLimitUnit_MINUTE: "minute", typev3.RateLimitUnit_HOUR: "hour",
	typev3.RateLimitUnit_DAY: "day", typev3.RateLimitUnit_MONTH: "month", typev3.RateLimitUnit_YEAR: "year",
}

// ValidateShouldRateLimit checks a RateLimitRequest (a domain, 1-64
// descriptors of 1-32 entries with keys, overrides with a known unit) and
// converts its descriptors.
func ValidateShouldRateLimit(r *rlsv3.RateLimitRequest) ([]ratelimit.EnvoyDescriptor, error) {
	var v violations
	v.key("domain", r.GetDomain())
	ds := r.GetDescriptors()
	switch {
	case len(ds) == 0:
		v.add("descriptors", "must not be empty")
	case len(ds) > maxEnvoyDescriptors:
		v.add("descriptors", "at most %d, got %d", maxEnvoyDescriptors, len(ds))
	}
	out := make([]ratelimit.EnvoyDescriptor, 0, len(ds))
	for i, d := range ds {
		at := "descriptors[" + strconv.Itoa(i) + "]"
		es := d.GetEntries()
		if len(es) == 0 || len(es) > maxEnvoyEntries {
			v.add(at+".entries", "must hold 1-%d entries, got %d", maxEnvoyEntries, len(es))
		}
		ed := ratelimit.EnvoyDescriptor{Hits: -1}
		for j, e := range es {
			v.key(at+".entries["+strconv.Itoa(j)+"].key", e.GetKey())
			v.label(at+".entries["+strconv.Itoa(j)+"].value", e.GetValue())
			ed.Entries = append(ed.Entries, ratelimit.EnvoyEntry{Key: e.GetKey(), Value: e.GetValue()})
		}
		if o := d.GetLimit(); o != nil {
			unit, ok := envoyUnitNames[o.GetUnit()]
			w, _ := ratelimit.EnvoyUnitWindow(unit)
			if m := o.GetUnitMultiplier(); m != nil && m.GetValue() > 1 {
				w *= time.Duration(m.GetValue())
			}
			if !ok {
				v.add(at+".limit.unit", "must be SECOND, MINUTE, HOUR, DAY, MONTH or YEAR, got %v", o.GetUnit())
			}
			ed.Override = &ratelimit.EnvoyLimit{RequestsPerUnit: o.GetRequestsPerUnit(), Unit: unit, Window: w}
		}
		if h := d.GetHitsAddend(); h != nil {
			if h.GetValue() > 1<<32 {
				v.add(at+".hits_addend", "must be at most %d, got %d", uint64(1<<32), h.GetValue())
			}
			ed.Hits = int64(min(h.GetValue(), 1<<32))
		}
		if d.GetIsNegativeHits() {
			v.add(at+".is_negative_hits", "returning hits is not supported")
		}
		out = append(out, ed)
	}
	return out, v.err()
}

// ShouldRateLimit implements Envoy's RateLimitServiceServer.
func (s *EnvoyRateLimitServer) ShouldRateLimit(ctx context.Context, r *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	ds, err := ValidateShouldRateLimit(r)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	sts, err := s.svc.ShouldRateLimit(ctx, r.GetDomain(), ds, r.GetHitsAddend())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	var closest *ratelimit.EnvoyStatus
	for i := range sts {
		st := &sts[i]
		out := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK}
		if st.Limit != nil {
			out.CurrentLimit = &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: st.Limit.RequestsPerUnit, Unit: unitPB(st.Limit.Unit), Name: st.Limit.Name}
			out.LimitRemaining = uint32(min(st.Remaining, int64(^uint32(0))))
			out.DurationUntilReset = durationpb.New(st.ResetAfter)
			if closest == nil || st.OverLimit || st.Remaining < closest.Remaining && !closest.OverLimit {
				closest = st
			}
		}
		if st.OverLimit {
			out.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		if st.ShadowOver {
			// Allowed, and reported where Envoy's access logs can see it.
			resp.DynamicMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{"shadow_over_limit": structpb.NewBoolValue(true)}}
		}
		resp.Statuses = append(resp.Statuses, out)
	}
	if s.headers && closest != nil {
		resp.ResponseHeadersToAdd = []*corev3.HeaderValue{
			{Key: HeaderRateLimitLimit, Value: strconv.FormatUint(uint64(closest.Limit.RequestsPerUnit), 10) +
				", " + strconv.FormatUint(uint64(closest.Limit.RequestsPerUnit), 10) + ";w=" + strconv.FormatInt(int64(closest.Limit.Window.Seconds()), 10)},
			{Key: HeaderRateLimitRemaining, Value: strconv.FormatInt(closest.Remaining, 10)},
			{Key: HeaderRateLimitReset, Value: strconv.FormatInt(int64(closest.ResetAfter.Seconds()+0.999), 10)},
		}
	}
	return resp, nil
}

func unitPB(unit string) rlsv3.RateLimitResponse_RateLimit_Unit {
	return rlsv3.RateLimitResponse_RateLimit_Unit(rlsv3.RateLimitResponse_RateLimit_Unit_value[strings.ToUpper(unit)])
}
