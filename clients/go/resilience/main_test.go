package resilience_test

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// TestMain starts the real sidecar binary on the embedded store and points
// SIDECAR_ADDR at it, so the package's tests and Examples run against a
// real sidecar over a real socket, as an application would.
func TestMain(m *testing.M) {
	tb := &mainTB{}
	sc := testharness.StartSidecar(tb, testharness.BuildSidecar(tb))
	os.Setenv("SIDECAR_ADDR", sc.Addr())
	code := m.Run()
	tb.cleanup()
	os.Exit(code)
}

// mainTB lets TestMain use the harness, which expects a testing.TB.
type mainTB struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (*mainTB) Helper() {}
func (t *mainTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *mainTB) Fatalf(format string, args ...any) {
	t.failed = true
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	t.cleanup()
	os.Exit(1)
}
func (*mainTB) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (t *mainTB) Failed() bool                  { return t.failed }
func (t *mainTB) cleanup() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
