package ratelimit_test

import (
	"sync"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// TestLeaseAnswersLocally: a leasing limiter takes a batch in one script
// and answers the next takes from it; the store grants no more unused
// leased tokens than the tolerance to all sidecars together; a used-up
// lease frees its share at the next call, an unused one when its TTL ends.
func TestLeaseAnswersLocally(t *testing.T) {
	cases := []struct {
		name string
		lim  ratelimit.Limiter
	}{
		{"gcra", ratelimit.Limiter{Rate: 1, Period: time.Hour, Burst: 100}},
		{"sliding", ratelimit.Limiter{Algorithm: ratelimit.SlidingWindow, Limit: 100, Window: time.Hour}},
		{"fixed", ratelimit.Limiter{Algorithm: ratelimit.FixedWindow, Limit: 100, Window: 24 * time.Hour}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := testharness.StartRedis(t)
			rdb := r.Client(t)
			l := tc.lim
			l.Lease = ratelimit.Lease{Batch: 10, Tolerance: 10, TTL: time.Minute}
			short := tc.lim
			short.Lease = ratelimit.Lease{Batch: 5, Tolerance: 4, TTL: 50 * time.Millisecond}
			cfg := ratelimit.Config{"api": l, "short": short}
			a := newService(t, ratelimit.NewRedisStore(rdb, "lease", 2*time.Second), cfg)
			b := newService(t, ratelimit.NewRedisStore(rdb, "lease", 2*time.Second), cfg)
			ctx := t.Context()
			take := func(svc *ratelimit.Service, name, want string) ratelimit.Decision {
				t.Helper()
				d, err := svc.Take(ctx, name, "k", 1, 0, ratelimit.Override{})
				if err != nil || !d.Allowed || d.Source != want {
					t.Fatalf("%s take: %+v, %v; want allowed from %s", name, d, err, want)
				}
				return d
			}
			if err := redisx.LoadScripts(ctx, rdb, ratelimit.Scripts...); err != nil {
				t.Fatal(err)
			}
			before := scriptCalls(t, rdb)
			take(a, "api", metrics.RateLimitStore) // takes 10: 1 now, 9 leased
			for i := range 9 {
				if d := take(a, "api", metrics.RateLimitLease); d.Remaining != int64(8-i) {
					t.Fatalf("lease take %d: remaining %d, want %d", i, d.Remaining, 8-i)
				}
			}
			if n := scriptCalls(t, rdb) - before; n != 1 {
				t.Fatalf("%d scripts for 10 takes from one lease, want 1", n)
			}
			// The used-up lease is reported; a new one holds 9 unused.
			take(a, "api", metrics.RateLimitStore)
			// b may lease only what the tolerance leaves: 10 - 9 = 1.
			for range 2 { // each time the used-up one is reported first
				take(b, "api", metrics.RateLimitStore)
				take(b, "api", metrics.RateLimitLease)
			}
			// A lease lapses after its TTL: its tokens are not used, and
			// its share of the tolerance is free again.
			take(a, "short", metrics.RateLimitStore) // 4 leased (the tolerance)
			take(a, "short", metrics.RateLimitLease)
			take(b, "short", metrics.RateLimitStore) // no room: 3 unused in a's lease
			take(b, "short", metrics.RateLimitStore)
			time.Sleep(100 * time.Millisecond) // real time: past the 50ms lease TTL, by the sidecar's and Redis's clocks
			take(a, "short", metrics.RateLimitStore)
			take(a, "short", metrics.RateLimitLease)
		})
	}
}

