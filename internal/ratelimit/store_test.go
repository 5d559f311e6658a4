package ratelimit_test

import (
	"context"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// storeUnderTest is one Store with a way to let its time pass.
type storeUnderTest struct {
	store   ratelimit.Store
	advance func(time.Duration)
	// slack is how much store time may pass between two calls of a test
	// (0 for a fake clock; Redis's clock runs on while the test works).
	slack time.Duration
}

func memoryStore(t *testing.T) storeUnderTest {
	clk := testkit.NewClock()
	return storeUnderTest{store: ratelimit.NewMemoryStore(clk.Now), advance: clk.Advance}
}

var redisNS = testkit.Namespaces("rl")

func redisStore(t *testing.T) storeUnderTest {
	r := testharness.StartRedis(t)
	return storeUnderTest{store: ratelimit.NewRedisStore(r.Client(t), redisNS(), 2*time.Second), advance: testkit.RedisTime, slack: 150 * time.Millisecond}
}

func TestMemoryStoreConformance(t *testing.T) { runConformance(t, memoryStore) }
func TestRedisStoreConformance(t *testing.T)  { runConformance(t, redisStore) }

func lim(l ratelimit.Limiter) ratelimit.Limiter { return l.WithDefaults() }

func runConformance(t *testing.T, newStore func(*testing.T) storeUnderTest) {
	ctx := context.Background()
	take := func(t *testing.T, s ratelimit.Store, name, key string, l ratelimit.Limiter, cost int64) ratelimit.Result {
		t.Helper()
		r, err := s.Take(ctx, name, key, l, cost)
		if err != nil {
			t.Fatalf("Take: %v", err)
		}
		return r
	}
	within := func(t *testing.T, what string, got, want, slack time.Duration) {
		t.Helper()
		if got > want || got < want-slack-time.Microsecond {
			t.Errorf("%s = %v, want %v (slack %v)", what, got, want, slack)
		}
	}

	t.Run("gcra burst then rate", func(t *testing.T) {
		su := newStore(t)
		l := lim(ratelimit.Limiter{Rate: 10, Burst: 3}) // a token per 100ms
		for i := range 3 {
			r := take(t, su.store, "g", "k", l, 1)
			if !r.Allowed || r.Remaining != int64(2-i) || r.Limit != 3 {
				t.Fatalf("take %d: %+v, want allowed with %d remaining", i, r, 2-i)
			}
		}
		r := take(t, su.store, "g", "k", l, 1)
		if r.Allowed || r.Remaining != 0 {
			t.Fatalf("4th take: %+v, want refused", r)
		}
		within(t, "retry_after", r.RetryAfter, 100*time.Millisecond, su.slack)
		within(t, "reset_after", r.ResetAfter, 300*time.Millisecond, su.slack)
		// Other keys and limiters are untouched.
		if r := take(t, su.store, "g", "other", l, 3); !r.Allowed {
			t.Fatalf("other key: %+v", r)
		}
		if r := take(t, su.store, "g2", "k", l, 3); !r.Allowed {
			t.Fatalf("other limiter: %+v", r)
		}
		su.advance(r.RetryAfter + 100*time.Millisecond)
		if r := take(t, su.store, "g", "k", l, 1); !r.Allowed {
			t.Fatalf("after retry_after: %+v", r)
		}
	})

	t.Run("gcra cost and get", func(t *testing.T) {
		su := newStore(t)
		l := lim(ratelimit.Limiter{Rate: 1, Period: 100 * time.Millisecond, Burst: 5})
		if r := take(t, su.store, "g", "k", l, 4); !r.Allowed || r.Remaining != 1 {
			t.Fatalf("cost 4: %+v", r)
		}
		r := take(t, su.store, "g", "k", l, 3)
		if r.Allowed || r.Remaining != 1 {
			t.Fatalf("cost 3 with 1 left: %+v", r)
		}
		within(t, "retry_after", r.RetryAfter, 200*time.Millisecond, su.slack)
		g, err := su.store.Get(ctx, "g", "k", l)
		if err != nil || !g.Allowed || g.Remaining != 1 {
			t.Fatalf("Get: %+v, %v", g, err)
		}
		// Get takes nothing.
		if r := take(t, su.store, "g", "k", l, 1); !r.Allowed || r.Remaining != 0 {
			t.Fatalf("last token: %+v", r)
		}
		g, _ = su.store.Get(ctx, "g", "k", l)
		if g.Allowed || g.Remaining != 0 || g.RetryAfter <= 0 {
			t.Fatalf("Get when empty: %+v", g)
		}
	})

	t.Run("sliding window", func(t *testing.T) {
		su := newStore(t)
		l := lim(ratelimit.Limiter{Algorithm: ratelimit.SlidingWindow, Limit: 3, Window: 400 * time.Millisecond})
		if r := take(t, su.store, "s", "k", l, 2); !r.Allowed || r.Remaining != 1 {
			t.Fatalf("cost 2: %+v", r)
		}
		su.advance(200 * time.Millisecond)
		if r := take(t, su.store, "s", "k", l, 1); !r.Allowed || r.Remaining != 0 {
			t.Fatalf("cost 1: %+v", r)
		}
		r := take(t, su.store, "s", "k", l, 1)
		if r.Allowed {
			t.Fatalf("full window: %+v", r)
		}
		// The first entry (cost 2) leaves the window 400ms after it came.
		within(t, "retry_after", r.RetryAfter, 200*time.Millisecond, su.slack)
		within(t, "reset_after", r.ResetAfter, 400*time.Millisecond, su.slack)
		// Past the first window's edge the later entry still counts: no
		// fresh window, unlike fixed_window.
		su.advance(r.RetryAfter + 10*time.Millisecond)
		if r := take(t, su.store, "s", "k", l, 3); r.Allowed {
			t.Fatalf("cost 3 with the 2nd entry in the window: %+v", r)
		}
		if r := take(t, su.store, "s", "k", l, 2); !r.Allowed || r.Remaining != 0 {
			t.Fatalf("cost 2: %+v", r)
		}
	})

	t.Run("fixed window", func(t *testing.T) {
		su := newStore(t)
		l := lim(ratelimit.Limiter{Algorithm: ratelimit.FixedWindow, Limit: 2, Window: 300 * time.Millisecond})
		r := take(t, su.store, "f", "k", l, 2)
		if !r.Allowed || r.Remaining != 0 || r.ResetAfter <= 0 || r.ResetAfter > 300*time.Millisecond {
			t.Fatalf("cost 2: %+v", r)
		}
		r = take(t, su.store, "f", "k", l, 1)
		if r.Allowed || r.RetryAfter <= 0 || r.RetryAfter > 300*time.Millisecond {
			t.Fatalf("full window: %+v", r)
		}
		su.advance(r.RetryAfter + 5*time.Millisecond)
		if r := take(t, su.store, "f", "k", l, 2); !r.Allowed {
			t.Fatalf("next window: %+v", r)
		}
	})
}
