package ratelimit_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
)

func TestLimiterDefaults(t *testing.T) {
	l := ratelimit.Limiter{Rate: 2.5}.WithDefaults()
	want := ratelimit.Limiter{Algorithm: ratelimit.GCRA, Rate: 2.5, Period: time.Second, Burst: 3, MaxCost: 3,
		MaxRate: 2.5, MaxBurst: 3, StoreDown: ratelimit.FailOpen, ExpectedSidecars: 1}
	if l != want {
		t.Fatalf("defaults: %+v, want %+v", l, want)
	}
	w := ratelimit.Limiter{Algorithm: ratelimit.SlidingWindow, Limit: 7, Window: time.Minute}.WithDefaults()
	if w.MaxCost != 7 || w.MaxLimit != 7 || w.Period != 0 || w.Burst != 0 || w.MaxRate != 0 || w.MaxBurst != 0 {
		t.Fatalf("window defaults: %+v", w)
	}
	if err := (ratelimit.Config{"a": l, "b": w}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestLeaseDefaults(t *testing.T) {
	cases := []struct {
		name string
		l    ratelimit.Limiter
		want ratelimit.Lease
	}{
		{"one sidecar", ratelimit.Limiter{Rate: 100, Lease: ratelimit.Lease{Batch: 5}}, ratelimit.Lease{Batch: 5, Tolerance: 4, TTL: time.Second}},
		{"three sidecars", ratelimit.Limiter{Rate: 100, ExpectedSidecars: 3, Lease: ratelimit.Lease{Batch: 5}}, ratelimit.Lease{Batch: 5, Tolerance: 12, TTL: time.Second}},
		{"capped to the capacity", ratelimit.Limiter{Algorithm: ratelimit.FixedWindow, Limit: 10, Window: time.Second, ExpectedSidecars: 9,
			Lease: ratelimit.Lease{Batch: 5}}, ratelimit.Lease{Batch: 5, Tolerance: 10, TTL: time.Second}},
		{"as declared", ratelimit.Limiter{Rate: 100, Lease: ratelimit.Lease{Batch: 5, Tolerance: 30, TTL: time.Millisecond}},
			ratelimit.Lease{Batch: 5, Tolerance: 30, TTL: time.Millisecond}},
		{"off", ratelimit.Limiter{Rate: 100}, ratelimit.Lease{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := c.l.WithDefaults()
			if l.Lease != c.want {
				t.Fatalf("lease %+v, want %+v", l.Lease, c.want)
			}
			if err := l.Validate(); err != nil {
				t.Fatal(err)
			}
			if loc := l.Local(); loc.Lease.On() || loc.Validate() != nil {
				t.Fatalf("local share %+v leases or is invalid", loc)
			}
		})
	}
}

func TestLimiterLocalShare(t *testing.T) {
	l := ratelimit.Limiter{Rate: 500, Burst: 50, ExpectedSidecars: 3}.WithDefaults().Local()
	if l.Rate != 500.0/3 || l.Burst != 16 || l.MaxCost != 16 {
		t.Fatalf("gcra share: %+v", l)
	}
	w := ratelimit.Limiter{Algorithm: ratelimit.FixedWindow, Limit: 2, Window: time.Second, ExpectedSidecars: 5}.WithDefaults().Local()
	if w.Limit != 1 || w.MaxCost != 1 {
		t.Fatalf("window share: %+v", w)
	}
}

// TestLimiterValidateEveryField refuses a bad value of each setting,
// naming it.
func TestLimiterValidateEveryField(t *testing.T) {
	gcra := ratelimit.Limiter{Rate: 10}
	win := ratelimit.Limiter{Algorithm: ratelimit.SlidingWindow, Limit: 10, Window: time.Second}
	with := func(l ratelimit.Limiter, f func(*ratelimit.Limiter)) ratelimit.Limiter {
		l = l.WithDefaults()
		f(&l)
		return l
	}
	cases := []struct {
		name  string
		l     ratelimit.Limiter
		field string
		want  string
	}{
		{"algorithm", with(gcra, func(l *ratelimit.Limiter) { l.Algorithm = "leaky" }), "algorithm", "must be one of"},
		{"rate zero", with(gcra, func(l *ratelimit.Limiter) { l.Rate = 0 }), "rate", "(0, 1e+09]"},
		{"rate negative", with(gcra, func(l *ratelimit.Limiter) { l.Rate = -1 }), "rate", "got -1"},
		{"rate NaN", with(gcra, func(l *ratelimit.Limiter) { l.Rate = math.NaN() }), "rate", "NaN"},
		{"rate too high", with(gcra, func(l *ratelimit.Limiter) { l.Rate = 2e9 }), "rate", "got 2e+09"},
		{"rate per period too fine", with(gcra, func(l *ratelimit.Limiter) { l.Rate = 1e9; l.Period = time.Millisecond }), "rate", "per nanosecond"},
		{"period short", with(gcra, func(l *ratelimit.Limiter) { l.Period = time.Microsecond }), "period", "between 1ms"},
		{"period long", with(gcra, func(l *ratelimit.Limiter) { l.Period = 8 * 24 * time.Hour }), "period", "got 192h"},
		{"burst zero", with(gcra, func(l *ratelimit.Limiter) { l.Burst = 0 }), "burst", "between 1"},
		{"burst huge", with(gcra, func(l *ratelimit.Limiter) { l.Burst = 2e9 }), "burst", "got 2000000000"},
		{"limit on gcra", with(gcra, func(l *ratelimit.Limiter) { l.Limit = 5 }), "limit", "for sliding_window"},
		{"window on gcra", with(gcra, func(l *ratelimit.Limiter) { l.Window = time.Second }), "window", "for sliding_window"},
		{"limit zero", with(win, func(l *ratelimit.Limiter) { l.Limit = 0 }), "limit", "between 1 and 100000"},
		{"sliding limit high", with(win, func(l *ratelimit.Limiter) { l.Limit = 100001; l.MaxCost = 1 }), "limit", "got 100001"},
		{"fixed limit high", with(win, func(l *ratelimit.Limiter) { l.Algorithm = ratelimit.FixedWindow; l.Limit = 2e9; l.MaxCost = 1 }), "limit", "1000000000"},
		{"window zero", with(win, func(l *ratelimit.Limiter) { l.Window = 0 }), "window", "between 1ms"},
		{"rate on window", with(win, func(l *ratelimit.Limiter) { l.Rate = 3 }), "rate", "is for gcra"},
		{"period on window", with(win, func(l *ratelimit.Limiter) { l.Period = time.Second }), "period", "is for gcra"},
		{"burst on window", with(win, func(l *ratelimit.Limiter) { l.Burst = 3 }), "burst", "is for gcra"},
		{"max_cost zero", with(gcra, func(l *ratelimit.Limiter) { l.MaxCost = 0 }), "max_cost", "between 1 and the capacity 10"},
		{"max_cost over capacity", with(win, func(l *ratelimit.Limiter) { l.MaxCost = 11 }), "max_cost", "got 11"},
		{"max_rate below rate", with(gcra, func(l *ratelimit.Limiter) { l.MaxRate = 5 }), "max_rate", "between the rate 10"},
		{"max_rate NaN", with(gcra, func(l *ratelimit.Limiter) { l.MaxRate = math.NaN() }), "max_rate", "NaN"},
		{"max_burst below burst", with(gcra, func(l *ratelimit.Limiter) { l.MaxBurst = 9 }), "max_burst", "between the burst 10"},
		{"max_burst huge", with(gcra, func(l *ratelimit.Limiter) { l.MaxBurst = 2e9 }), "max_burst", "got 2000000000"},
		{"max_limit on gcra", with(gcra, func(l *ratelimit.Limiter) { l.MaxLimit = 20 }), "max_limit", "for sliding_window"},
		{"max_limit below limit", with(win, func(l *ratelimit.Limiter) { l.MaxLimit = 9 }), "max_limit", "between the limit 10"},
		{"max_limit high", with(win, func(l *ratelimit.Limiter) { l.MaxLimit = 100001 }), "max_limit", "got 100001"},
		{"max_rate on window", with(win, func(l *ratelimit.Limiter) { l.MaxRate = 20 }), "max_rate", "is for gcra"},
		{"max_burst on window", with(win, func(l *ratelimit.Limiter) { l.MaxBurst = 20 }), "max_burst", "is for gcra"},
		{"store_down", with(gcra, func(l *ratelimit.Limiter) { l.StoreDown = "retry" }), "store_down", "fail_open, fail_closed, local"},
		{"expected_sidecars zero", with(gcra, func(l *ratelimit.Limiter) { l.ExpectedSidecars = 0 }), "expected_sidecars", "between 1 and 10000"},
		{"expected_sidecars high", with(gcra, func(l *ratelimit.Limiter) { l.ExpectedSidecars = 10001 }), "expected_sidecars", "got 10001"},
		{"lease batch 1", with(gcra, func(l *ratelimit.Limiter) { l.Lease = ratelimit.Lease{Batch: 1, Tolerance: 1, TTL: time.Second} }), "lease.batch", "between 2 and the capacity 10"},
		{"lease batch over capacity", with(win, func(l *ratelimit.Limiter) { l.Lease = ratelimit.Lease{Batch: 11, Tolerance: 1, TTL: time.Second} }), "lease.batch", "got 11"},
		{"lease without batch", with(gcra, func(l *ratelimit.Limiter) { l.Lease = ratelimit.Lease{TTL: time.Second} }), "lease.batch", "got 0"},
		{"lease tolerance zero", with(gcra, func(l *ratelimit.Limiter) { l.Lease = ratelimit.Lease{Batch: 5, TTL: time.Second} }), "lease.tolerance", "between 1 and the capacity 10"},
		{"lease tolerance over capacity", with(gcra, func(l *ratelimit.Limiter) { l.Lease = ratelimit.Lease{Batch: 5, Tolerance: 11, TTL: time.Second} }), "lease.tolerance", "got 11"},
		{"lease ttl long", with(gcra, func(l *ratelimit.Limiter) { l.Lease = ratelimit.Lease{Batch: 5, Tolerance: 4, TTL: time.Hour} }), "lease.ttl", "between 1ms and 1m0s"},
		{"lease ttl zero", with(gcra, func(l *ratelimit.Limiter) { l.Lease = ratelimit.Lease{Batch: 5, Tolerance: 4} }), "lease.ttl", "got 0s"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ratelimit.Config{"api": c.l}.Validate()
			var fe *field.Error
			if !errors.As(err, &fe) || fe.Path != "api."+c.field || !strings.Contains(fe.Msg, c.want) {
				t.Fatalf("got %v, want api.%s: ...%s...", err, c.field, c.want)
			}
		})
	}
	for _, name := range []string{"", "a\x00b", strings.Repeat("n", 513), "\xff"} {
		if err := (ratelimit.Config{name: gcra.WithDefaults()}).Validate(); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
}

func TestUnmarshalText(t *testing.T) {
	var a ratelimit.Algorithm
	var s ratelimit.StoreDown
	if a.UnmarshalText([]byte("sliding_window")) != nil || a != ratelimit.SlidingWindow {
		t.Fatalf("algorithm %q", a)
	}
	if s.UnmarshalText([]byte("local")) != nil || s != ratelimit.Local {
		t.Fatalf("store_down %q", s)
	}
	if err := a.UnmarshalText([]byte("GCRA")); err == nil || !strings.Contains(err.Error(), `got "GCRA"`) {
		t.Fatalf("algorithm GCRA: %v", err)
	}
	if err := s.UnmarshalText([]byte("open")); err == nil || !strings.Contains(err.Error(), `got "open"`) {
		t.Fatalf("store_down open: %v", err)
	}
}

// FuzzLimiterValidate: any limiter Validate accepts is usable, every
// store answers it within its capacity, and validation never panics.
func FuzzLimiterValidate(f *testing.F) {
	f.Add("gcra", 10.0, int64(time.Second), int64(5), int64(0), int64(0), int64(0), "fail_open", 1, int64(1))
	f.Add("sliding_window", 0.0, int64(0), int64(0), int64(10), int64(time.Second), int64(3), "local", 3, int64(2))
	f.Add("fixed_window", 0.0, int64(0), int64(0), int64(1), int64(time.Millisecond), int64(1), "fail_closed", 1, int64(1))
	f.Fuzz(func(t *testing.T, alg string, rate float64, period, burst, limit, window, maxCost int64, down string, sidecars int, cost int64) {
		l := ratelimit.Limiter{Algorithm: ratelimit.Algorithm(alg), Rate: rate, Period: time.Duration(period), Burst: burst,
			Limit: limit, Window: time.Duration(window), MaxCost: maxCost, StoreDown: ratelimit.StoreDown(down), ExpectedSidecars: sidecars}
		for _, l := range []ratelimit.Limiter{l, l.WithDefaults()} {
			if l.Validate() != nil {
				continue
			}
			loc := l.Local()
			if err := loc.Validate(); err != nil {
				t.Fatalf("local share of valid %+v invalid: %v", l, err)
			}
			if cost < 1 || cost > l.MaxCost {
				cost = l.MaxCost
			}
			s := ratelimit.NewMemoryStore(nil)
			r, err := s.Take(t.Context(), "n", "k", l, cost)
			if err != nil || !r.Allowed || r.Remaining < 0 || r.Remaining > l.Capacity()-cost || r.Limit != l.Capacity() {
				t.Fatalf("first take of %d from %+v: %+v, %v", cost, l, r, err)
			}
		}
	})
}
