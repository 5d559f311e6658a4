package outbox_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// mainTB is the testharness.TB of TestMain: one real PostgreSQL server
// for every test and example of the package, whose URL is DATABASE_URL
// (as an application would read it).
type mainTB struct {
	cleanups []func()
	failed   bool
}

func (m *mainTB) Helper()                 {}
func (m *mainTB) Cleanup(f func())        { m.cleanups = append(m.cleanups, f) }
func (m *mainTB) Logf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
func (m *mainTB) Failed() bool            { return m.failed }
func (m *mainTB) Fatalf(f string, a ...any) {
	m.failed = true
	m.Logf(f, a...)
	m.cleanup()
	os.Exit(1)
}

func (m *mainTB) cleanup() {
	for i := len(m.cleanups) - 1; i >= 0; i-- {
		m.cleanups[i]()
	}
	m.cleanups = nil
}

func TestMain(m *testing.M) {
	tb := &mainTB{}
	pg := testharness.StartPostgres(tb)
	if err := os.Setenv("DATABASE_URL", pg.URL()); err != nil {
		tb.Fatalf("%v", err)
	}
	code := m.Run()
	tb.cleanup() // the server's reaper goroutine ends with it
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
