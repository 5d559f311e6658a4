package e2e

import (
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// scrape fetches and strictly parses a Prometheus text endpoint.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, addr string) scrape {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	return fams
}

// value returns the value of the series name{labels} (counter, gauge, or
// a histogram's sample count), and whether it exists.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	fam, ok := s[name]
	if !ok {
		return 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func (s scrape) mustValue(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.value(name, labels...)
	if !ok {
		var names []string
		for n := range s {
			if strings.HasPrefix(n, "resilience_") {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		t.Fatalf("series %s%v missing; resilience series present: %v", name, labels, names)
	}
	return v
}

// TestMetricsRateLimitAndSemaphore: the rate limiter's decisions by
// limiter, result and source, and the semaphore's acquisitions, waits and
// sessions are exported, every series from the start.
func TestMetricsRateLimitAndSemaphore(t *testing.T) {
	rd := testharness.StartRedis(t)
	maddr := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--redis-url", rd.URL(), "--metrics-listen", maddr,
		"--config", brkConfig(t, "ratelimits:\n  api: {rate: 1, period: 1h, burst: 2}\n  leased: {rate: 1, period: 1h, burst: 10, lease: {batch: 5}}\n"))
	rl := v1.NewRateLimitServiceClient(sc.Conn(t))
	sem := semClient(t, sc)
	ctx := ctxT(t, time.Minute)

	before := scrapeMetrics(t, maddr)
	for _, s := range []struct {
		name   string
		labels []string
	}{
		{"resilience_ratelimit_decisions_total", []string{"limiter", "api", "result", "allowed", "source", "store"}},
		{"resilience_ratelimit_decisions_total", []string{"limiter", "leased", "result", "refused", "source", "degraded"}},
		{"resilience_ratelimit_waiting", nil},
		{"resilience_semaphore_acquire_total", []string{"result", "timeout"}},
		{"resilience_semaphore_waiting", nil},
		{"resilience_semaphore_held", nil},
	} {
		if v := before.mustValue(t, s.name, s.labels...); v != 0 {
			t.Fatalf("%s%v = %v at start", s.name, s.labels, v)
		}
	}

	// api: 2 allowed by the store, 1 refused by it, 2 refused from the
	// memory of the exhausted key. leased: 1 from the store (taking 5),
	// 4 from the lease.
	for i := range 5 {
		if r, err := rl.Take(ctx, &v1.TakeRequest{Limiter: "api", Key: "k"}); err != nil || r.GetAllowed() != (i < 2) {
			t.Fatalf("take %d: %v, %v", i, r, err)
		}
	}
	for i := range 5 {
		if r, err := rl.Take(ctx, &v1.TakeRequest{Limiter: "leased", Key: "k"}); err != nil || !r.GetAllowed() {
			t.Fatalf("leased take %d: %v, %v", i, r, err)
		}
	}
	// Semaphore: acquired, busy, timeout, then a session holding it.
	r, err := sem.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "m", Limit: 1, Ttl: durationpb.New(time.Minute)})
	if err != nil || !r.GetAcquired() {
		t.Fatal(r, err)
	}
	if r, err := sem.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "m", Limit: 1}); err != nil || r.GetAcquired() {
		t.Fatal(r, err)
	}
	if r, err := sem.AcquirePermit(ctx, &v1.AcquirePermitRequest{Name: "m", Limit: 1, WaitTimeout: durationpb.New(200 * time.Millisecond)}); err != nil || r.GetAcquired() {
		t.Fatal(r, err)
	}
	if _, err := sem.ReleasePermit(ctx, &v1.ReleasePermitRequest{Name: "m", PermitId: r.GetPermit().GetPermitId()}); err != nil {
		t.Fatal(err)
	}
	stream, err := sem.HoldPermit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.HoldPermitRequest{Msg: &v1.HoldPermitRequest_Acquire_{Acquire: &v1.HoldPermitRequest_Acquire{Name: "m", Limit: 1}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetAcquired() == nil {
		t.Fatal(m, err)
	}

	after := scrapeMetrics(t, maddr)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"resilience_ratelimit_decisions_total", []string{"limiter", "api", "result", "allowed", "source", "store"}, 2},
		{"resilience_ratelimit_decisions_total", []string{"limiter", "api", "result", "refused", "source", "store"}, 1},
		{"resilience_ratelimit_decisions_total", []string{"limiter", "api", "result", "refused", "source", "cached"}, 2},
		{"resilience_ratelimit_decisions_total", []string{"limiter", "leased", "result", "allowed", "source", "store"}, 1},
		{"resilience_ratelimit_decisions_total", []string{"limiter", "leased", "result", "allowed", "source", "lease"}, 4},
		{"resilience_semaphore_acquire_total", []string{"result", "acquired"}, 2}, // the call and the session
		{"resilience_semaphore_acquire_total", []string{"result", "busy"}, 1},
		{"resilience_semaphore_acquire_total", []string{"result", "timeout"}, 1},
		{"resilience_semaphore_wait_seconds", nil, 1},
		{"resilience_semaphore_held", nil, 1},
		{"resilience_semaphore_waiting", nil, 0},
	} {
		if got := after.mustValue(t, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}
	testkit.Eventually(t, 10*time.Second, "resilience_semaphore_held back to 0 after the session ended", func() bool {
		return scrapeMetrics(t, maddr).mustValue(t, "resilience_semaphore_held") == 0
	})
}