// TestReserveIsFirstComeFirstServed: waiting gcra takes reserve their
// tokens in the order they reach the store, across services sharing it,
// each due one emission interval after the one before; a take that does
// not wait is refused until the reservations are served.
func TestReserveIsFirstComeFirstServed(t *testing.T) {
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			var st ratelimit.Reserver
			var plain ratelimit.Store
			slack := time.Duration(0)
			if store == "memory" {
				m := ratelimit.NewMemoryStore(nil)
				st, plain = m, m
				slack = 50 * time.Millisecond
			} else {
				rs := ratelimit.NewRedisStore(testharness.StartRedis(t).Client(t), "res", 2*time.Second)
				st, plain = rs, rs
				slack = 150 * time.Millisecond
			}
			l := ratelimit.Limiter{Rate: 2, Burst: 1}.WithDefaults() // a token per 500ms
			ctx := t.Context()
			if r, err := plain.Take(ctx, "api", "k", l, 1); err != nil || !r.Allowed {
				t.Fatalf("first: %+v, %v", r, err)
			}
			var last time.Duration
			for i := range 3 {
				r, err := st.Reserve(ctx, "api", "k", l, 1, 10*time.Second)
				if err != nil || !r.Allowed {
					t.Fatalf("reservation %d: %+v, %v", i, r, err)
				}
				want := time.Duration(i+1) * 500 * time.Millisecond
				if r.Delay > want || r.Delay < want-slack || r.Delay <= last {
					t.Fatalf("reservation %d due in %v, want about %v after %v", i, r.Delay, want, last)
				}
				last = r.Delay
			}
			// Not within its wait: refused, nothing taken.
			r, err := st.Reserve(ctx, "api", "k", l, 1, time.Second)
			if err != nil || r.Allowed || r.RetryAfter < time.Second {
				t.Fatalf("reservation beyond its wait: %+v, %v", r, err)
			}
			if r, err := plain.Take(ctx, "api", "k", l, 1); err != nil || r.Allowed || r.RetryAfter < last {
				t.Fatalf("take behind the reservations: %+v, %v", r, err)
			}
		})
	}
}

