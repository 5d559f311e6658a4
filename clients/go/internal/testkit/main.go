// Package testkit holds the Go client module's test helpers that need
// package testing: a TestMain that checks for leaked goroutines (goleak)
// after tearing down what the setup started, and polling for a condition
// to become true. It is the client module's copy of the repository's
// internal/testkit (the client cannot import the server module's internal
// packages).
package testkit

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// MainWith is the TestMain of a package whose tests share something that
// TestMain starts (a real server, say): setup starts it, registering its
// teardown with tb.Cleanup; then the tests run, the teardown runs, and
// only then are goroutines checked, so the shared server's own goroutines
// do not count as leaks. A setup that calls tb.Fatalf ends the process
// with exit code 1 after the cleanups registered so far.
func MainWith(m *testing.M, setup func(tb *MainTB), opts ...goleak.Option) {
	tb := &MainTB{}
	if setup != nil {
		setup(tb)
	}
	code := m.Run()
	tb.cleanup()
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines left over after the tests passed: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// MainTB is the TB a TestMain's setup gets: it has the methods of
// testing.TB that testharness needs, logs to stderr, and its
// Fatalf runs the cleanups registered so far and exits with code 1.
type MainTB struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// Helper does nothing: there is no test to attribute lines to.
func (*MainTB) Helper() {}

// Cleanup registers f to run after the tests, last registered first.
func (tb *MainTB) Cleanup(f func()) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.cleanups = append(tb.cleanups, f)
}

// Logf prints a line to stderr.
func (*MainTB) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// Fatalf prints a line to stderr, runs the cleanups and exits with code 1.
func (tb *MainTB) Fatalf(format string, args ...any) {
	tb.mu.Lock()
	tb.failed = true
	tb.mu.Unlock()
	tb.Logf(format, args...)
	tb.cleanup()
	os.Exit(1)
}

// Failed reports whether Fatalf was called.
func (tb *MainTB) Failed() bool {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.failed
}

// cleanup runs the registered cleanups, last registered first, once.
func (tb *MainTB) cleanup() {
	tb.mu.Lock()
	fs := tb.cleanups
	tb.cleanups = nil
	tb.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
