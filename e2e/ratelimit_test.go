package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// rlSidecars starts n sidecars with the ratelimits section yaml and
// returns a client of each.
func rlSidecars(t *testing.T, n int, yaml string, args ...string) ([]v1.RateLimitServiceClient, []*testharness.Sidecar) {
	t.Helper()
	cs, scs, _ := rlSidecarsMetrics(t, n, yaml, false, args...)
	return cs, scs
}

// rlSidecarsMetrics is rlSidecars, each sidecar serving /metrics at the
// returned addresses when metrics is set.
func rlSidecarsMetrics(t *testing.T, n int, yaml string, metrics bool, args ...string) ([]v1.RateLimitServiceClient, []*testharness.Sidecar, []string) {
	t.Helper()
	bin := testharness.BuildSidecar(t)
	cfg := brkConfig(t, yaml)
	cs := make([]v1.RateLimitServiceClient, n)
	scs := make([]*testharness.Sidecar, n)
	var maddrs []string
	for i := range cs {
		a := append([]string{"--config", cfg}, args...)
		if metrics {
			maddrs = append(maddrs, testharness.FreeAddr(t))
			a = append(a, "--metrics-listen", maddrs[i])
		}
		scs[i] = testharness.StartSidecar(t, bin, a...)
		cs[i] = v1.NewRateLimitServiceClient(scs[i].Conn(t))
	}
	return cs, scs, maddrs
}

// loadDuration is how long the exactness tests hammer each limiter:
// E2E_RATELIMIT_SECONDS (the 10 s by default).
func loadDuration(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv("E2E_RATELIMIT_SECONDS")
	if v == "" {
		return 10 * time.Second
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("E2E_RATELIMIT_SECONDS=%q: want a whole number of seconds >= 1", v)
	}
	return time.Duration(n) * time.Second
}

// decisions sums resilience_ratelimit_decisions_total of limiter over the
// sidecars' metrics, by source.
func decisions(t *testing.T, maddrs []string, limiter string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, a := range maddrs {
		m := scrapeMetrics(t, a)
		for _, src := range []string{"store", "cached", "lease", "degraded"} {
			for _, res := range []string{"allowed", "refused"} {
				out[src] += m.mustValue(t, "resilience_ratelimit_decisions_total", "limiter", limiter, "result", res, "source", src)
			}
		}
	}
	return out
}

// minus is a-b by key.
func minus(a, b map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range a {
		out[k] = v - b[k]
	}
	return out
}

// admission is one allowed Take as the client saw it: sent before, and
// answered after, the store admitted it.
type admission struct{ sent, got time.Time }

// hammer runs clientsPer goroutines on each sidecar, each taking cost 1
// from limiter's key in a loop for d, and returns the allowed takes.
func hammer(t *testing.T, cs []v1.RateLimitServiceClient, clientsPer int, limiter string, d time.Duration) []admission {
	t.Helper()
	return hammerPaced(t, cs, clientsPer, limiter, d, 0)
}

