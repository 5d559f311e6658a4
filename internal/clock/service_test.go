package clock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// shuffledStore answers after a random delay taken after the store
// operation, so answers reach the Service in a different order than the
// store served them: the high-water check must not mistake that for a
// regression.
type shuffledStore struct{ *MemoryStore }

// jitter is the random delay. Its callers run in a synctest bubble, so
// this sleep is fake time: it reorders the answers without waiting.
func jitter() { time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond) }

func (s shuffledStore) Next(ctx context.Context, c string, n uint64) (uint64, error) {
	v, err := s.MemoryStore.Next(ctx, c, n)
	jitter()
	return v, err
}

func (s shuffledStore) Observe(ctx context.Context, c string, ts uint64) (uint64, error) {
	v, err := s.MemoryStore.Observe(ctx, c, ts)
	jitter()
	return v, err
}

func (s shuffledStore) Get(ctx context.Context, c string) (uint64, error) {
	v, err := s.MemoryStore.Get(ctx, c)
	jitter()
	return v, err
}

func TestServiceNoFalseRegressionUnderConcurrency(t *testing.T) {
	synctest.Test(t, testServiceNoFalseRegressionUnderConcurrency)
}

func testServiceNoFalseRegressionUnderConcurrency(t *testing.T) {
	svc := NewService(shuffledStore{NewMemoryStore()}, 0, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			var last uint64
			for i := range 100 {
				var lo, hi uint64
				var err error
				switch (g + i) % 3 {
				case 0:
					lo, hi, err = svc.Next(ctx, "c", uint64(1+i%7))
				case 1:
					lo, err = svc.Observe(ctx, "c", last+uint64(i%5))
					hi = lo
				default:
					var v uint64
					v, err = svc.Get(ctx, "c")
					if err == nil && v < last {
						t.Errorf("Get = %d after this caller got %d", v, last)
					}
					continue
				}
				if err != nil {
					t.Errorf("caller %d op %d: %v", g, i, err)
					return
				}
				if lo <= last {
					t.Errorf("caller %d: %d after %d", g, lo, last)
				}
				last = hi
			}
		})
	}
	wg.Wait()
}

func TestServiceHighWaterIsBounded(t *testing.T) {
	m := NewMemoryStore()
	svc := NewService(m, 3, nil)
	ctx := context.Background()
	for i := range 10 {
		if _, _, err := svc.Next(ctx, fmt.Sprint("c", i), 5); err != nil {
			t.Fatal(err)
		}
	}
	if n := svc.marks.len(); n != 3 {
		t.Fatalf("remembered %d clocks, want at most 3", n)
	}
	// The most recent clocks are still checked...
	m.Set("c9", 0)
	if _, _, err := svc.Next(ctx, "c9", 1); !errors.Is(err, ErrRegressed) {
		t.Fatalf("recent clock: %v, want ErrRegressed", err)
	}
	// ...a forgotten one is not: eviction only weakens the check.
	m.Set("c0", 0)
	if f, _, err := svc.Next(ctx, "c0", 1); err != nil || f != 1 {
		t.Fatalf("forgotten clock: %d, %v; want the store's answer", f, err)
	}
	// Using a clock refreshes it: remembered are c0, c9 (used since) and
	// c8; c1 evicts the least recently used, c8.
	if _, _, err := svc.Next(ctx, "c1", 1); err != nil {
		t.Fatal(err)
	}
	if svc.marks.get("c8") != 0 || svc.marks.get("c9") == 0 || svc.marks.get("c0") == 0 || svc.marks.len() != 3 {
		t.Fatalf("LRU order wrong: c8=%d c9=%d c0=%d len=%d", svc.marks.get("c8"), svc.marks.get("c9"), svc.marks.get("c0"), svc.marks.len())
	}
}

func TestServiceRejectsBadArguments(t *testing.T) {
	svc := NewService(NewMemoryStore(), 0, nil)
	ctx := context.Background()
	if _, _, err := svc.Next(ctx, "c", 0); err == nil {
		t.Error("Next(0) succeeded")
	}
	if _, err := svc.Observe(ctx, "c", MaxLamport); err == nil {
		t.Error("Observe(MaxLamport) succeeded")
	}
}

// lyingStore answers whatever it is told to, to check the Service's sanity
// checks of store answers.
type lyingStore struct{ v uint64 }

func (s lyingStore) Next(context.Context, string, uint64) (uint64, error)    { return s.v, nil }
func (s lyingStore) Observe(context.Context, string, uint64) (uint64, error) { return s.v, nil }
func (s lyingStore) Get(context.Context, string) (uint64, error)             { return s.v, nil }

func TestServiceChecksStoreAnswers(t *testing.T) {
	svc := NewService(lyingStore{v: 3}, 0, nil)
	ctx := context.Background()
	if _, _, err := svc.Next(ctx, "c", 5); err == nil {
		t.Error("block of 5 ending at 3 accepted")
	}
	if _, err := svc.Observe(ctx, "c", 3); err == nil {
		t.Error("observe of 3 answered 3 accepted")
	}
}