// TestServiceWaitersReserveAcrossServices: waiting takes of two services
// on one Redis are all served, the last one no sooner than the limiter
// allows (gcra: a token per 50ms; fixed window: 1 per 50ms window).
func TestServiceWaitersReserveAcrossServices(t *testing.T) {
	cases := []struct {
		name string
		lim  ratelimit.Limiter
		// least is the least time 8 takes can span: 7 intervals or
		// windows after the first (gcra, sliding), or the starts of 7
		// more windows, the first of which may begin at once (fixed).
		least time.Duration
	}{
		{"gcra", ratelimit.Limiter{Rate: 20, Burst: 1}, 350 * time.Millisecond},
		{"fixed", ratelimit.Limiter{Algorithm: ratelimit.FixedWindow, Limit: 1, Window: 50 * time.Millisecond}, 300 * time.Millisecond},
		{"sliding", ratelimit.Limiter{Algorithm: ratelimit.SlidingWindow, Limit: 1, Window: 50 * time.Millisecond}, 350 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rdb := testharness.StartRedis(t).Client(t)
			cfg := ratelimit.Config{"api": tc.lim}
			svcs := []*ratelimit.Service{
				newService(t, ratelimit.NewRedisStore(rdb, "w", 2*time.Second), cfg),
				newService(t, ratelimit.NewRedisStore(rdb, "w", 2*time.Second), cfg),
			}
			ctx := t.Context()
			start := time.Now()
			var wg sync.WaitGroup
			var mu sync.Mutex
			allowed := 0
			for i := range 8 {
				wg.Go(func() {
					d, err := svcs[i%2].Take(ctx, "api", "k", 1, 10*time.Second, ratelimit.Override{})
					if err != nil {
						t.Errorf("waiter %d: %v", i, err)
						return
					}
					if d.Allowed {
						mu.Lock()
						allowed++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if allowed != 8 {
				t.Fatalf("%d of 8 waiters allowed", allowed)
			}
			// A waiter never returns before its take is due.
			if took := time.Since(start); took < tc.least {
				t.Fatalf("8 waiters served in %v, faster than the limit", took)
			}
		})
	}
}

// reserverStore is a store to run a reservation test on: the memory store
// on a fake clock, or Redis, whose clock advance waits out in real time
// (slack: what Redis's time may add to a delay).
type reserverStore struct {
	name  string
	store func(t *testing.T) (ratelimit.Reserver, ratelimit.Store, func(time.Duration))
	slack time.Duration
}

// reserverStores are both stores; prefix names the Redis store's keys.
func reserverStores(prefix string) []reserverStore {
	return []reserverStore{
		{"memory", func(t *testing.T) (ratelimit.Reserver, ratelimit.Store, func(time.Duration)) {
			clk := testkit.NewClock()
			m := ratelimit.NewMemoryStore(clk.Now)
			return m, m, clk.Advance
		}, 0},
		{"redis", func(t *testing.T) (ratelimit.Reserver, ratelimit.Store, func(time.Duration)) {
			rs := ratelimit.NewRedisStore(testharness.StartRedis(t).Client(t), prefix, 2*time.Second)
			return rs, rs, testkit.RedisTime
		}, 150 * time.Millisecond},
	}
}

// TestReserveFixedWindow: a waiting fixed window take that does not fit in
// this window reserves its cost in the first later window with room, in
// arrival order; the reserved cost counts in that window when it starts.
func TestReserveFixedWindow(t *testing.T) {
	l := ratelimit.Limiter{Algorithm: ratelimit.FixedWindow, Limit: 1, Window: time.Second}.WithDefaults()
	for _, tc := range reserverStores("resf") {
		t.Run(tc.name, func(t *testing.T) {
			res, st, advance := tc.store(t)
			ctx := t.Context()
			if r, err := st.Take(ctx, "f", "k", l, 1); err != nil || !r.Allowed {
				t.Fatalf("first: %+v, %v", r, err)
			}
			a, err := res.Reserve(ctx, "f", "k", l, 1, 10*time.Second)
			if err != nil || !a.Allowed || a.Delay <= 0 || a.Delay > time.Second {
				t.Fatalf("first reservation: %+v, %v; want due at the next window", a, err)
			}
			b, err := res.Reserve(ctx, "f", "k", l, 1, 10*time.Second)
			if err != nil || !b.Allowed || b.Delay > a.Delay+time.Second || b.Delay < a.Delay+time.Second-tc.slack {
				t.Fatalf("second reservation: %+v, %v; want due a window after the first (%v)", b, err, a.Delay)
			}
			if r, err := res.Reserve(ctx, "f", "k", l, 1, a.Delay); err != nil || r.Allowed {
				t.Fatalf("reservation with no room within its wait: %+v, %v", r, err)
			}
			// When the first reserved window starts, its reservation fills it.
			advance(a.Delay + time.Millisecond)
			if r, err := st.Take(ctx, "f", "k", l, 1); err != nil || r.Allowed {
				t.Fatalf("take in a reserved window: %+v, %v", r, err)
			}
			advance(2 * time.Second)
			if r, err := st.Take(ctx, "f", "k", l, 1); err != nil || !r.Allowed {
				t.Fatalf("take after the reservations: %+v, %v", r, err)
			}
		})
	}
}

// TestReserveSlidingWindow: a waiting sliding window take that does not
// fit now is logged at the time it fits, after the earlier reservations;
// takes that do not wait are refused while the reservations fill the
// window.
func TestReserveSlidingWindow(t *testing.T) {
	l := ratelimit.Limiter{Algorithm: ratelimit.SlidingWindow, Limit: 2, Window: time.Second}.WithDefaults()
	for _, tc := range reserverStores("ress") {
		t.Run(tc.name, func(t *testing.T) {
			res, st, advance := tc.store(t)
			ctx := t.Context()
			for range 2 {
				if r, err := st.Take(ctx, "s", "k", l, 1); err != nil || !r.Allowed {
					t.Fatalf("fill: %+v, %v", r, err)
				}
			}
			// Both fit when the first two leave the window, a second from
			// now; the third a window later.
			var delays []time.Duration
			for i, want := range []time.Duration{time.Second, time.Second, 2 * time.Second} {
				r, err := res.Reserve(ctx, "s", "k", l, 1, 10*time.Second)
				if err != nil || !r.Allowed || r.Delay > want || r.Delay < want-tc.slack {
					t.Fatalf("reservation %d: %+v, %v; want due in %v", i, r, err, want)
				}
				delays = append(delays, r.Delay)
			}
			// The next fits with the third, no sooner.
			if r, err := res.Reserve(ctx, "s", "k", l, 1, delays[2]-200*time.Millisecond); err != nil || r.Allowed {
				t.Fatalf("reservation with no room within its wait: %+v, %v", r, err)
			}
			// When the first two are due, they fill the window.
			advance(delays[0] + time.Millisecond)
			if r, err := st.Take(ctx, "s", "k", l, 1); err != nil || r.Allowed {
				t.Fatalf("take in a window the reservations fill: %+v, %v", r, err)
			}
			advance(3 * time.Second)
			if r, err := st.Take(ctx, "s", "k", l, 1); err != nil || !r.Allowed {
				t.Fatalf("take after the reservations: %+v, %v", r, err)
			}
		})
	}
}
