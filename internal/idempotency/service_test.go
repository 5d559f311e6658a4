package idempotency_test

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// hookStore lets a test see the service's calls: watching receives one
// value after each WatchDone, afterClaim runs after each CheckOrRecord.
type hookStore struct {
	idempotency.Store
	watching   chan struct{}
	afterClaim func(idempotency.Claim)
}

func (h *hookStore) WatchDone(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	ch, stop, err := h.Store.WatchDone(ctx, key)
	if err == nil && h.watching != nil {
		h.watching <- struct{}{}
	}
	return ch, stop, err
}

func (h *hookStore) CheckOrRecord(ctx context.Context, key, leaseID string, o idempotency.Options) (idempotency.Claim, error) {
	c, err := h.Store.CheckOrRecord(ctx, key, leaseID, o)
	if err == nil && h.afterClaim != nil {
		h.afterClaim(c)
	}
	return c, err
}

// Service tests run on stores with real time: waits are woken by real
// completions and lease expiries.
func TestIdempotencyServiceMemory(t *testing.T) {
	runService(t, func(*testing.T) idempotency.Store { return idempotency.NewMemoryStore(nil) })
}

func TestIdempotencyServiceRedis(t *testing.T) {
	runService(t, func(t *testing.T) idempotency.Store {
		return idempotency.NewRedisStore(testharness.StartRedis(t).Client(t), "service", time.Second)
	})
}

