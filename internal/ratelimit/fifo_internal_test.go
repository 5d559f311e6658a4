package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// queued is how many wait behind the holder of k's turn.
func (s *Service) queued(k memKey) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q := s.queues[k]; q != nil {
		return len(q.waiters)
	}
	return -1
}

// TestTurnsAreFIFO: the waiters of a key get their turn in arrival order,
// a waiter that gives up leaves the line, and the last one out removes it.
func TestTurnsAreFIFO(t *testing.T) {
	s, err := NewService(Options{Limiters: Config{"a": {Rate: 1}}, Store: NewMemoryStore(nil)})
	if err != nil {
		t.Fatal(err)
	}
	k := memKey{name: "a", key: "k"}
	ctx := t.Context()
	if err := s.turn(ctx, k); err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 3)
	gaveUp := make(chan error, 1)
	cctx, cancel := context.WithCancel(ctx)
	for i := range 3 {
		if i == 1 {
			go func() { gaveUp <- s.turn(cctx, k) }()
		} else {
			go func() {
				if s.turn(ctx, k) == nil {
					order <- i
					s.done(k)
				}
			}()
		}
		want := i + 1
		testkit.Eventually(t, 10*time.Second, "the goroutine to join the line", func() bool { return s.queued(k) == want })
	}
	cancel()
	if err := <-gaveUp; err == nil {
		t.Fatal("cancelled waiter got the turn")
	}
	if n := s.queued(k); n != 2 {
		t.Fatalf("%d waiting after one gave up, want 2", n)
	}
	s.done(k)
	if a, b := <-order, <-order; a != 0 || b != 2 {
		t.Fatalf("order %d, %d; want 0, 2", a, b)
	}
	testkit.Eventually(t, 10*time.Second, "the last waiter to hand back the turn", func() bool { return s.queued(k) == -1 })
}
