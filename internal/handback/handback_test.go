package handback_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/handback"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// flaky is a revoke that fails until healed, counting its calls per lease.
type flaky struct {
	mu     sync.Mutex
	healed bool
	calls  map[string]int
	done   map[string]bool
}

func newFlaky() *flaky { return &flaky{calls: map[string]int{}, done: map[string]bool{}} }

func (f *flaky) revoke(_ context.Context, key, leaseID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[leaseID]++
	if !f.healed {
		return errors.New("store unavailable")
	}
	f.done[leaseID] = true
	return nil
}

func (f *flaky) heal() { f.mu.Lock(); f.healed = true; f.mu.Unlock() }

func (f *flaky) state(leaseID string) (calls int, done bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[leaseID], f.done[leaseID]
}

// TestQueue's subtests run in synctest bubbles: the queue waits for
// nothing but its backoff timers, so fake time decides.
func TestQueue(t *testing.T) {
	t.Run("retries until the store confirms", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFlaky()
			q := handback.New("test", f.revoke, time.Second, nil)
			t.Cleanup(q.Close)
			q.Add("k", "a", time.Now().Add(time.Hour))
			testkit.Eventually(t, 10*time.Second, "three failed tries", func() bool { n, _ := f.state("a"); return n >= 3 })
			if q.Pending() != 1 {
				t.Fatalf("Pending() = %d while failing, want 1", q.Pending())
			}
			f.heal()
			testkit.Eventually(t, 10*time.Second, "confirmed", func() bool { _, done := f.state("a"); return done })
			testkit.Eventually(t, 10*time.Second, "nothing pending", func() bool { return q.Pending() == 0 })
		})
	})
	t.Run("gives up once the grant has expired anyway", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFlaky()
			q := handback.New("test", f.revoke, time.Second, nil)
			t.Cleanup(q.Close)
			q.Add("k", "a", time.Now().Add(100*time.Millisecond))
			testkit.Eventually(t, 10*time.Second, "dropped", func() bool { return q.Pending() == 0 })
			n, _ := f.state("a")
			q.Close() // tries what is still pending once more: nothing
			if m, _ := f.state("a"); m != n {
				t.Fatalf("tried %d more times after giving up", m-n)
			}
		})
	})
	t.Run("Give confirms before returning when the store answers", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFlaky()
			f.heal()
			q := handback.New("test", f.revoke, time.Second, nil)
			t.Cleanup(q.Close)
			q.Give("k", "a", time.Now().Add(time.Hour))
			if n, done := f.state("a"); n != 1 || !done || q.Pending() != 0 {
				t.Fatalf("after Give: %d calls, done %v, %d pending", n, done, q.Pending())
			}
		})
	})
	t.Run("Give falls back to retries", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFlaky()
			q := handback.New("test", f.revoke, time.Second, nil)
			t.Cleanup(q.Close)
			q.Give("k", "a", time.Now().Add(time.Hour))
			if q.Pending() != 1 {
				t.Fatalf("Pending() = %d after a failed Give, want 1", q.Pending())
			}
			f.heal()
			testkit.Eventually(t, 10*time.Second, "confirmed", func() bool { _, done := f.state("a"); return done })
		})
	})
	t.Run("Close tries the pending ones once more", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFlaky()
			q := handback.New("test", f.revoke, time.Second, nil)
			for _, id := range []string{"a", "b", "c"} {
				q.Add("k", id, time.Now().Add(time.Hour))
			}
			f.heal()
			q.Close()
			for _, id := range []string{"a", "b", "c"} {
				if _, done := f.state(id); !done {
					t.Fatalf("%s not revoked by Close", id)
				}
			}
			q.Close() // idempotent
		})
	})
	t.Run("many at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFlaky()
			f.heal()
			q := handback.New("test", f.revoke, time.Second, nil)
			t.Cleanup(q.Close)
			var wg sync.WaitGroup
			for i := range 1000 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					q.Add("k", string(rune('a'+i%26))+time.Now().String(), time.Now().Add(time.Hour))
				}()
			}
			wg.Wait()
			testkit.Eventually(t, 10*time.Second, "all confirmed", func() bool { return q.Pending() == 0 })
		})
	})
}

func TestDeliverable(t *testing.T) {
	if !handback.Deliverable(context.Background()) {
		t.Fatal("a context without deadline is deliverable")
	}
	ctx, cancel := context.WithTimeout(context.Background(), handback.Margin/2)
	defer cancel()
	if handback.Deliverable(ctx) {
		t.Fatal("a deadline closer than Margin is not deliverable")
	}
	if err := handback.Undeliverable(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Undeliverable = %v, want DeadlineExceeded", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if !handback.Deliverable(ctx) {
		t.Fatal("a distant deadline is deliverable")
	}
	cancel()
	if handback.Deliverable(ctx) || !errors.Is(handback.Undeliverable(ctx), context.Canceled) {
		t.Fatal("a cancelled context is not deliverable")
	}
}
