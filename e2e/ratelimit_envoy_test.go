package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// awayFromWindowEdges waits out the end of the current hour when it is
// near: the example files count in hour and day windows aligned to the
// epoch, and a case must not straddle two of them.
func awayFromWindowEdges(t *testing.T) {
	t.Helper()
	if left := time.Hour - time.Duration(time.Now().UnixNano())%time.Hour; left < 30*time.Second {
		time.Sleep(left + time.Second) // real time: the next hour's windows start empty
	}
}

type envoyEntry struct{ k, v string }

func envoyDesc(entries ...envoyEntry) *rlcommon.RateLimitDescriptor {
	d := &rlcommon.RateLimitDescriptor{}
	for _, e := range entries {
		d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: e.k, Value: e.v})
	}
	return d
}

// TestEnvoyShouldRateLimit: Envoy's ShouldRateLimit with envoyproxy/ratelimit
// files in the shape of its documented examples, every case asserted, on
// two sidecars sharing one Redis.
func TestEnvoyShouldRateLimit(t *testing.T) {
	r := testharness.StartRedis(t)
	dir := filepath.Join(moduleRoot(t), "e2e", "testdata", "ratelimit-envoy")
	cfg := brkConfig(t, fmt.Sprintf(`envoy_ratelimit:
  files: [%q, %q, %q]
  response_headers: true
`, filepath.Join(dir, "mongo.yaml"), filepath.Join(dir, "messaging.yaml"), filepath.Join(dir, "edge.yaml")))
	bin := testharness.BuildSidecar(t)
	a := rlsv3.NewRateLimitServiceClient(testharness.StartSidecar(t, bin, "--config", cfg, "--redis-url", r.URL()).Conn(t))
	b := rlsv3.NewRateLimitServiceClient(testharness.StartSidecar(t, bin, "--config", cfg, "--redis-url", r.URL()).Conn(t))
	ctx := ctxT(t, 2*time.Minute)
	awayFromWindowEdges(t)

	call := func(t *testing.T, c rlsv3.RateLimitServiceClient, domain string, hits uint32, ds ...*rlcommon.RateLimitDescriptor) *rlsv3.RateLimitResponse {
		t.Helper()
		resp, err := c.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: domain, Descriptors: ds, HitsAddend: hits})
		if err != nil {
			t.Fatalf("ShouldRateLimit(%s): %v", domain, err)
		}
		if len(resp.GetStatuses()) != len(ds) {
			t.Fatalf("%d statuses for %d descriptors", len(resp.GetStatuses()), len(ds))
		}
		return resp
	}
	// expect checks one descriptor's status: code, and when limit > 0 the
	// limit and what remains; limit 0 means no limit applied.
	expect := func(t *testing.T, st *rlsv3.RateLimitResponse_DescriptorStatus, code rlsv3.RateLimitResponse_Code, limit, remaining uint32) {
		t.Helper()
		if st.GetCode() != code || st.GetCurrentLimit().GetRequestsPerUnit() != limit || st.GetLimitRemaining() != remaining {
			t.Fatalf("status %v, want %v limit %d remaining %d", st, code, limit, remaining)
		}
		if limit > 0 && (st.GetDurationUntilReset().AsDuration() <= 0 || st.GetDurationUntilReset().AsDuration() > 24*time.Hour) {
			t.Fatalf("duration_until_reset %v", st.GetDurationUntilReset())
		}
	}
	const OK, OVER = rlsv3.RateLimitResponse_OK, rlsv3.RateLimitResponse_OVER_LIMIT

	t.Run("value limits, shared by the sidecars", func(t *testing.T) {
		users := envoyDesc(envoyEntry{"database", "users"})
		for i, c := range []rlsv3.RateLimitServiceClient{a, b, a} {
			resp := call(t, c, "mongo_cps", 0, users)
			expect(t, resp.GetStatuses()[0], OK, 3, uint32(2-i))
		}
		resp := call(t, b, "mongo_cps", 0, users)
		expect(t, resp.GetStatuses()[0], OVER, 3, 0)
		if resp.GetOverallCode() != OVER {
			t.Fatalf("overall %v", resp.GetOverallCode())
		}
		// Another value has its own limit and count; an unknown value none.
		resp = call(t, a, "mongo_cps", 0, envoyDesc(envoyEntry{"database", "default"}), envoyDesc(envoyEntry{"database", "orders"}))
		expect(t, resp.GetStatuses()[0], OK, 2, 1)
		expect(t, resp.GetStatuses()[1], OK, 0, 0)
		if resp.GetOverallCode() != OK {
			t.Fatalf("overall %v", resp.GetOverallCode())
		}
	})

	t.Run("nested descriptors and keys without a value", func(t *testing.T) {
		marketing := func(to string) *rlcommon.RateLimitDescriptor {
			return envoyDesc(envoyEntry{"message_type", "marketing"}, envoyEntry{"to_number", to})
		}
		for i := range 5 {
			expect(t, call(t, a, "messaging", 0, marketing("2061111111")).GetStatuses()[0], OK, 5, uint32(4-i))
		}
		expect(t, call(t, b, "messaging", 0, marketing("2061111111")).GetStatuses()[0], OVER, 5, 0)
		// Each number counts on its own.
		expect(t, call(t, b, "messaging", 0, marketing("2062222222")).GetStatuses()[0], OK, 5, 4)
		// The top-level to_number limit is a different descriptor.
		expect(t, call(t, a, "messaging", 0, envoyDesc(envoyEntry{"to_number", "2061111111"})).GetStatuses()[0], OK, 7, 6)
		// A descriptor that stops above a limit, or goes deeper than the
		// file, has none.
		expect(t, call(t, a, "messaging", 0, envoyDesc(envoyEntry{"message_type", "marketing"})).GetStatuses()[0], OK, 0, 0)
		deeper := envoyDesc(envoyEntry{"to_number", "2061111111"}, envoyEntry{"carrier", "x"})
		expect(t, call(t, a, "messaging", 0, deeper).GetStatuses()[0], OK, 0, 0)
	})

	t.Run("hits_addend", func(t *testing.T) {
		d := envoyDesc(envoyEntry{"to_number", "2063333333"})
		expect(t, call(t, a, "messaging", 3, d).GetStatuses()[0], OK, 7, 4)
		d.HitsAddend = wrapperspb.UInt64(4) // the descriptor's own wins
		expect(t, call(t, a, "messaging", 3, d).GetStatuses()[0], OK, 7, 0)
		d.HitsAddend = nil
		expect(t, call(t, a, "messaging", 1, d).GetStatuses()[0], OVER, 7, 0)
	})

	t.Run("banned, unlimited, wildcard", func(t *testing.T) {
		ip := func(v string) *rlcommon.RateLimitDescriptor { return envoyDesc(envoyEntry{"remote_address", v}) }
		expect(t, call(t, a, "edge_proxy_per_ip", 0, ip("50.0.0.5")).GetStatuses()[0], OVER, 0, 0)
		for range 6 {
			expect(t, call(t, b, "edge_proxy_per_ip", 0, ip("50.0.0.6")).GetStatuses()[0], OK, 0, 0)
		}
		for i := range 4 {
			expect(t, call(t, a, "edge_proxy_per_ip", 0, ip("10.0.0.1")).GetStatuses()[0], OK, 4, uint32(3-i))
		}
		expect(t, call(t, b, "edge_proxy_per_ip", 0, ip("10.0.0.1")).GetStatuses()[0], OVER, 4, 0)
		expect(t, call(t, b, "edge_proxy_per_ip", 0, ip("10.0.0.2")).GetStatuses()[0], OK, 4, 3)
		path := func(p string) *rlcommon.RateLimitDescriptor { return envoyDesc(envoyEntry{"path", p}) }
		expect(t, call(t, a, "edge_proxy_per_ip", 0, path("/api/orders")).GetStatuses()[0], OK, 2, 1)
		expect(t, call(t, a, "edge_proxy_per_ip", 0, path("/api/orders")).GetStatuses()[0], OK, 2, 0)
		expect(t, call(t, a, "edge_proxy_per_ip", 0, path("/api/orders")).GetStatuses()[0], OVER, 2, 0)
		expect(t, call(t, a, "edge_proxy_per_ip", 0, path("/api/users")).GetStatuses()[0], OK, 2, 1)
		expect(t, call(t, a, "edge_proxy_per_ip", 0, path("/static/x")).GetStatuses()[0], OK, 0, 0)
	})

	t.Run("shadow mode allows and reports", func(t *testing.T) {
		beta := envoyDesc(envoyEntry{"client", "beta"})
		resp := call(t, a, "edge_proxy_per_ip", 0, beta)
		expect(t, resp.GetStatuses()[0], OK, 1, 0)
		if resp.GetDynamicMetadata().GetFields()["shadow_over_limit"].GetBoolValue() {
			t.Fatalf("within the limit, reported over it: %v", resp)
		}
		resp = call(t, a, "edge_proxy_per_ip", 0, beta)
		expect(t, resp.GetStatuses()[0], OK, 1, 0)
		if resp.GetOverallCode() != OK || !resp.GetDynamicMetadata().GetFields()["shadow_over_limit"].GetBoolValue() {
			t.Fatalf("shadow mode over its limit: %v, want OK with shadow_over_limit", resp)
		}
	})

	t.Run("replaces", func(t *testing.T) {
		user := envoyDesc(envoyEntry{"user", "ann"})
		premium := envoyDesc(envoyEntry{"plan", "premium"})
		expect(t, call(t, a, "edge_proxy_per_ip", 0, user).GetStatuses()[0], OK, 1, 0)
		expect(t, call(t, a, "edge_proxy_per_ip", 0, user).GetStatuses()[0], OVER, 1, 0)
		// With the premium descriptor in the request, per_user is replaced.
		resp := call(t, a, "edge_proxy_per_ip", 0, user, premium)
		expect(t, resp.GetStatuses()[0], OK, 0, 0)
		expect(t, resp.GetStatuses()[1], OK, 100, 99)
		if resp.GetOverallCode() != OK {
			t.Fatalf("overall %v", resp.GetOverallCode())
		}
	})

	t.Run("response headers", func(t *testing.T) {
		resp := call(t, a, "mongo_cps", 0, envoyDesc(envoyEntry{"database", "default"}))
		got := map[string]string{}
		for _, h := range resp.GetResponseHeadersToAdd() {
			got[h.GetKey()] = h.GetValue()
		}
		if got["X-RateLimit-Limit"] != "2, 2;w=3600" || got["X-RateLimit-Remaining"] != "0" || got["X-RateLimit-Reset"] == "" {
			t.Fatalf("headers %v", got)
		}
	})

	t.Run("unknown domain and bad requests", func(t *testing.T) {
		resp := call(t, a, "no_such_domain", 0, envoyDesc(envoyEntry{"database", "users"}))
		expect(t, resp.GetStatuses()[0], OK, 0, 0)
		if resp.GetOverallCode() != OK || len(resp.GetResponseHeadersToAdd()) != 0 {
			t.Fatalf("unknown domain: %v", resp)
		}
		for _, req := range []*rlsv3.RateLimitRequest{
			{Descriptors: []*rlcommon.RateLimitDescriptor{envoyDesc(envoyEntry{"a", "b"})}},
			{Domain: "mongo_cps"},
			{Domain: "mongo_cps", Descriptors: []*rlcommon.RateLimitDescriptor{{}}},
			{Domain: "mongo_cps", Descriptors: []*rlcommon.RateLimitDescriptor{envoyDesc(envoyEntry{"", "b"})}},
		} {
			if _, err := a.ShouldRateLimit(ctx, req); func() bool { c, _ := reasonOf(err); return c != codes.InvalidArgument }() {
				t.Errorf("%v: %v, want INVALID_ARGUMENT", req, err)
			}
		}
	})
}
