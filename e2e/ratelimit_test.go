package e2e

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// rlSidecars starts n sidecars with the ratelimits section yaml and
// returns a client of each.
func rlSidecars(t *testing.T, n int, yaml string, args ...string) ([]v1.RateLimitServiceClient, []*testharness.Sidecar) {
	t.Helper()
	bin := testharness.BuildSidecar(t)
	cfg := brkConfig(t, yaml)
	cs := make([]v1.RateLimitServiceClient, n)
	scs := make([]*testharness.Sidecar, n)
	for i := range cs {
		scs[i] = testharness.StartSidecar(t, bin, append([]string{"--config", cfg}, args...)...)
		cs[i] = v1.NewRateLimitServiceClient(scs[i].Conn(t))
	}
	return cs, scs
}

// admission is one allowed Take as the client saw it: sent before, and
// answered after, the store admitted it.
type admission struct{ sent, got time.Time }

// hammer runs clientsPer goroutines on each sidecar, each taking cost 1
// from limiter's key in a loop for d, and returns the allowed takes.
func hammer(t *testing.T, cs []v1.RateLimitServiceClient, clientsPer int, limiter string, d time.Duration) []admission {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d+30*time.Second)
	defer cancel()
	stop := time.Now().Add(d)
	var mu sync.Mutex
	var out []admission
	var errs []error
	var wg sync.WaitGroup
	for _, c := range cs {
		for range clientsPer {
			wg.Go(func() {
				var mine []admission
				for time.Now().Before(stop) {
					sent := time.Now()
					r, err := c.Take(ctx, &v1.TakeRequest{Limiter: limiter, Key: "hot"})
					got := time.Now()
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						return
					}
					if r.GetAllowed() {
						mine = append(mine, admission{sent, got})
					}
				}
				mu.Lock()
				out = append(out, mine...)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d takes failed, first: %v", len(errs), errs[0])
	}
	return out
}

// worstWindow checks the allowed takes against bound, the most any
// interval of length t may admit, independently of the sidecars: for each
// interval [a, b] between one take's sending and another's answer, the
// takes sent at or after a and answered by b were certainly admitted
// inside it. It returns the largest excess over the bound (<= 0 when
// none) and the interval where it is.
func worstWindow(adm []admission, bound func(t time.Duration) float64) (excess float64, at string) {
	bySent := slices.Clone(adm)
	sort.Slice(bySent, func(i, j int) bool { return bySent[i].sent.After(bySent[j].sent) })
	excess = -1e18
	var answered []time.Time // answers of the takes sent at or after a, sorted
	for _, s := range bySent {
		a := s.sent
		i := sort.Search(len(answered), func(i int) bool { return !answered[i].Before(s.got) })
		answered = slices.Insert(answered, i, s.got)
		for k, b := range answered {
			if e := float64(k+1) - bound(b.Sub(a)); e > excess {
				excess, at = e, fmt.Sprintf("%d takes in [%s, +%v]", k+1, a.Format("15:04:05.000000"), b.Sub(a))
			}
		}
	}
	return excess, at
}

// TestRateLimitExactness: 3 sidecars x 60 clients hammer one GCRA limiter
// (500/s, burst 50) and one sliding window (500 per 100ms); no interval
// holds more admissions than the algorithm allows, on one Redis and on a
// 3-master Cluster.
func TestRateLimitExactness(t *testing.T) {
	const yaml = `ratelimits:
  gcra: {rate: 500, burst: 50}
  sliding: {algorithm: sliding_window, limit: 50, window: 100ms}
`
	const run = 4 * time.Second // the 10 s, scaled to make test's time
	stores := map[string]func(t *testing.T) []string{
		"redis": func(t *testing.T) []string { return []string{"--redis-url", testharness.StartRedis(t).URL()} },
		"cluster": func(t *testing.T) []string {
			return []string{"--redis-mode", "cluster", "--redis-url", testharness.StartCluster(t, 3).URL()}
		},
	}
	for _, store := range []string{"redis", "cluster"} {
		t.Run(store, func(t *testing.T) {
			cs, _ := rlSidecars(t, 3, yaml, stores[store](t)...)
			algos := []struct {
				limiter string
				bound   func(time.Duration) float64
				rate    float64 // admissions per second at saturation
			}{
				{"gcra", func(d time.Duration) float64 { return 50 + 500*d.Seconds() }, 500},
				{"sliding", func(d time.Duration) float64 { return 50 * float64(d/(100*time.Millisecond)+1) }, 500},
			}
			if store == "cluster" {
				algos = algos[:1]
			}
			for _, a := range algos {
				adm := hammer(t, cs, 60, a.limiter, run)
				excess, at := worstWindow(adm, a.bound)
				t.Logf("%s on %s: %d admitted in %v (%.0f/s); tightest interval %s, %.0f under the bound",
					a.limiter, store, len(adm), run, float64(len(adm))/run.Seconds(), at, -excess)
				if excess > 0 {
					t.Errorf("%s: %s: %.0f more than the algorithm allows", a.limiter, at, excess)
				}
				// The limiter was saturated, not starved: most of its
				// capacity was admitted.
				if min := a.rate * run.Seconds() / 2; float64(len(adm)) < min {
					t.Errorf("%s: only %d admitted, want at least %.0f", a.limiter, len(adm), min)
				}
			}
		})
	}
}

// TestRateLimitStoreDown: with Redis frozen, each store_down mode answers
// as documented, within the store timeout rather than hanging.
func TestRateLimitStoreDown(t *testing.T) {
	r := testharness.StartRedis(t)
	cs, _ := rlSidecars(t, 1, `ratelimits:
  open: {rate: 1, burst: 1, store_down: fail_open}
  closed: {rate: 1, period: 1h, burst: 1, store_down: fail_closed}
  local: {rate: 1, period: 1h, burst: 4, store_down: local, expected_sidecars: 2}
`, "--redis-url", r.URL(), "--store-timeout", "300ms")
	c := cs[0]
	ctx := ctxT(t, 30*time.Second)
	take := func(limiter string) *v1.TakeResponse {
		t.Helper()
		resp, err := c.Take(ctx, &v1.TakeRequest{Limiter: limiter, Key: "k"})
		if err != nil {
			t.Fatalf("Take(%s): %v", limiter, err)
		}
		return resp
	}
	if resp := take("closed"); !resp.GetAllowed() || resp.GetDegraded() {
		t.Fatalf("store up: %v", resp)
	}
	r.Pause()
	t.Cleanup(r.Resume)
	for range 2 {
		start := time.Now()
		if resp := take("open"); !resp.GetAllowed() || !resp.GetDegraded() {
			t.Fatalf("fail_open: %v", resp)
		}
		// The bound: answered within --store-timeout (300ms), with
		// a margin for the call itself on a loaded machine.
		if took := time.Since(start); took > 300*time.Millisecond+time.Second {
			t.Fatalf("degraded answer took %v with the store frozen", took)
		}
		if resp := take("closed"); resp.GetAllowed() || !resp.GetDegraded() || resp.GetRetryAfter().AsDuration() != time.Second {
			t.Fatalf("fail_closed: %v", resp)
		}
	}
	// local: burst 4 over 2 expected sidecars is 2 in this one.
	for i := range 3 {
		resp := take("local")
		if resp.GetAllowed() != (i < 2) || !resp.GetDegraded() || resp.GetLimit() != 2 {
			t.Fatalf("local take %d: %v", i, resp)
		}
	}
	r.Resume()
	// Back on the store: the Take before the freeze still counts there.
	if resp := take("closed"); resp.GetAllowed() || resp.GetDegraded() {
		t.Fatalf("store back: %v", resp)
	}
}

// TestRateLimitBadInput: every field of Take and GetLimit is checked,
// named in the BadRequest, and an undeclared limiter is
// NOT_FOUND/LIMITER_UNKNOWN.
func TestRateLimitBadInput(t *testing.T) {
	cs, _ := rlSidecars(t, 1, "ratelimits:\n  api: {rate: 1, period: 1h, burst: 5, max_cost: 3}\n")
	c := cs[0]
	ctx := ctxT(t, 30*time.Second)
	cases := []struct {
		name  string
		req   *v1.TakeRequest
		field string
	}{
		{"no limiter", &v1.TakeRequest{}, "limiter"},
		{"limiter bad UTF-8", &v1.TakeRequest{Limiter: "\xff"}, "limiter"},
		{"limiter control", &v1.TakeRequest{Limiter: "a\nb"}, "limiter"},
		{"limiter long", &v1.TakeRequest{Limiter: string(make([]byte, 513))}, "limiter"},
		{"key bad UTF-8", &v1.TakeRequest{Limiter: "api", Key: "\xff"}, "key"},
		{"key long", &v1.TakeRequest{Limiter: "api", Key: string(slices.Repeat([]byte("k"), 513))}, "key"},
		{"cost negative", &v1.TakeRequest{Limiter: "api", Cost: -1}, "cost"},
		{"cost over max_cost", &v1.TakeRequest{Limiter: "api", Cost: 4}, "cost"},
		{"wait negative", &v1.TakeRequest{Limiter: "api", WaitTimeout: durationpb.New(-time.Second)}, "wait_timeout"},
		{"wait too long", &v1.TakeRequest{Limiter: "api", WaitTimeout: durationpb.New(11 * time.Minute)}, "wait_timeout"},
		{"wait invalid", &v1.TakeRequest{Limiter: "api", WaitTimeout: &durationpb.Duration{Seconds: 1, Nanos: -1}}, "wait_timeout"},
		{"rate over max_rate", &v1.TakeRequest{Limiter: "api", Rate: 2}, "rate"},
		{"rate negative", &v1.TakeRequest{Limiter: "api", Rate: -1}, "rate"},
		{"burst over max_burst", &v1.TakeRequest{Limiter: "api", Burst: 6}, "burst"},
		{"limit on gcra", &v1.TakeRequest{Limiter: "api", Limit: 1}, "limit"},
		{"cost over the asked burst", &v1.TakeRequest{Limiter: "api", Burst: 1, Cost: 2}, "cost"},
	}
	for _, tc := range cases {
		_, err := c.Take(ctx, tc.req)
		if code, _ := reasonOf(err); code != codes.InvalidArgument || !badField(err, tc.field) {
			t.Errorf("%s: %v, want INVALID_ARGUMENT naming %s", tc.name, err, tc.field)
		}
	}
	for _, req := range []*v1.GetLimitRequest{{}, {Limiter: "api", Key: "\xff"}} {
		if _, err := c.GetLimit(ctx, req); func() bool { code, _ := reasonOf(err); return code != codes.InvalidArgument }() {
			t.Errorf("GetLimit(%v): %v, want INVALID_ARGUMENT", req, err)
		}
	}
	for _, call := range []func() error{
		func() error { _, err := c.Take(ctx, &v1.TakeRequest{Limiter: "undeclared"}); return err },
		func() error { _, err := c.GetLimit(ctx, &v1.GetLimitRequest{Limiter: "undeclared"}); return err },
	} {
		if code, reason := reasonOf(call()); code != codes.NotFound || reason != "LIMITER_UNKNOWN" {
			t.Errorf("undeclared limiter: %v %s, want NOT_FOUND LIMITER_UNKNOWN", code, reason)
		}
	}
	// The bounds themselves are accepted.
	if r, err := c.Take(ctx, &v1.TakeRequest{Limiter: "api", Cost: 3, WaitTimeout: durationpb.New(0)}); err != nil || !r.GetAllowed() {
		t.Fatalf("cost = max_cost: %v, %v", r, err)
	}
	g, err := c.GetLimit(ctx, &v1.GetLimitRequest{Limiter: "api"})
	if err != nil || g.GetRemaining() != 2 || g.GetLimiter().GetBurst() != 5 || g.GetLimiter().GetMaxCost() != 3 ||
		g.GetLimiter().GetAlgorithm() != v1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA {
		t.Fatalf("GetLimit: %v, %v", g, err)
	}
}

// badField reports whether err's BadRequest names field.
func badField(err error, field string) bool {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return true
				}
			}
		}
	}
	return false
}
