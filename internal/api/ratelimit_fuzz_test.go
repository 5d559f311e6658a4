package api

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
)

// rlServer serves two limiters on a memory store: "api" (gcra, 1 per hour,
// burst 5, max_cost 3), "win" (sliding window, 2 per hour) and "fast"
// (gcra, 1 per second).
func rlServer(t testing.TB) *RateLimitServer {
	t.Helper()
	svc, err := ratelimit.NewService(ratelimit.Options{Store: ratelimit.NewMemoryStore(nil), Limiters: ratelimit.Config{
		"api":  {Rate: 1, Period: time.Hour, Burst: 5, MaxCost: 3},
		"win":  {Algorithm: ratelimit.SlidingWindow, Limit: 2, Window: time.Hour},
		"fast": {Rate: 1, Burst: 1},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return NewRateLimitServer(svc, slog.New(slog.DiscardHandler))
}

// violated returns the fields an INVALID_ARGUMENT names.
func violated(err error) map[string]bool {
	st, _ := status.FromError(err)
	out := map[string]bool{}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out[v.GetField()] = true
			}
		}
	}
	return out
}

func TestRateLimitHandlers(t *testing.T) {
	s := rlServer(t)
	ctx := t.Context()
	r, err := s.Take(ctx, &v1.TakeRequest{Limiter: "api", Key: "k", Cost: 3})
	if err != nil || !r.GetAllowed() || r.GetRemaining() != 2 || r.GetLimit() != 5 || r.GetRetryAfter() != nil {
		t.Fatalf("Take: %v, %v", r, err)
	}
	r, err = s.Take(ctx, &v1.TakeRequest{Limiter: "api", Key: "k", Cost: 3})
	if err != nil || r.GetAllowed() || r.GetRetryAfter().AsDuration() <= 0 || r.GetCached() {
		t.Fatalf("refused Take: %v, %v", r, err)
	}
	r, err = s.Take(ctx, &v1.TakeRequest{Limiter: "api", Key: "k", Cost: 3})
	if err != nil || r.GetAllowed() || !r.GetCached() {
		t.Fatalf("cached refusal: %v, %v", r, err)
	}
	g, err := s.GetLimit(ctx, &v1.GetLimitRequest{Limiter: "win", Key: "k"})
	want := &v1.RateLimiter{Name: "win", Algorithm: v1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW, Limit: 2,
		Window: durationpb.New(time.Hour), MaxCost: 2, MaxLimit: 2, StoreDown: v1.RateLimitStoreDown_RATE_LIMIT_STORE_DOWN_FAIL_OPEN, ExpectedSidecars: 1}
	if err != nil || !g.GetAllowed() || g.GetRemaining() != 2 || g.GetLimiter().String() != want.String() {
		t.Fatalf("GetLimit: %v, %v", g, err)
	}
	for _, call := range []func() error{
		func() error { _, err := s.Take(ctx, &v1.TakeRequest{Limiter: "nope"}); return err },
		func() error { _, err := s.GetLimit(ctx, &v1.GetLimitRequest{Limiter: "nope"}); return err },
	} {
		st, _ := status.FromError(call())
		var info *errdetails.ErrorInfo
		for _, d := range st.Details() {
			if i, ok := d.(*errdetails.ErrorInfo); ok {
				info = i
			}
		}
		if st.Code() != codes.NotFound || info.GetReason() != ReasonLimiterUnknown {
			t.Fatalf("undeclared: %v", st)
		}
	}
	if _, err := s.Take(ctx, &v1.TakeRequest{Limiter: "api", Cost: 4}); !violated(err)["cost"] {
		t.Fatalf("cost over max_cost: %v", err)
	}
	// Overrides within the declared bounds (max_burst defaults to burst 5).
	r, err = s.Take(ctx, &v1.TakeRequest{Limiter: "api", Key: "o", Burst: 2, Cost: 2})
	if err != nil || !r.GetAllowed() || r.GetLimit() != 2 || r.GetRemaining() != 0 {
		t.Fatalf("burst override: %v, %v", r, err)
	}
	for _, c := range []struct {
		req    *v1.TakeRequest
		fields []string
	}{
		{&v1.TakeRequest{Limiter: "api", Burst: 6}, []string{"burst"}},
		{&v1.TakeRequest{Limiter: "api", Burst: 1, Cost: 2}, []string{"cost"}},
		{&v1.TakeRequest{Limiter: "api", Rate: 2}, []string{"rate"}},
		{&v1.TakeRequest{Limiter: "api", Limit: 1, Cost: 9}, []string{"limit", "cost"}},
		{&v1.TakeRequest{Limiter: "win", Rate: 1}, []string{"rate"}},
		{&v1.TakeRequest{Limiter: "win", Limit: 3}, []string{"limit"}},
	} {
		_, err := s.Take(ctx, c.req)
		got := violated(err)
		for _, f := range c.fields {
			if !got[f] || len(got) != len(c.fields) {
				t.Errorf("%v: %v, want violations of %v", c.req, err, c.fields)
			}
		}
	}
	// A cancelled waiter gets CANCELED.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Take(cctx, &v1.TakeRequest{Limiter: "fast", Key: "w"}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Take(cctx, &v1.TakeRequest{Limiter: "fast", Key: "w", WaitTimeout: durationpb.New(time.Minute)})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled wait: %v", err)
	}
}

