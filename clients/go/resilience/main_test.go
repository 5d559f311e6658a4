package resilience_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
)

// TestMain starts the real sidecar binary on the embedded store and points
// SIDECAR_ADDR at it, so the package's tests and Examples run against a
// real sidecar over a real socket, as an application would; once it is
// stopped, goroutines left over fail the run. Its config declares the
// upstreams ExampleStartSaga's compensations go to ("inventory",
// "payments", "shipping"), all served by one HTTP server that answers
// 204 to everything, and ExampleRateLimited's limiter ("search"). After everything else, a run that is not filtered
// fails when a scenario of clients/scenarios.txt has no passing test
// (checkScenarios).
func TestMain(m *testing.M) {
	testkit.MainWith(m, func(tb *testkit.MainTB) {
		tb.Cleanup(func() { checkScenarios(tb) }) // first registered: runs last
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusNoContent)
		}))
		tb.Cleanup(hs.Close)
		dir, err := os.MkdirTemp("", "resilience-client-test-")
		if err != nil {
			tb.Fatalf("%v", err)
		}
		tb.Cleanup(func() { _ = os.RemoveAll(dir) })
		cfg := filepath.Join(dir, "sidecar.yaml")
		yaml := fmt.Sprintf("upstreams:\n  inventory: {url: %q}\n  payments: {url: %q}\n  shipping: {url: %q}\n", hs.URL, hs.URL, hs.URL) +
			"ratelimits:\n  search: {algorithm: gcra, rate: 1, period: 1h, burst: 2}\n"
		if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
			tb.Fatalf("%v", err)
		}
		sc := testharness.StartSidecar(tb, testharness.BuildSidecar(tb), "--config", cfg)
		if err := os.Setenv("SIDECAR_ADDR", sc.Addr()); err != nil {
			tb.Fatalf("%v", err)
		}
	})
}
