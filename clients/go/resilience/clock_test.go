package resilience_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// newTestLamportClock returns a clock on the package's sidecar. A
// non-empty name gets a unique suffix, so that -count=N starts afresh on
// the sidecar's store.
func newTestLamportClock(t *testing.T, name string) *resilience.LamportClock {
	t.Helper()
	if name != "" {
		name += "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	conn, err := resilience.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return resilience.NewLamportClock(v1.NewClockServiceClient(conn), name)
}

func TestLamportClockStampObserveCurrent(t *testing.T) {
	c := newTestLamportClock(t, "test/"+t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if v, err := c.Current(ctx); err != nil || v != 0 {
		t.Fatalf("Current on a new clock = %d, %v", v, err)
	}
	a, err := c.Stamp(ctx)
	if err != nil || a != 1 {
		t.Fatalf("Stamp = %d, %v; want 1", a, err)
	}
	first, last, err := c.Reserve(ctx, 10)
	if err != nil || first != 2 || last != 11 {
		t.Fatalf("Reserve(10) = %d..%d, %v", first, last, err)
	}
	if v, err := c.Observe(ctx, 5); err != nil || v != 12 {
		t.Fatalf("Observe(5) = %d, %v; want 12", v, err)
	}
	if v, err := c.Observe(ctx, 100); err != nil || v != 101 {
		t.Fatalf("Observe(100) = %d, %v; want 101", v, err)
	}
	if v, err := c.Current(ctx); err != nil || v != 101 {
		t.Fatalf("Current = %d, %v; want 101", v, err)
	}
	if !strings.HasPrefix(c.Name(), "test/"+t.Name()+"/") {
		t.Fatalf("Name = %q", c.Name())
	}
}

func TestLamportClockConcurrentStampsAreUnique(t *testing.T) {
	c := newTestLamportClock(t, "test/"+t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			var prev uint64
			for range 50 {
				v, err := c.Stamp(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if v <= prev {
					t.Errorf("stamp %d after %d", v, prev)
				}
				prev = v
				mu.Lock()
				if seen[v] {
					t.Errorf("stamp %d twice", v)
				}
				seen[v] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestLamportClockTypedErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := newTestLamportClock(t, "").Stamp(ctx)
	var e *resilience.Error
	if !errors.Is(err, resilience.ErrInvalidArgument) || !errors.As(err, &e) || e.Violations["clock"] == "" {
		t.Fatalf("Stamp on an unnamed clock: %v; want ErrInvalidArgument naming clock", err)
	}
	c := newTestLamportClock(t, "test/"+t.Name())
	if _, err := c.Observe(ctx, 1<<63); !errors.Is(err, resilience.ErrInvalidArgument) {
		t.Fatalf("Observe(2^63): %v; want ErrInvalidArgument", err)
	}
	if v, err := c.Observe(ctx, 1<<63-2); err != nil || v != 1<<63-1 {
		t.Fatalf("Observe(2^63-2) = %d, %v", v, err)
	}
	if _, err := c.Stamp(ctx); !errors.Is(err, resilience.ErrLimitExceeded) {
		t.Fatalf("Stamp on an exhausted clock: %v; want ErrLimitExceeded", err)
	}
}
