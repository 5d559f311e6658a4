package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
)

func TestRateLimits(t *testing.T) {
	c, err := load(t, `
ratelimits:
  api: {rate: 2.5, max_burst: 10}
  exports: {algorithm: sliding_window, limit: 3, window: 1h, store_down: fail_closed}
  legacy: {algorithm: fixed_window, limit: 100, window: 1m, max_cost: 10, store_down: local, expected_sidecars: 4}
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := ratelimit.Config{
		"api": {Algorithm: ratelimit.GCRA, Rate: 2.5, Period: time.Second, Burst: 3, MaxCost: 3, MaxRate: 2.5, MaxBurst: 10,
			StoreDown: ratelimit.FailOpen, ExpectedSidecars: 1},
		"exports": {Algorithm: ratelimit.SlidingWindow, Limit: 3, Window: time.Hour, MaxCost: 3, MaxLimit: 3, StoreDown: ratelimit.FailClosed,
			ExpectedSidecars: 1},
		"legacy": {Algorithm: ratelimit.FixedWindow, Limit: 100, Window: time.Minute, MaxCost: 10, MaxLimit: 100, StoreDown: ratelimit.Local,
			ExpectedSidecars: 4},
	}
	for name, w := range want {
		if got := c.RateLimits[name]; got != w {
			t.Errorf("ratelimits.%s = %+v\n want %+v", name, got, w)
		}
	}
	if len(c.RateLimits) != len(want) {
		t.Errorf("%d limiters, want %d", len(c.RateLimits), len(want))
	}
}

// TestRateLimitsExample loads examples/ratelimits.yaml, which the README
// tour runs with.
func TestRateLimitsExample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "examples", "ratelimits.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := load(t, string(data), nil)
	if err != nil || len(c.RateLimits) != 3 {
		t.Fatalf("example: %d limiters, %v", len(c.RateLimits), err)
	}
}

func TestRateLimitErrors(t *testing.T) {
	tests := []struct {
		name, yamlText, field string
		want                  []string
	}{
		{"algorithm", "ratelimits:\n  a: {algorithm: leaky, rate: 1}\n", "ratelimits.a.algorithm", []string{`got "leaky"`, "line 2"}},
		{"rate missing", "ratelimits:\n  a: {burst: 3}\n", "ratelimits.a.rate", []string{"(0, 1e+09]", "got 0"}},
		{"rate negative", "ratelimits:\n  a: {rate: -2}\n", "ratelimits.a.rate", []string{"got -2"}},
		{"rate NaN", "ratelimits:\n  a: {rate: .nan}\n", "ratelimits.a.rate", []string{"NaN"}},
		{"rate text", "ratelimits:\n  a: {rate: fast}\n", "ratelimits.a.rate", []string{`got "fast"`}},
		{"period zero", "ratelimits:\n  a: {rate: 1, period: 0s}\n", "ratelimits.a.period", []string{"between 1ms"}},
		{"period no unit", "ratelimits:\n  a: {rate: 1, period: 10}\n", "ratelimits.a.period", []string{"duration"}},
		{"burst zero", "ratelimits:\n  a: {rate: 1, burst: 0}\n", "ratelimits.a.burst", []string{"between 1", "got 0"}},
		{"burst fraction", "ratelimits:\n  a: {rate: 1, burst: 1.5}\n", "ratelimits.a.burst", []string{"whole number"}},
		{"limit on gcra", "ratelimits:\n  a: {rate: 1, limit: 5}\n", "ratelimits.a.limit", []string{"for sliding_window and fixed_window"}},
		{"window on gcra", "ratelimits:\n  a: {rate: 1, window: 1s}\n", "ratelimits.a.window", []string{"for sliding_window and fixed_window"}},
		{"limit missing", "ratelimits:\n  a: {algorithm: fixed_window, window: 1s}\n", "ratelimits.a.limit", []string{"between 1 and"}},
		{"window missing", "ratelimits:\n  a: {algorithm: sliding_window, limit: 5}\n", "ratelimits.a.window", []string{"between 1ms"}},
		{"rate on window", "ratelimits:\n  a: {algorithm: sliding_window, limit: 5, window: 1s, rate: 2}\n", "ratelimits.a.rate", []string{"is for gcra"}},
		{"max_cost zero", "ratelimits:\n  a: {rate: 5, max_cost: 0}\n", "ratelimits.a.max_cost", []string{"capacity 5", "got 0"}},
		{"max_cost over", "ratelimits:\n  a: {rate: 5, max_cost: 6}\n", "ratelimits.a.max_cost", []string{"got 6"}},
		{"store_down", "ratelimits:\n  a: {rate: 5, store_down: deny}\n", "ratelimits.a.store_down", []string{`got "deny"`}},
		{"max_burst below burst", "ratelimits:\n  a: {rate: 5, max_burst: 2}\n", "ratelimits.a.max_burst", []string{"between the burst 5"}},
		{"max_limit zero", "ratelimits:\n  a: {algorithm: fixed_window, limit: 5, window: 1s, max_limit: 0}\n", "ratelimits.a.max_limit", []string{"between the limit 5", "got 0"}},
		{"expected_sidecars zero", "ratelimits:\n  a: {rate: 5, expected_sidecars: 0}\n", "ratelimits.a.expected_sidecars", []string{"between 1 and 10000"}},
		{"unknown key", "ratelimits:\n  a: {rate: 5, requests_per_unit: 3}\n", "ratelimits.a.requests_per_unit", []string{"unknown key", "known keys: algorithm"}},
		{"not a mapping", "ratelimits:\n  a: 5\n", "ratelimits.a", []string{"must be a mapping"}},
		{"control character in name", "ratelimits:\n  \"a\\nb\": {rate: 1}\n", "ratelimits", []string{"control characters"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.yamlText, nil)
			mustFieldError(t, err, tc.field, tc.want...)
		})
	}
}

func TestEnvoyRateLimitSection(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := load(t, "envoy_ratelimit:\n  files: ["+good+"]\n  response_headers: true\n", nil)
	if err != nil || len(c.EnvoyRateLimit.Files) != 1 || !c.EnvoyRateLimit.ResponseHeaders {
		t.Fatalf("%+v, %v", c.EnvoyRateLimit, err)
	}
	_, err = load(t, "envoy_ratelimit:\n  files: ["+good+", "+filepath.Join(dir, "none.yaml")+"]\n", nil)
	mustFieldError(t, err, "envoy_ratelimit.files[1]", "none.yaml", "line 2")
	_, err = load(t, "envoy_ratelimit:\n  file: x.yaml\n", nil)
	mustFieldError(t, err, "envoy_ratelimit.file", "unknown key")
}
