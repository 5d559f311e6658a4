package semaphore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/semaphore"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// storeUnderTest is one Store with the hooks the suite needs: advance lets
// the store's time pass, evict drops a semaphore's bookkeeping.
type storeUnderTest struct {
	store   semaphore.Store
	advance func(time.Duration)
	evict   func(name string)
}

func memoryStore(t *testing.T) storeUnderTest {
	t.Helper()
	clk := testkit.NewClock()
	m := semaphore.NewMemoryStore(clk.Now)
	return storeUnderTest{store: m, advance: clk.Advance, evict: m.Evict}
}

var namespaces = testkit.Namespaces("semtest")

func redisStore(t *testing.T) storeUnderTest {
	t.Helper()
	rdb := testharness.StartRedis(t).Client(t)
	s := semaphore.NewRedisStore(rdb, namespaces(), time.Second)
	return storeUnderTest{
		store:   s,
		advance: testkit.RedisTime, // Redis decides expiry by its own clock
		evict: func(name string) {
			if err := s.Evict(context.Background(), name); err != nil {
				t.Fatalf("evict: %v", err)
			}
		},
	}
}

func TestMemoryStoreConformance(t *testing.T) { runConformance(t, memoryStore) }
func TestRedisStoreConformance(t *testing.T)  { runConformance(t, redisStore) }

func mustAcquire(t *testing.T, s semaphore.Store, name, id string, limit int, ttl time.Duration) semaphore.Permit {
	t.Helper()
	r, err := s.TryAcquire(context.Background(), name, id, "owner-"+id, limit, ttl, nil)
	if err != nil || !r.Acquired {
		t.Fatalf("TryAcquire(%s, %s, limit %d) = %+v, %v; want granted", name, id, limit, r, err)
	}
	return r.Permit
}

func mustRefuse(t *testing.T, s semaphore.Store, name, id string, limit int) semaphore.Result {
	t.Helper()
	r, err := s.TryAcquire(context.Background(), name, id, "owner-"+id, limit, time.Minute, nil)
	if err != nil || r.Acquired {
		t.Fatalf("TryAcquire(%s, %s, limit %d) = %+v, %v; want refused", name, id, limit, r, err)
	}
	return r
}