// FuzzValidateTake: a TakeRequest is accepted exactly when the oracle
// (restating the bounds of ratelimit.proto) accepts it, and a refusal
// names every bad field.
func FuzzValidateTake(f *testing.F) {
	f.Add("api", "k", int64(0), int64(0), int32(0), false)
	f.Add("", "\xff", int64(-1), int64(-1), int32(0), true)
	f.Add("api", "", int64(4), int64(600), int32(1), true)
	f.Add("a\x7fb", "k", int64(1), int64(1), int32(-5), true)
	f.Fuzz(func(t *testing.T, limiter, key string, cost, sec int64, nanos int32, withWait bool) {
		req := &v1.TakeRequest{Limiter: limiter, Key: key, Cost: cost}
		if withWait {
			req.WaitTimeout = &durationpb.Duration{Seconds: sec, Nanos: nanos}
		}
		want := map[string]bool{}
		if !oracleText(limiter, true) {
			want["limiter"] = true
		}
		if !oracleText(key, false) {
			want["key"] = true
		}
		if cost < 0 {
			want["cost"] = true
		}
		if withWait {
			d := time.Duration(sec)*time.Second + time.Duration(nanos)
			if !oracleDurationValid(sec, nanos) || sec > 600 || d < 0 || d > 10*time.Minute {
				want["wait_timeout"] = true
			}
		}
		gotCost, wait, err := ValidateTake(req)
		if len(want) == 0 {
			if err != nil {
				t.Fatalf("%v refused: %v", req, err)
			}
			if gotCost != max(cost, 1) || wait < 0 || wait > MaxTakeWait {
				t.Fatalf("%v: cost %d wait %v", req, gotCost, wait)
			}
			return
		}
		var v *violationsError
		if !errors.As(err, &v) {
			t.Fatalf("%v accepted (want %v refused)", req, want)
		}
		got := violated(toStatus(t.Context(), slog.New(slog.DiscardHandler), err))
		for field := range want {
			if !got[field] {
				t.Fatalf("%v: %v does not name %s", req, got, field)
			}
		}
		for field := range got {
			if !want[field] {
				t.Fatalf("%v: names %s, which the oracle accepts", req, field)
			}
		}
	})
}

// FuzzValidateShouldRateLimit: a request is accepted exactly when it has a
// valid domain and 1-64 descriptors of 1-32 entries with valid keys and
// values, and a refusal names the bad parts.
func FuzzValidateShouldRateLimit(f *testing.F) {
	f.Add("edge", "remote_address", "10.0.0.1", 1, 1, uint32(0), false)
	f.Add("", "", "\xff", 0, 40, uint32(9), true)
	f.Fuzz(func(t *testing.T, domain, key, value string, descs, entries int, unit uint32, negative bool) {
		descs, entries = descs%70, entries%40
		req := &rlsv3.RateLimitRequest{Domain: domain}
		for range max(descs, 0) {
			d := &rlcommon.RateLimitDescriptor{IsNegativeHits: negative}
			for range max(entries, 0) {
				d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: key, Value: value})
			}
			if unit > 0 {
				d.Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 5, Unit: typev3.RateLimitUnit(unit % 8)}
			}
			req.Descriptors = append(req.Descriptors, d)
		}
		ok := oracleText(domain, true) && descs >= 1 && descs <= 64 && entries >= 1 && entries <= 32 &&
			oracleText(key, true) && oracleText(value, false) && !negative && (unit == 0 || unit%8 >= 1 && unit%8 <= 6)
		ds, err := ValidateShouldRateLimit(req)
		if ok != (err == nil) {
			t.Fatalf("%v: err %v, oracle ok=%v", req, err, ok)
		}
		if ok && len(ds) != descs {
			t.Fatalf("%d descriptors converted of %d", len(ds), descs)
		}
		if err != nil && toStatus(t.Context(), slog.New(slog.DiscardHandler), err) == nil {
			t.Fatal("no status")
		}
	})
}