func TestMetricsLock(t *testing.T) {
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	maddr := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL(), "--metrics-listen", maddr)
	c := lockClient(t, sc)
	ctx := ctxT(t, time.Minute)

	before := scrapeMetrics(t, maddr)
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "resilience_store_up", "resilience_lock_held"} {
		before.mustValue(t, name)
	}
	if v := before.mustValue(t, "resilience_store_up"); v != 1 {
		t.Fatalf("store_up = %v with Redis running", v)
	}

	// 1 acquired, 2 busy, 1 timeout (a wait that ends without the lock).
	r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "m", Ttl: durationpb.New(time.Hour)})
	if err != nil || !r.GetAcquired() {
		t.Fatal(r, err)
	}
	for range 2 {
		if _, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "m"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "m", WaitTimeout: durationpb.New(200 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	stream, err := c.HoldLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: &v1.HoldLockRequest_Acquire{Key: "held"}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetAcquired() == nil {
		t.Fatal(m, err)
	}

	after := scrapeMetrics(t, maddr)
	delta := func(name string, labels ...string) float64 {
		b, _ := before.value(name, labels...)
		return after.mustValue(t, name, labels...) - b
	}
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"resilience_lock_acquire_total", []string{"result", "acquired"}, 2}, // the call and the session
		{"resilience_lock_acquire_total", []string{"result", "busy"}, 2},
		{"resilience_lock_acquire_total", []string{"result", "timeout"}, 1},
		{"resilience_lock_wait_seconds", nil, 1},
		{"resilience_lock_held", nil, 1},
		{"grpc_server_handled_total", []string{"grpc_method", "AcquireLock", "grpc_code", "OK"}, 4},
	}
	for _, c := range checks {
		if got := delta(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := delta("resilience_store_latency_seconds", "op", "lock.acquire"); got < 5 {
		t.Errorf("store latency samples for lock.acquire moved by %v, want >= 5", got)
	}

	// The session ends: the held gauge goes back down.
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}
	testkit.Eventually(t, 10*time.Second, "resilience_lock_held back to 0 after the session ended", func() bool {
		return scrapeMetrics(t, maddr).mustValue(t, "resilience_lock_held") == 0
	})

	// Store down: resilience_store_up turns 0.
	rd.Kill()
	testkit.Eventually(t, 20*time.Second, "resilience_store_up 0 with Redis killed", func() bool {
		return scrapeMetrics(t, maddr).mustValue(t, "resilience_store_up") == 0
	})
}
