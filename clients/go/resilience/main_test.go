package resilience_test

import (
	"os"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// TestMain starts the real sidecar binary on the embedded store and points
// SIDECAR_ADDR at it, so the package's tests and Examples run against a
// real sidecar over a real socket, as an application would; once it is
// stopped, goroutines left over fail the run.
func TestMain(m *testing.M) {
	testkit.MainWith(m, func(tb *testkit.MainTB) {
		sc := testharness.StartSidecar(tb, testharness.BuildSidecar(tb))
		if err := os.Setenv("SIDECAR_ADDR", sc.Addr()); err != nil {
			tb.Fatalf("%v", err)
		}
	})
}
