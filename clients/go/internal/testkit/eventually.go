package testkit

import (
	"errors"
	"testing"
	"time"
)

// Tick is how often Eventually and EventuallyNil poll.
const Tick = 10 * time.Millisecond

// Eventually calls cond every Tick until it returns true, and fails t
// (Fatalf, naming what) if it has not by the time within has passed.
// cond is called at least once, and once more after the deadline, so
// within 0 means "now". within is a bound for a loaded machine, never a
// timing assertion: make it generous.
//
// Eventually must be called from the test's goroutine; cond may call
// t.Fatal. Inside a synctest bubble the polling runs on the bubble's fake
// time.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if poll(within, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}) != nil {
		t.Fatalf("%s: not reached within %v", what, within)
	}
}

// EventuallyNil is Eventually for a condition that explains itself: it
// calls cond every Tick until it returns nil, and fails t with what and
// cond's last error if within passes first.
func EventuallyNil(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	if err := poll(within, cond); err != nil {
		t.Fatalf("%s: not reached within %v: %v", what, within, err)
	}
}

var errNotYet = errors.New("not yet")

// poll returns nil once cond does, or cond's last error once within has
// passed.
func poll(within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return err
		}
		// The one polling sleep of the repository's tests.
		time.Sleep(min(Tick, left))
	}
}
