package testkit_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestClock(t *testing.T) {
	c := testkit.NewClock()
	if !c.Now().Equal(testkit.Epoch) {
		t.Fatalf("new clock at %v, want Epoch %v", c.Now(), testkit.Epoch)
	}
	c.Advance(90 * time.Second)
	c.Advance(-30 * time.Second)
	if got := c.Now().Sub(testkit.Epoch); got != time.Minute {
		t.Fatalf("after +90s -30s the clock is %v past Epoch, want 1m", got)
	}
	// Safe for concurrent use (under -race).
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				c.Advance(time.Millisecond)
				_ = c.Now()
			}
		})
	}
	wg.Wait()
	if got := c.Now().Sub(testkit.Epoch); got != time.Minute+800*time.Millisecond {
		t.Fatalf("after 800 concurrent advances of 1ms: %v past Epoch", got)
	}
}

// fatalTB records Fatalf instead of ending the test, so a failing
// Eventually can be checked.
type fatalTB struct {
	testing.TB // nil: only Helper and Fatalf are called
	failed     bool
	msg        string
}

func (*fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, args...)
}

func TestEventually(t *testing.T) {
	t.Run("returns once cond holds", func(t *testing.T) {
		calls := 0
		testkit.Eventually(t, time.Minute, "third call", func() bool { calls++; return calls == 3 })
		if calls != 3 {
			t.Fatalf("cond called %d times, want 3", calls)
		}
	})
	t.Run("within 0 polls once", func(t *testing.T) {
		calls := 0
		f := &fatalTB{}
		testkit.Eventually(f, 0, "never", func() bool { calls++; return false })
		if calls != 1 || !f.failed {
			t.Fatalf("cond called %d times, failed %v; want 1 call and a failure", calls, f.failed)
		}
		calls = 0
		testkit.Eventually(t, 0, "at once", func() bool { calls++; return true })
		if calls != 1 {
			t.Fatalf("cond called %d times, want 1", calls)
		}
	})
	t.Run("fails with the message after the bound", func(t *testing.T) {
		f := &fatalTB{}
		start := time.Now()
		testkit.Eventually(f, 50*time.Millisecond, "the impossible", func() bool { return false })
		if !f.failed || !strings.Contains(f.msg, "the impossible") || !strings.Contains(f.msg, "50ms") {
			t.Fatalf("failed %v with %q; want a failure naming what and the bound", f.failed, f.msg)
		}
		if took := time.Since(start); took < 50*time.Millisecond {
			t.Fatalf("gave up after %v, before the bound", took)
		}
	})
	t.Run("EventuallyNil reports the last error", func(t *testing.T) {
		f := &fatalTB{}
		n := 0
		testkit.EventuallyNil(f, 30*time.Millisecond, "count", func() error { n++; return fmt.Errorf("count is %d", n) })
		if !f.failed || !strings.Contains(f.msg, "count") || !strings.Contains(f.msg, fmt.Sprintf("count is %d", n)) {
			t.Fatalf("failed %v with %q after %d calls; want the last error in the message", f.failed, f.msg, n)
		}
		testkit.EventuallyNil(t, time.Minute, "no error", func() error { return nil })
	})
	t.Run("runs on a bubble's fake time", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			testkit.Eventually(t, 2*time.Minute, "a minute of fake time", func() bool { return time.Since(start) >= time.Minute })
			f := &fatalTB{}
			testkit.EventuallyNil(f, time.Minute, "a minute", func() error { return errors.New("never") })
			if !f.failed || time.Since(start) < 2*time.Minute {
				t.Fatalf("failed %v at %v of fake time; want a failure after the minute's bound", f.failed, time.Since(start))
			}
		})
	})
}

func TestNamespaces(t *testing.T) {
	next := testkit.Namespaces("suite")
	if a, b := next(), next(); a != "suite-1" || b != "suite-2" {
		t.Fatalf("namespaces %q, %q; want suite-1, suite-2", a, b)
	}
	other := testkit.Namespaces("suite")
	if got := other(); got != "suite-1" {
		t.Fatalf("a second generator starts at %q, want suite-1", got)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				ns := next()
				mu.Lock()
				if seen[ns] {
					t.Errorf("namespace %q given twice", ns)
				}
				seen[ns] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestRedisTimeIsRealTime(t *testing.T) {
	start := time.Now()
	testkit.RedisTime(20 * time.Millisecond)
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Fatalf("RedisTime(20ms) returned after %v", took)
	}
}
