package outbox_test

import (
	"os"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
)

// TestMain starts one real PostgreSQL server for every test and example of
// the package, whose URL is DATABASE_URL (as an application would read it),
// and checks for leaked goroutines once it is stopped.
func TestMain(m *testing.M) {
	testkit.MainWith(m, func(tb *testkit.MainTB) {
		pg := testharness.StartPostgres(tb)
		if err := os.Setenv("DATABASE_URL", pg.URL()); err != nil {
			tb.Fatalf("%v", err)
		}
	})
}