func runService(t *testing.T, newStore func(*testing.T) idempotency.Store) {
	ctx := context.Background()
	long := idempotency.Options{Fingerprint: "fp", LeaseTTL: time.Minute, Retention: time.Hour}
	waiting := func(o idempotency.Options, wait time.Duration) idempotency.Options {
		o.Wait = wait
		return o
	}
	start := func(t *testing.T, svc *idempotency.Service, key string, o idempotency.Options) idempotency.Claim {
		t.Helper()
		c, err := svc.CheckOrRecord(ctx, key, o)
		if err != nil || c.Outcome != idempotency.Started {
			t.Fatalf("CheckOrRecord = %+v, %v; want STARTED", c, err)
		}
		return c
	}
	type answer struct {
		c   idempotency.Claim
		err error
	}
	// waitFor runs n waiting duplicates and returns once every one is
	// subscribed; their answers arrive on the channel.
	waitFor := func(t *testing.T, h *hookStore, svc *idempotency.Service, n int, key string, o idempotency.Options) <-chan answer {
		t.Helper()
		out := make(chan answer, n)
		for range n {
			go func() {
				c, err := svc.CheckOrRecord(ctx, key, o)
				out <- answer{c, err}
			}()
		}
		for range n {
			select {
			case <-h.watching:
			case <-time.After(10 * time.Second):
				t.Fatal("duplicates did not start waiting")
			}
		}
		return out
	}
	recv := func(t *testing.T, ch <-chan answer) answer {
		t.Helper()
		select {
		case a := <-ch:
			return a
		case <-time.After(30 * time.Second):
			t.Fatal("no answer from a waiting duplicate")
			return answer{}
		}
	}

	t.Run("lease ids are 128-bit hex", func(t *testing.T) {
		svc := idempotency.NewService(newStore(t), nil, nil)
		c := start(t, svc, "k", long)
		if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(c.LeaseID) {
			t.Fatalf("lease id %q", c.LeaseID)
		}
		bad := idempotency.NewService(newStore(t), strings.NewReader("short"), nil)
		if _, err := bad.CheckOrRecord(ctx, "k", long); err == nil {
			t.Fatal("CheckOrRecord with failing entropy succeeded")
		}
	})

	t.Run("waiting duplicates are woken by the completion", func(t *testing.T) {
		h := &hookStore{Store: newStore(t), watching: make(chan struct{}, 16)}
		svc := idempotency.NewService(h, nil, nil)
		owner := start(t, svc, "k", long)
		// Lease and wait are a minute: only the completion can end the wait.
		answers := waitFor(t, h, svc, 5, "k", waiting(long, time.Minute))
		res := idempotency.Result{Data: []byte("ok"), Metadata: map[string]string{"status": "200"}}
		if _, err := svc.Complete(ctx, "k", owner.LeaseID, res); err != nil {
			t.Fatal(err)
		}
		for range 5 {
			a := recv(t, answers)
			if a.err != nil || a.c.Outcome != idempotency.Completed || !sameResult(a.c.Result, res) {
				t.Fatalf("waiter got %+v, %v; want COMPLETED", a.c, a.err)
			}
		}
	})

	t.Run("a release hands the key to exactly one waiter", func(t *testing.T) {
		h := &hookStore{Store: newStore(t), watching: make(chan struct{}, 16)}
		svc := idempotency.NewService(h, nil, nil)
		owner := start(t, svc, "k", long)
		const n = 8
		answers := waitFor(t, h, svc, n, "k", waiting(long, time.Minute))
		if err := svc.Release(ctx, "k", owner.LeaseID); err != nil {
			t.Fatal(err)
		}
		// Exactly one waiter starts; it completes and the rest get its result.
		a := recv(t, answers)
		if a.err != nil || a.c.Outcome != idempotency.Started || a.c.Attempt != 1 {
			t.Fatalf("first answer after release = %+v, %v; want STARTED", a.c, a.err)
		}
		res := idempotency.Result{Data: []byte("second try")}
		if _, err := svc.Complete(ctx, "k", a.c.LeaseID, res); err != nil {
			t.Fatal(err)
		}
		for range n - 1 {
			if a := recv(t, answers); a.err != nil || a.c.Outcome != idempotency.Completed || !sameResult(a.c.Result, res) {
				t.Fatalf("other waiter got %+v, %v; want COMPLETED", a.c, a.err)
			}
		}
	})

	t.Run("lease expiry wakes a waiter to take over", func(t *testing.T) {
		h := &hookStore{Store: newStore(t), watching: make(chan struct{}, 16)}
		svc := idempotency.NewService(h, nil, nil)
		short := long
		short.LeaseTTL = 200 * time.Millisecond
		owner := start(t, svc, "k", short)
		if _, err := svc.Checkpoint(ctx, "k", owner.LeaseID, idempotency.Checkpoint{RecoveryPoint: "phase1", Data: []byte("d")}); err != nil {
			t.Fatal(err)
		}
		a := recv(t, waitFor(t, h, svc, 1, "k", waiting(long, time.Minute)))
		if a.err != nil || a.c.Outcome != idempotency.Started || a.c.Attempt != 2 ||
			a.c.Checkpoint == nil || a.c.Checkpoint.RecoveryPoint != "phase1" {
			t.Fatalf("waiter got %+v, %v; want STARTED attempt 2 from phase1", a.c, a.err)
		}
		if _, err := svc.Complete(ctx, "k", owner.LeaseID, idempotency.Result{}); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("stale completion: %v, want ErrLeaseLost", err)
		}
	})

	t.Run("a wait that ends first answers in progress", func(t *testing.T) {
		svc := idempotency.NewService(newStore(t), nil, nil)
		start(t, svc, "k", long)
		for _, wait := range []time.Duration{0, 20 * time.Millisecond} {
			c, err := svc.CheckOrRecord(ctx, "k", waiting(long, wait))
			if err != nil || c.Outcome != idempotency.InProgress || c.RetryAfter != idempotency.MaxRetryAfter ||
				c.LeaseID != "" || c.Attempt != 1 {
				t.Fatalf("wait %v: %+v, %v; want IN_PROGRESS retry after %v", wait, c, err, idempotency.MaxRetryAfter)
			}
		}
	})

	t.Run("retry hint is at most the lease's remaining time", func(t *testing.T) {
		svc := idempotency.NewService(newStore(t), nil, nil)
		short := long
		short.LeaseTTL = 300 * time.Millisecond
		start(t, svc, "k", short)
		c, err := svc.CheckOrRecord(ctx, "k", short)
		if err != nil || c.Outcome != idempotency.InProgress || c.RetryAfter <= 0 || c.RetryAfter > 300*time.Millisecond {
			t.Fatalf("%+v, %v", c, err)
		}
	})

	t.Run("cancel ends the wait", func(t *testing.T) {
		h := &hookStore{Store: newStore(t), watching: make(chan struct{}, 1)}
		svc := idempotency.NewService(h, nil, nil)
		start(t, svc, "k", long)
		cctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() {
			_, err := svc.CheckOrRecord(cctx, "k", waiting(long, time.Minute))
			errc <- err
		}()
		<-h.watching
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})

	t.Run("a claim for a caller that gave up is released", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		h := &hookStore{Store: newStore(t), afterClaim: func(idempotency.Claim) { cancel() }}
		svc := idempotency.NewService(h, nil, nil)
		if _, err := svc.CheckOrRecord(cctx, "k", long); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if info, err := svc.Get(ctx, "k"); err != nil || info.State != idempotency.Absent {
			t.Fatalf("record left behind: %+v, %v", info, err)
		}
	})

	t.Run("many waiting duplicates, one execution", func(t *testing.T) {
		svc := idempotency.NewService(newStore(t), nil, nil)
		var runs atomic.Int32
		var wg sync.WaitGroup
		results := make([]string, 50)
		for i := range results {
			wg.Go(func() {
				for {
					c, err := svc.CheckOrRecord(ctx, "hot", waiting(long, time.Minute))
					if err != nil {
						t.Error(err)
						return
					}
					switch c.Outcome {
					case idempotency.Started:
						runs.Add(1)
						if _, err := svc.Complete(ctx, "hot", c.LeaseID, idempotency.Result{Data: []byte("once")}); err != nil {
							t.Error(err)
						}
						results[i] = "once"
						return
					case idempotency.Completed:
						results[i] = string(c.Result.Data)
						return
					}
				}
			})
		}
		wg.Wait()
		if runs.Load() != 1 {
			t.Fatalf("%d executions, want 1", runs.Load())
		}
		for i, r := range results {
			if r != "once" {
				t.Fatalf("caller %d ended with %q", i, r)
			}
		}
	})
}
