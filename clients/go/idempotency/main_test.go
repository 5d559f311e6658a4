package idempotency_test

import (
	"os"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// sidecarA and sidecarB are the addresses of two sidecar processes on one
// redis-server, started by TestMain for every test and Example of the
// package: a duplicate sent through B of a request made through A must be
// replayed. SIDECAR_ADDR is sidecarA's, for the Examples.
var sidecarA, sidecarB string

// TestMain starts a real redis-server and two real sidecars on it, then
// runs the tests, stops them, and fails the run if a goroutine is left
// over.
func TestMain(m *testing.M) {
	testkit.MainWith(m, func(tb *testkit.MainTB) {
		rd := testharness.StartRedis(tb)
		bin := testharness.BuildSidecar(tb)
		sidecarA = testharness.StartSidecar(tb, bin, "--redis-url", rd.URL()).Addr()
		sidecarB = testharness.StartSidecar(tb, bin, "--redis-url", rd.URL()).Addr()
		if err := os.Setenv(resilience.EnvAddr, sidecarA); err != nil {
			tb.Fatalf("%v", err)
		}
	})
}

// idemClient returns an IdempotencyServiceClient of a connection from
// resilience.Dial to addr, closed when t ends.
func idemClient(t *testing.T, addr string, opts ...resilience.DialOption) v1.IdempotencyServiceClient {
	t.Helper()
	conn, err := resilience.Dial(append([]resilience.DialOption{resilience.WithAddr(addr)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return v1.NewIdempotencyServiceClient(conn)
}
