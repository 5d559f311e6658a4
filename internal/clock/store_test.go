package clock_test

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// storeUnderTest is one Store implementation with the hook the suite
// needs: set forces a clock's value, as a store that lost writes would.
type storeUnderTest struct {
	store clock.Store
	set   func(clock string, v uint64)
}

func memoryStore(t *testing.T) storeUnderTest {
	t.Helper()
	m := clock.NewMemoryStore()
	return storeUnderTest{store: m, set: m.Set}
}

func redisStore(t *testing.T) storeUnderTest {
	t.Helper()
	rdb := testharness.StartRedis(t).Client(t)
	s := clock.NewRedisStore(rdb, "conformance", time.Second)
	return storeUnderTest{store: s, set: func(c string, v uint64) {
		if err := s.Set(context.Background(), c, v); err != nil {
			t.Fatalf("set: %v", err)
		}
	}}
}

func TestMemoryStoreConformance(t *testing.T) { runConformance(t, memoryStore) }
func TestRedisStoreConformance(t *testing.T)  { runConformance(t, redisStore) }

func runConformance(t *testing.T, newStore func(*testing.T) storeUnderTest) {
	ctx := context.Background()
	next := func(t *testing.T, s clock.Store, c string, n uint64) uint64 {
		t.Helper()
		v, err := s.Next(ctx, c, n)
		if err != nil {
			t.Fatalf("Next(%s, %d): %v", c, n, err)
		}
		return v
	}
	observe := func(t *testing.T, s clock.Store, c string, ts uint64) uint64 {
		t.Helper()
		v, err := s.Observe(ctx, c, ts)
		if err != nil {
			t.Fatalf("Observe(%s, %d): %v", c, ts, err)
		}
		return v
	}
	get := func(t *testing.T, s clock.Store, c string) uint64 {
		t.Helper()
		v, err := s.Get(ctx, c)
		if err != nil {
			t.Fatalf("Get(%s): %v", c, err)
		}
		return v
	}

	t.Run("fresh clock reads zero and starts at one", func(t *testing.T) {
		s := newStore(t).store
		if v := get(t, s, "c"); v != 0 {
			t.Fatalf("Get fresh = %d, want 0", v)
		}
		if v := next(t, s, "c", 1); v != 1 {
			t.Fatalf("first Next = %d, want 1", v)
		}
	})

	t.Run("blocks are consecutive and get does not advance", func(t *testing.T) {
		s := newStore(t).store
		next(t, s, "c", 1)
		if v := next(t, s, "c", 5); v != 6 {
			t.Fatalf("Next(5) last = %d, want 6 (block 2..6)", v)
		}
		for range 2 {
			if v := get(t, s, "c"); v != 6 {
				t.Fatalf("Get = %d, want 6", v)
			}
		}
		if v := next(t, s, "c", 100_000); v != 100_006 {
			t.Fatalf("Next(100000) last = %d, want 100006", v)
		}
	})

	t.Run("observe is max plus one", func(t *testing.T) {
		s := newStore(t).store
		if v := observe(t, s, "c", 100); v != 101 {
			t.Fatalf("Observe(100) on fresh = %d, want 101", v)
		}
		if v := observe(t, s, "c", 50); v != 102 {
			t.Fatalf("Observe(50) at 101 = %d, want 102", v)
		}
		if v := observe(t, s, "c", 102); v != 103 {
			t.Fatalf("Observe(102) at 102 = %d, want 103", v)
		}
		if v := observe(t, s, "c", 0); v != 104 {
			t.Fatalf("Observe(0) at 103 = %d, want 104", v)
		}
		if v := next(t, s, "c", 1); v != 105 {
			t.Fatalf("Next after observes = %d, want 105", v)
		}
		// Digit counts differ: the Redis script compares decimal strings.
		if v := observe(t, s, "c", 99); v != 106 {
			t.Fatalf("Observe(99) at 105 = %d, want 106", v)
		}
		if v := observe(t, s, "c", 1000); v != 1001 {
			t.Fatalf("Observe(1000) at 106 = %d, want 1001", v)
		}
	})

	t.Run("clocks are independent", func(t *testing.T) {
		s := newStore(t).store
		next(t, s, "a", 10)
		observe(t, s, "b", 500)
		if a, b, c := get(t, s, "a"), get(t, s, "b"), get(t, s, "c"); a != 10 || b != 501 || c != 0 {
			t.Fatalf("a=%d b=%d c=%d, want 10 501 0", a, b, c)
		}
		// Names that differ only by what a naive key scheme would merge.
		next(t, s, "x}:lamport", 3)
		if v := get(t, s, "x"); v != 0 {
			t.Fatalf("clock x = %d after writes to another name", v)
		}
	})

	t.Run("values above 2^53 are exact", func(t *testing.T) {
		s := newStore(t).store
		const big = 1<<60 + 1 // not representable as a float64
		if v := observe(t, s, "c", big); v != big+1 {
			t.Fatalf("Observe(2^60+1) = %d, want %d", v, uint64(big+1))
		}
		if v := next(t, s, "c", 3); v != big+4 {
			t.Fatalf("Next(3) = %d, want %d", v, uint64(big+4))
		}
		if v := observe(t, s, "c", big+2); v != big+5 {
			t.Fatalf("Observe(lower) = %d, want %d", v, uint64(big+5))
		}
		if v := observe(t, s, "c", big+10); v != big+11 {
			t.Fatalf("Observe(higher, same digit count) = %d, want %d", v, uint64(big+11))
		}
		if v := get(t, s, "c"); v != big+11 {
			t.Fatalf("Get = %d, want %d", v, uint64(big+11))
		}
	})

	t.Run("never passes the maximum and changes nothing when refused", func(t *testing.T) {
		s := newStore(t).store
		if v := observe(t, s, "c", clock.MaxLamport-10); v != clock.MaxLamport-9 {
			t.Fatalf("Observe(max-10) = %d", v)
		}
		if _, err := s.Next(ctx, "c", 20); !errors.Is(err, clock.ErrExhausted) {
			t.Fatalf("Next(20) near the maximum: %v, want ErrExhausted", err)
		}
		if v := get(t, s, "c"); v != clock.MaxLamport-9 {
			t.Fatalf("after refused Next: %d, want unchanged %d", v, uint64(clock.MaxLamport-9))
		}
		if v := next(t, s, "c", 9); v != clock.MaxLamport {
			t.Fatalf("Next(9) to the maximum = %d", v)
		}
		if _, err := s.Next(ctx, "c", 1); !errors.Is(err, clock.ErrExhausted) {
			t.Fatalf("Next at the maximum: %v, want ErrExhausted", err)
		}
		if _, err := s.Observe(ctx, "c", 5); !errors.Is(err, clock.ErrExhausted) {
			t.Fatalf("Observe at the maximum: %v, want ErrExhausted", err)
		}
		if v := get(t, s, "c"); v != clock.MaxLamport {
			t.Fatalf("Get at the maximum = %d", v)
		}
		if v := observe(t, s, "d", clock.MaxLamport-1); v != clock.MaxLamport {
			t.Fatalf("Observe(max-1) = %d, want max", v)
		}
	})

	t.Run("concurrent callers never share a value", func(t *testing.T) {
		s := newStore(t).store
		type block struct{ first, last uint64 }
		var mu sync.Mutex
		var blocks []block
		var wg sync.WaitGroup
		for g := range 20 {
			wg.Go(func() {
				for i := range 25 {
					var b block
					if (g+i)%3 == 0 {
						v, err := s.Observe(ctx, "hot", uint64(g*i))
						if err != nil {
							t.Error(err)
							return
						}
						b = block{v, v}
					} else {
						n := uint64(1 + (g*7+i)%50)
						v, err := s.Next(ctx, "hot", n)
						if err != nil {
							t.Error(err)
							return
						}
						b = block{v - n + 1, v}
					}
					mu.Lock()
					blocks = append(blocks, b)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		slices.SortFunc(blocks, func(a, b block) int { return cmp.Compare(a.first, b.first) })
		for i := 1; i < len(blocks); i++ {
			if blocks[i].first <= blocks[i-1].last {
				t.Fatalf("blocks overlap: %v and %v", blocks[i-1], blocks[i])
			}
		}
	})

	t.Run("cancelled context", func(t *testing.T) {
		s := newStore(t).store
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Next(cctx, "c", 1); !errors.Is(err, context.Canceled) {
			t.Fatalf("Next with cancelled ctx: %v", err)
		}
		if _, err := s.Observe(cctx, "c", 1); !errors.Is(err, context.Canceled) {
			t.Fatalf("Observe with cancelled ctx: %v", err)
		}
		if _, err := s.Get(cctx, "c"); !errors.Is(err, context.Canceled) {
			t.Fatalf("Get with cancelled ctx: %v", err)
		}
	})

	t.Run("service refuses a store that went backwards", func(t *testing.T) {
		st := newStore(t)
		svc := clock.NewService(st.store, 0, nil)
		first, last, err := svc.Next(ctx, "c", 10)
		if err != nil || first != 1 || last != 10 {
			t.Fatalf("Next(10) = %d..%d, %v", first, last, err)
		}
		st.set("c", 3) // lost writes
		if _, _, err := svc.Next(ctx, "c", 1); !errors.Is(err, clock.ErrRegressed) {
			t.Fatalf("Next after regression: %v, want ErrRegressed", err)
		}
		if _, err := svc.Get(ctx, "c"); !errors.Is(err, clock.ErrRegressed) {
			t.Fatalf("Get after regression: %v, want ErrRegressed", err)
		}
		// Observing the highest known value repairs the clock.
		v, err := svc.Observe(ctx, "c", last)
		if err != nil || v != last+1 {
			t.Fatalf("Observe(%d) to repair = %d, %v", last, v, err)
		}
		if f, _, err := svc.Next(ctx, "c", 1); err != nil || f != last+2 {
			t.Fatalf("Next after repair = %d, %v", f, err)
		}
	})
}

// TestRedisStoreUnavailable: a dead Redis gives store.ErrUnavailable within
// the store timeout, never a hang or a value.
func TestRedisStoreUnavailable(t *testing.T) {
	r := testharness.StartRedis(t)
	s := clock.NewRedisStore(r.Client(t), "down", 200*time.Millisecond)
	ctx := context.Background()
	if _, err := s.Next(ctx, "c", 1); err != nil {
		t.Fatal(err)
	}
	r.Kill()
	if _, err := s.Next(ctx, "c", 1); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Next on dead Redis: %v, want ErrUnavailable", err)
	}
	if _, err := s.Observe(ctx, "c", 7); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Observe on dead Redis: %v, want ErrUnavailable", err)
	}
	if _, err := s.Get(ctx, "c"); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Get on dead Redis: %v, want ErrUnavailable", err)
	}
}
