package breaker_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// TestForgottenBreakersTakeTheirSeries: 20 000 random breaker names, each
// tripped, probed and closed again, through a service tracking at most 100
// breakers: the per-breaker series (state, transitions) stay bounded by
// the breaker limit, not by the names ever seen.
func TestForgottenBreakersTakeTheirSeries(t *testing.T) {
	const (
		names       = 20_000
		maxBreakers = 100
		open        = time.Second
	)
	ctx := context.Background()
	clk := testkit.NewClock()
	m := metrics.New()
	pol := breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open, HalfOpenMaxCalls: 1}
	s := newService(t, clk, map[string]breaker.Policy{breaker.DefaultName: pol}, func(o *breaker.Options) {
		o.MaxBreakers = maxBreakers
		o.Metrics = m
	})
	rng := rand.New(rand.NewPCG(7, 16))
	call := func(name string, o breaker.Outcome, want breaker.State) {
		t.Helper()
		d, err := s.Allow(ctx, name, time.Minute)
		if err != nil || !d.Allowed {
			t.Fatalf("Allow(%q) = %+v, %v", name, d, err)
		}
		r, err := s.Report(ctx, d.PermitID, o, 0)
		if err != nil || r.State != want {
			t.Fatalf("Report(%q, %v) = %+v, %v; want %v", name, o, r, err, want)
		}
	}
	for i := range names {
		name := fmt.Sprintf("b-%d-%016x", i, rng.Uint64())
		call(name, breaker.Failure, breaker.Open)
		clk.Advance(open + time.Millisecond)
		call(name, breaker.Success, breaker.Closed)
	}

	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]int{}
	for _, f := range families {
		series[f.GetName()] = len(f.GetMetric())
	}
	// Per breaker at most one state series and one transition series per
	// target state (open, half-open, closed).
	if n := series["resilience_breaker_state"]; n == 0 || n > maxBreakers {
		t.Errorf("resilience_breaker_state has %d series after %d names with --max-breakers %d; want 1..%d", n, names, maxBreakers, maxBreakers)
	}
	if n := series["resilience_breaker_transitions_total"]; n == 0 || n > 3*maxBreakers {
		t.Errorf("resilience_breaker_transitions_total has %d series after %d names with --max-breakers %d; want 1..%d", n, names, maxBreakers, 3*maxBreakers)
	}
}