// hammerPaced is hammer with each client pausing pause between its takes.
func hammerPaced(t *testing.T, cs []v1.RateLimitServiceClient, clientsPer int, limiter string, d, pause time.Duration) []admission {
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
					if pause > 0 {
						time.Sleep(pause) // real time: a client that calls at its own pace, below the limit
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
// (500/s, burst 50), one sliding window (500 per 100ms) and one leasing
// GCRA limiter for E2E_RATELIMIT_SECONDS each; no interval holds more
// admissions than the algorithm allows (for the leasing one, plus its
// tolerance), on one Redis and, for GCRA, on a 3-master Cluster.
func TestRateLimitExactness(t *testing.T) {
	const yaml = `ratelimits:
  gcra: {rate: 500, burst: 50}
  sliding: {algorithm: sliding_window, limit: 50, window: 100ms}
  leased: {rate: 500, burst: 50, lease: {batch: 10, tolerance: 30, ttl: 1s}}
`
	run := loadDuration(t)
	stores := map[string]func(t *testing.T) []string{
		"redis": func(t *testing.T) []string { return []string{"--redis-url", testharness.StartRedis(t).URL()} },
		"cluster": func(t *testing.T) []string {
			return []string{"--redis-mode", "cluster", "--redis-url", testharness.StartCluster(t, 3).URL()}
		},
	}
	gcraBound := func(d time.Duration) float64 { return 50 + 500*d.Seconds() }
	for _, store := range []string{"redis", "cluster"} {
		t.Run(store, func(t *testing.T) {
			cs, _, maddrs := rlSidecarsMetrics(t, 3, yaml, true, stores[store](t)...)
			algos := []struct {
				limiter string
				bound   func(time.Duration) float64
				rate    float64 // admissions per second at saturation
			}{
				{"gcra", gcraBound, 500},
				{"sliding", func(d time.Duration) float64 { return 50 * float64(d/(100*time.Millisecond)+1) }, 500},
				{"leased", func(d time.Duration) float64 { return gcraBound(d) + 30 }, 500},
			}
			if store == "cluster" {
				algos = algos[:1]
			}
			for _, a := range algos {
				before := decisions(t, maddrs, a.limiter)
				adm := hammer(t, cs, 60, a.limiter, run)
				by := minus(decisions(t, maddrs, a.limiter), before)
				excess, at := worstWindow(adm, a.bound)
				t.Logf("%s on %s: %d admitted in %v (%.0f/s); tightest interval %s, %.0f under the bound; decisions by source %v",
					a.limiter, store, len(adm), run, float64(len(adm))/run.Seconds(), at, -excess, by)
				if excess > 0 {
					t.Errorf("%s: %s: %.0f more than the algorithm allows", a.limiter, at, excess)
				}
				// The limiter was saturated, not starved: it refused
				// takes, and admitted a good part of its capacity (not
				// all of it: on a loaded machine the clients' takes come
				// in bunches, and a bucket or window idle between two
				// bunches does not keep what it could have admitted).
				if refused := float64(len(adm)) < by["store"]+by["cached"]+by["lease"]; !refused {
					t.Errorf("%s: nothing refused; the load never reached the limit", a.limiter)
				}
				if min := a.rate * run.Seconds() / 4; float64(len(adm)) < min {
					t.Errorf("%s: only %d admitted, want at least %.0f", a.limiter, len(adm), min)
				}
			}
		})
	}
}

// TestRateLimitLeaseHotKey: a hot key taken below its limit by 3 sidecars
// (8 clients each, paced): without a lease every allowed take is a script;
// with one (batch 10) most are answered from the sidecars' leases, and no
// interval admits more than the algorithm's bound plus the tolerance.
func TestRateLimitLeaseHotKey(t *testing.T) {
	const yaml = `ratelimits:
  plain: {rate: 500, burst: 50}
  leased: {rate: 500, burst: 50, lease: {batch: 10, tolerance: 30, ttl: 1s}}
`
	cs, _, maddrs := rlSidecarsMetrics(t, 3, yaml, true, "--redis-url", testharness.StartRedis(t).URL())
	const run = 3 * time.Second
	by := map[string]map[string]float64{}
	for _, limiter := range []string{"plain", "leased"} {
		before := decisions(t, maddrs, limiter)
		adm := hammerPaced(t, cs, 8, limiter, run, 50*time.Millisecond)
		by[limiter] = minus(decisions(t, maddrs, limiter), before)
		tol := map[string]float64{"plain": 0, "leased": 30}[limiter]
		excess, at := worstWindow(adm, func(d time.Duration) float64 { return 50 + 500*d.Seconds() + tol })
		t.Logf("%s: %d admitted in %v; decisions by source %v; tightest interval %s, %.0f under the bound", limiter, len(adm), run, by[limiter], at, -excess)
		if excess > 0 {
			t.Errorf("%s: %s: %.0f more than the bound", limiter, at, excess)
		}
		if len(adm) == 0 {
			t.Fatalf("%s: nothing admitted", limiter)
		}
	}
	if p := by["plain"]; p["lease"] != 0 || p["store"] == 0 {
		t.Errorf("plain limiter: decisions by source %v, want all from the store (or cached)", p)
	}
	if l := by["leased"]; l["lease"] <= l["store"] {
		t.Errorf("leased limiter: decisions by source %v, want most from leases", l)
	}
}

// TestRateLimitWaitersFIFOAcrossSidecars: waiting takes from two sidecars
// are served in the order they reached the store, one emission interval
// (gcra) or one window (windows) apart, each reserving its cost: the gcra
// key's TAT moves by exactly one interval per waiter, the fixed window's
// reservations and the sliding window's log grow by one.
func TestRateLimitWaitersFIFOAcrossSidecars(t *testing.T) {
	r := testharness.StartRedis(t)
	cs, _ := rlSidecars(t, 2, "ratelimits:\n  fifo: {rate: 1, burst: 1}\n  fixed: {algorithm: fixed_window, limit: 1, window: 1s}\n"+
		"  sliding: {algorithm: sliding_window, limit: 1, window: 1s}\n", "--redis-url", r.URL())
	rdb := r.Client(t)
	keys := ratelimit.NewRedisStore(nil, "default", 0)
	ctx := ctxT(t, time.Minute)
	cases := []struct {
		limiter string
		// reserved is how far the key's reservations went: the TAT in µs
		// (one interval, 1e6 µs, per waiter) or the count reserved in
		// later windows (one per waiter).
		reserved func() float64
		step     float64
	}{
		{"fifo", func() float64 {
			v, err := rdb.Get(ctx, keys.Keys("fifo", "k", ratelimit.GCRA)[0]).Float64()
			if err != nil {
				t.Fatalf("GET TAT: %v", err)
			}
			return v
		}, 1e6},
		{"fixed", func() float64 {
			h, err := rdb.HGetAll(ctx, keys.Keys("fixed", "k", ratelimit.FixedWindow)[0]).Result()
			if err != nil {
				t.Fatalf("HGETALL: %v", err)
			}
			n := 0.0
			for f, v := range h {
				if strings.HasPrefix(f, "r") {
					x, _ := strconv.ParseFloat(v, 64)
					n += x
				}
			}
			return n
		}, 1},
		{"sliding", func() float64 {
			n, err := rdb.ZCard(ctx, keys.Keys("sliding", "k", ratelimit.SlidingWindow)[0]).Result()
			if err != nil {
				t.Fatalf("ZCARD: %v", err)
			}
			return float64(n)
		}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.limiter, func(t *testing.T) {
			if resp, err := cs[0].Take(ctx, &v1.TakeRequest{Limiter: tc.limiter, Key: "k"}); err != nil || !resp.GetAllowed() {
				t.Fatalf("drain: %v, %v", resp, err)
			}
			base := tc.reserved()
			const waiters = 4
			order := make(chan int, waiters)
			var wg sync.WaitGroup
			for i := range waiters {
				wg.Go(func() {
					resp, err := cs[i%2].Take(ctx, &v1.TakeRequest{Limiter: tc.limiter, Key: "k", WaitTimeout: durationpb.New(30 * time.Second)})
					if err != nil || !resp.GetAllowed() {
						t.Errorf("waiter %d: %v, %v", i, resp, err)
					}
					order <- i
				})
				// Its reservation is in the store before the next waiter starts.
				want := base + float64(i+1)*tc.step
				testkit.Eventually(t, 10*time.Second, fmt.Sprintf("waiter %d's reservation", i), func() bool { return tc.reserved() >= want-tc.step/1e6 })
				if got := tc.reserved(); got > want+tc.step/1e6 {
					t.Fatalf("after waiter %d the reservations reach %v past the drain, want %v", i, got-base, want-base)
				}
			}
			wg.Wait()
			close(order)
			i := 0
			for got := range order {
				if got != i {
					t.Fatalf("waiter %d served as number %d: not first come, first served", got, i)
				}
				i++
			}
		})
	}
}

// TestRateLimitWaitersCountUnderMaxWaiters: a Take that must wait counts
// under max_waiters; past it, RESOURCE_EXHAUSTED/LIMIT_EXCEEDED, while a
// waiting Take whose cost fits at once is answered without waiting.
func TestRateLimitWaitersCountUnderMaxWaiters(t *testing.T) {
	cs, _ := rlSidecars(t, 1, "ratelimits:\n  slow: {rate: 1, period: 10s, burst: 1}\n",
		"--redis-url", testharness.StartRedis(t).URL(), "--max-waiters", "2")
	c := cs[0]
	ctx := ctxT(t, time.Minute)
	if resp, err := c.Take(ctx, &v1.TakeRequest{Limiter: "slow", Key: "k"}); err != nil || !resp.GetAllowed() {
		t.Fatalf("drain: %v, %v", resp, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(cancel)
	for range 2 {
		wg.Go(func() {
			_, err := c.Take(wctx, &v1.TakeRequest{Limiter: "slow", Key: "k", WaitTimeout: durationpb.New(50 * time.Second)})
			if status.Code(err) != codes.Canceled {
				t.Errorf("waiter: %v, want cancelled by the test", err)
			}
		})
	}
	// Both waiters hold the max_waiters slots once their reservations
	// moved the key's retry_after past 20 s.
	testkit.EventuallyNil(t, 10*time.Second, "two waiters", func() error {
		g, err := c.GetLimit(ctx, &v1.GetLimitRequest{Limiter: "slow", Key: "k"})
		if err != nil {
			return err
		}
		if g.GetRetryAfter().AsDuration() < 20*time.Second {
			return fmt.Errorf("retry_after %v", g.GetRetryAfter().AsDuration())
		}
		return nil
	})
	_, err := c.Take(ctx, &v1.TakeRequest{Limiter: "slow", Key: "k", WaitTimeout: durationpb.New(50 * time.Second)})
	if code, reason := reasonOf(err); code != codes.ResourceExhausted || reason != "LIMIT_EXCEEDED" {
		t.Fatalf("third waiter: %v, want RESOURCE_EXHAUSTED/LIMIT_EXCEEDED", err)
	}
	if resp, err := c.Take(ctx, &v1.TakeRequest{Limiter: "slow", Key: "other", WaitTimeout: durationpb.New(50 * time.Second)}); err != nil || !resp.GetAllowed() {
		t.Fatalf("a waiting take that fits at once: %v, %v", resp, err)
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