func runConformance(t *testing.T, newStore func(*testing.T) storeUnderTest) {
	ctx := context.Background()

	t.Run("grants up to the limit then refuses", func(t *testing.T) {
		s := newStore(t).store
		var last uint64
		for i := range 3 {
			p := mustAcquire(t, s, "db", fmt.Sprint("p", i), 3, time.Minute)
			if p.FencingToken <= last || p.Owner != fmt.Sprint("owner-p", i) || p.Name != "db" {
				t.Fatalf("permit %d = %+v (previous token %d)", i, p, last)
			}
			last = p.FencingToken
		}
		r := mustRefuse(t, s, "db", "p3", 3)
		if r.Held != 3 || r.Limit != 3 || r.RetryAt.IsZero() {
			t.Fatalf("refusal = %+v; want held 3, limit 3, retry at the earliest expiry", r)
		}
		info, err := s.Get(ctx, "db")
		if err != nil || info.Held != 3 || info.Limit != 3 || len(info.Holders) != 3 || info.LastFencingToken != last {
			t.Fatalf("Get = %+v, %v", info, err)
		}
		for i := 1; i < len(info.Holders); i++ {
			if info.Holders[i].ExpireTime.Before(info.Holders[i-1].ExpireTime) {
				t.Fatalf("holders not soonest first: %+v", info.Holders)
			}
		}
	})

	t.Run("retried acquire by the same id is harmless", func(t *testing.T) {
		s := newStore(t).store
		p := mustAcquire(t, s, "db", "a", 2, time.Minute)
		again := mustAcquire(t, s, "db", "a", 2, time.Minute)
		if again.FencingToken != p.FencingToken {
			t.Fatalf("retry changed the token: %d then %d", p.FencingToken, again.FencingToken)
		}
		mustAcquire(t, s, "db", "b", 2, time.Minute)
		mustRefuse(t, s, "db", "c", 2)
	})

	t.Run("release frees a permit once", func(t *testing.T) {
		s := newStore(t).store
		mustAcquire(t, s, "db", "a", 1, time.Minute)
		mustRefuse(t, s, "db", "b", 1)
		if err := s.Release(ctx, "db", "a"); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if err := s.Release(ctx, "db", "a"); !errors.Is(err, semaphore.ErrLeaseLost) {
			t.Fatalf("second Release = %v; want ErrLeaseLost", err)
		}
		if err := s.Release(ctx, "db", "never"); !errors.Is(err, semaphore.ErrLeaseLost) {
			t.Fatalf("Release of an unknown permit = %v; want ErrLeaseLost", err)
		}
		mustAcquire(t, s, "db", "b", 1, time.Minute)
	})

	t.Run("expired permits are reclaimed", func(t *testing.T) {
		su := newStore(t)
		s := su.store
		mustAcquire(t, s, "db", "a", 2, 200*time.Millisecond)
		mustAcquire(t, s, "db", "b", 2, time.Minute)
		mustRefuse(t, s, "db", "c", 2)
		su.advance(300 * time.Millisecond)
		mustAcquire(t, s, "db", "c", 2, time.Minute)
		if err := s.Release(ctx, "db", "a"); !errors.Is(err, semaphore.ErrLeaseLost) {
			t.Fatalf("Release of an expired permit = %v; want ErrLeaseLost", err)
		}
		if _, err := s.Renew(ctx, "db", "a", time.Minute); !errors.Is(err, semaphore.ErrLeaseLost) {
			t.Fatalf("Renew of an expired permit = %v; want ErrLeaseLost", err)
		}
	})

	t.Run("renew extends a live permit", func(t *testing.T) {
		su := newStore(t)
		s := su.store
		p := mustAcquire(t, s, "db", "a", 1, 300*time.Millisecond)
		exp, err := s.Renew(ctx, "db", "a", time.Minute)
		if err != nil || !exp.After(p.ExpireTime) {
			t.Fatalf("Renew = %v, %v; want after %v", exp, err, p.ExpireTime)
		}
		su.advance(400 * time.Millisecond)
		mustRefuse(t, s, "db", "b", 1)
	})

	t.Run("lowering the limit keeps holders and grants nothing until they drain", func(t *testing.T) {
		s := newStore(t).store
		for _, id := range []string{"a", "b", "c"} {
			mustAcquire(t, s, "db", id, 3, time.Minute)
		}
		r := mustRefuse(t, s, "db", "d", 1)
		if r.Limit != 1 || r.Held != 3 {
			t.Fatalf("after lowering: %+v", r)
		}
		// The holders are not stranded: they renew and release as usual.
		if _, err := s.Renew(ctx, "db", "c", time.Minute); err != nil {
			t.Fatalf("Renew above the new limit: %v", err)
		}
		for _, id := range []string{"a", "b"} {
			if err := s.Release(ctx, "db", id); err != nil {
				t.Fatalf("Release %s: %v", id, err)
			}
			mustRefuse(t, s, "db", "d", 1)
		}
		if err := s.Release(ctx, "db", "c"); err != nil {
			t.Fatalf("Release c: %v", err)
		}
		mustAcquire(t, s, "db", "d", 1, time.Minute)
		// Raising it grants at once.
		mustAcquire(t, s, "db", "e", 2, time.Minute)
	})

	t.Run("raising the limit wakes watchers", func(t *testing.T) {
		s := newStore(t).store
		mustAcquire(t, s, "db", "a", 1, time.Minute)
		ch, stop, err := s.WatchRelease(ctx, "db")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		mustAcquire(t, s, "db", "b", 2, time.Minute)
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("no wake-up after the limit was raised")
		}
	})

	t.Run("tokens keep increasing after eviction", func(t *testing.T) {
		su := newStore(t)
		p := mustAcquire(t, su.store, "db", "a", 1, time.Minute)
		su.evict("db")
		su.advance(time.Millisecond) // the clock moves on between the grants
		q := mustAcquire(t, su.store, "db", "b", 1, time.Minute)
		if q.FencingToken <= p.FencingToken {
			t.Fatalf("token after eviction %d <= %d", q.FencingToken, p.FencingToken)
		}
	})

	t.Run("revoke releases a grant or refuses one on its way", func(t *testing.T) {
		s := newStore(t).store
		mustAcquire(t, s, "db", "a", 1, time.Minute)
		if err := s.Revoke(ctx, "db", "a"); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		if err := s.Revoke(ctx, "db", "a"); err != nil {
			t.Fatalf("second Revoke: %v", err)
		}
		mustAcquire(t, s, "db", "b", 1, time.Minute)
		if err := s.Revoke(ctx, "db", "late"); err != nil {
			t.Fatalf("Revoke before the grant: %v", err)
		}
		if err := s.Release(ctx, "db", "b"); err != nil {
			t.Fatal(err)
		}
		r, err := s.TryAcquire(ctx, "db", "late", "o", 1, time.Minute, nil)
		if _, mem := s.(*semaphore.MemoryStore); mem {
			// The embedded store is synchronous: nothing is on its way.
			return
		}
		if err == nil || r.Acquired {
			t.Fatalf("grant after revocation = %+v, %v; want refused with an error", r, err)
		}
	})

	t.Run("release wakes watchers", func(t *testing.T) {
		s := newStore(t).store
		mustAcquire(t, s, "db", "a", 1, time.Minute)
		ch, stop, err := s.WatchRelease(ctx, "db")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		// On Redis a release is announced only while a sidecar waits.
		if _, err := s.TryAcquire(ctx, "db", "w", "w", 1, time.Minute, &semaphore.Queueing{Stay: time.Minute, Waiters: 1}); err != nil {
			t.Fatal(err)
		}
		if err := s.Release(ctx, "db", "a"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("no wake-up after a release")
		}
		if err := s.LeaveQueue(ctx, "db"); err != nil {
			t.Fatal(err)
		}
	})
}
