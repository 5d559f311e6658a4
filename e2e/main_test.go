// Package e2e tests the real sidecar binary over real gRPC sockets, on a
// real redis-server, with several sidecar processes where a property spans
// them.
package e2e

import (
	"os"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func TestMain(m *testing.M) {
	// Child-process modes (a lock-holding client that the test kills) run
	// instead of the tests.
	if mode := os.Getenv(childModeEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	testkit.Main(m)
}
