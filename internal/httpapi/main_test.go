package httpapi

import (
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }
