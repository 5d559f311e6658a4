package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

// exported names every series the registry can export, including the
// suffixes of histograms.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New()
	// Touch every vector once so Gather lists it.
	m.ObserveLockAcquire(metrics.LockAcquired, true, 0)
	m.ObserveIdempotency("started")
	m.ObserveStore("op", 0)
	m.BreakerState.WithLabelValues("b").Set(0)
	m.BreakerTransitions.WithLabelValues("b", "open").Inc()
	m.UpstreamRequests.WithLabelValues("u", "200").Inc()
	m.UpstreamLatency.WithLabelValues("u").Observe(0)
	m.SagaTotal.WithLabelValues("COMPLETED").Inc()
	m.InitRateLimiters("api")
	m.ObserveSemaphoreAcquire(metrics.LockAcquired, true, 0)
	m.GRPC.InitializeMetrics(grpc.NewServer(grpc.UnaryInterceptor(m.GRPC.UnaryServerInterceptor())))
	healthServer := grpc.NewServer()
	healthpb.RegisterHealthServer(healthServer, health.NewServer())
	m.GRPC.InitializeMetrics(healthServer)
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		n := f.GetName()
		names[n] = true
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			names[n+s] = true
		}
	}
	return names
}

func TestDashboardUsesOnlyExportedSeries(t *testing.T) {
	names := exported(t)
	b, err := os.ReadFile("../../deploy/grafana/resilience-sidecar.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	series := regexp.MustCompile(`\b(resilience_[a-z_]+|grpc_server_[a-z_]+)\b`)
	seen := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, n := range series.FindAllString(tg.Expr, -1) {
				seen++
				if !names[n] {
					t.Errorf("panel %q uses %s, which the sidecar does not export", p.Title, n)
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("dashboard references no series")
	}
}

func TestNamesArePrefixedAndNilIsSafe(t *testing.T) {
	for n := range exported(t) {
		if !strings.HasPrefix(n, "resilience_") && !strings.HasPrefix(n, "grpc_") &&
			!strings.HasPrefix(n, "go_") && !strings.HasPrefix(n, "process_") {
			t.Errorf("unexpected series name %s", n)
		}
	}
	var m *metrics.Metrics // a nil *Metrics records nothing and does not panic
	m.ObserveLockAcquire(metrics.LockBusy, false, 0)
	m.LockSessionHeld(1)
	m.ObserveIdempotency("completed")
	m.ObserveStore("x", 0)
	m.SetStoreUp(true)
	m.InitRateLimiters("api")
	m.ObserveRateLimit("api", true, metrics.RateLimitLease)
	m.RateLimitWaiter(1)
	m.ObserveSemaphoreAcquire(metrics.LockTimeout, true, 0)
	m.SemaphoreWaiter(1)
	m.SemaphoreSessionHeld(1)
	_ = prometheus.Labels{}
}
