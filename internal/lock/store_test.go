package lock_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// storeUnderTest is one Store implementation with hooks the suite needs:
// advance lets lock time pass, evict drops a key's bookkeeping.
type storeUnderTest struct {
	store   lock.Store
	advance func(time.Duration)
	evict   func(key string)
}

func memoryStore(t *testing.T) storeUnderTest {
	t.Helper()
	clk := testkit.NewClock()
	m := lock.NewMemoryStore(clk.Now)
	return storeUnderTest{store: m, advance: clk.Advance, evict: m.Evict}
}

func redisStore(t *testing.T) storeUnderTest {
	t.Helper()
	rdb := testharness.StartRedis(t).Client(t)
	s := lock.NewRedisStore(rdb, "conformance", time.Second)
	return storeUnderTest{
		store:   s,
		advance: testkit.RedisTime, // Redis decides expiry by its own clock
		evict: func(key string) {
			if err := s.Evict(context.Background(), key); err != nil {
				t.Fatalf("evict: %v", err)
			}
		},
	}
}

func TestMemoryStoreConformance(t *testing.T) { runConformance(t, memoryStore) }
func TestRedisStoreConformance(t *testing.T)  { runConformance(t, redisStore) }

func runConformance(t *testing.T, newStore func(*testing.T) storeUnderTest) {
	ctx := context.Background()
	mustAcquire := func(t *testing.T, s lock.Store, key, lease string, ttl time.Duration) lock.Lease {
		t.Helper()
		l, _, ok, err := s.TryAcquire(ctx, key, lease, "owner-"+lease, ttl)
		if err != nil || !ok {
			t.Fatalf("TryAcquire(%s, %s) = ok %v, err %v; want granted", key, lease, ok, err)
		}
		return l
	}

	t.Run("grant then busy shows holder", func(t *testing.T) {
		s := newStore(t).store
		l := mustAcquire(t, s, "k", "lease-a", 10*time.Second)
		if l.FencingToken == 0 || l.Owner != "owner-lease-a" || l.Key != "k" {
			t.Fatalf("lease = %+v", l)
		}
		if time.Until(l.ExpireTime) > 11*time.Second && l.ExpireTime.Year() > 2026 {
			t.Fatalf("expire time %v too far", l.ExpireTime)
		}
		_, h, ok, err := s.TryAcquire(ctx, "k", "lease-b", "b", 10*time.Second)
		if err != nil || ok {
			t.Fatalf("second acquire: ok %v err %v; want busy", ok, err)
		}
		if h.Owner != "owner-lease-a" || h.FencingToken != l.FencingToken || !h.ExpireTime.Equal(l.ExpireTime) {
			t.Fatalf("holder = %+v, lease %+v", h, l)
		}
	})

	t.Run("reacquire by same lease is harmless", func(t *testing.T) {
		s := newStore(t).store
		l1 := mustAcquire(t, s, "k", "lease-a", 10*time.Second)
		l2 := mustAcquire(t, s, "k", "lease-a", 10*time.Second)
		if l1.FencingToken != l2.FencingToken {
			t.Fatalf("token changed on retried acquire: %d -> %d", l1.FencingToken, l2.FencingToken)
		}
	})

	t.Run("release requires the lease", func(t *testing.T) {
		s := newStore(t).store
		l := mustAcquire(t, s, "k", "lease-a", 10*time.Second)
		if err := s.Release(ctx, "k", "lease-b"); !errors.Is(err, lock.ErrLeaseLost) {
			t.Fatalf("release with wrong lease: %v, want ErrLeaseLost", err)
		}
		info, err := s.Get(ctx, "k")
		if err != nil || !info.Held || info.Holder.FencingToken != l.FencingToken {
			t.Fatalf("after wrong release: %+v %v; want still held", info, err)
		}
		if err := s.Release(ctx, "k", "lease-a"); err != nil {
			t.Fatalf("release: %v", err)
		}
		if err := s.Release(ctx, "k", "lease-a"); !errors.Is(err, lock.ErrLeaseLost) {
			t.Fatalf("second release: %v, want ErrLeaseLost", err)
		}
		info, err = s.Get(ctx, "k")
		if err != nil || info.Held || info.LastFencingToken != l.FencingToken {
			t.Fatalf("after release: %+v %v", info, err)
		}
		l2 := mustAcquire(t, s, "k", "lease-c", 10*time.Second)
		if l2.FencingToken <= l.FencingToken {
			t.Fatalf("token %d after %d: not increasing", l2.FencingToken, l.FencingToken)
		}
	})

	t.Run("unknown key", func(t *testing.T) {
		s := newStore(t).store
		if err := s.Release(ctx, "nope", "lease"); !errors.Is(err, lock.ErrLeaseLost) {
			t.Fatalf("release unknown: %v", err)
		}
		if _, err := s.Renew(ctx, "nope", "lease", time.Second); !errors.Is(err, lock.ErrLeaseLost) {
			t.Fatalf("renew unknown: %v", err)
		}
		info, err := s.Get(ctx, "nope")
		if err != nil || info.Held || info.LastFencingToken != 0 {
			t.Fatalf("get unknown: %+v %v", info, err)
		}
	})

	t.Run("expiry frees the lock and loses the lease", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		l := mustAcquire(t, s, "k", "lease-a", 150*time.Millisecond)
		st.advance(300 * time.Millisecond)
		info, err := s.Get(ctx, "k")
		if err != nil || info.Held {
			t.Fatalf("after expiry: %+v %v; want free", info, err)
		}
		l2 := mustAcquire(t, s, "k", "lease-b", 10*time.Second)
		if l2.FencingToken <= l.FencingToken {
			t.Fatalf("token %d after %d", l2.FencingToken, l.FencingToken)
		}
		if _, err := s.Renew(ctx, "k", "lease-a", time.Second); !errors.Is(err, lock.ErrLeaseLost) {
			t.Fatalf("renew of expired lease: %v", err)
		}
		if err := s.Release(ctx, "k", "lease-a"); !errors.Is(err, lock.ErrLeaseLost) {
			t.Fatalf("release of expired lease: %v", err)
		}
		if info, _ := s.Get(ctx, "k"); !info.Held || info.Holder.Owner != "owner-lease-b" {
			t.Fatalf("stale release touched the new holder: %+v", info)
		}
	})

	t.Run("expired lease is lost even without a new holder", func(t *testing.T) {
		st := newStore(t)
		mustAcquire(t, st.store, "k", "lease-a", 150*time.Millisecond)
		st.advance(300 * time.Millisecond)
		if err := st.store.Release(ctx, "k", "lease-a"); !errors.Is(err, lock.ErrLeaseLost) {
			t.Fatalf("release after expiry: %v, want ErrLeaseLost", err)
		}
	})

	t.Run("renew extends", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		l := mustAcquire(t, s, "k", "lease-a", 400*time.Millisecond)
		st.advance(250 * time.Millisecond)
		exp, err := s.Renew(ctx, "k", "lease-a", 400*time.Millisecond)
		if err != nil || !exp.After(l.ExpireTime) {
			t.Fatalf("renew: %v %v (was %v)", exp, err, l.ExpireTime)
		}
		st.advance(250 * time.Millisecond) // past the original expiry
		if info, _ := s.Get(ctx, "k"); !info.Held {
			t.Fatalf("renewed lock expired at its old time")
		}
		if _, err := s.Renew(ctx, "k", "lease-b", time.Second); !errors.Is(err, lock.ErrLeaseLost) {
			t.Fatalf("renew with wrong lease: %v", err)
		}
	})

	t.Run("tokens increase after eviction", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		var last uint64
		for i := range 5 {
			l := mustAcquire(t, s, "k", fmt.Sprintf("lease-%d", i), 10*time.Second)
			if l.FencingToken <= last {
				t.Fatalf("round %d: token %d after %d", i, l.FencingToken, last)
			}
			last = l.FencingToken
			if err := s.Release(ctx, "k", l.LeaseID); err != nil {
				t.Fatal(err)
			}
			st.evict("k")
			st.advance(time.Millisecond)
		}
	})

	t.Run("release wakes watchers", func(t *testing.T) {
		s := newStore(t).store
		mustAcquire(t, s, "k", "lease-a", 10*time.Second)
		released, stop, err := s.WatchRelease(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		other, stopOther, err := s.WatchRelease(ctx, "other")
		if err != nil {
			t.Fatal(err)
		}
		defer stopOther()
		if err := s.Release(ctx, "k", "lease-a"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-released:
		case <-time.After(10 * time.Second):
			t.Fatal("watcher not woken by release")
		}
		select {
		case <-other:
			t.Fatal("watcher of another key woken")
		default:
		}
		stop()
		stop() // idempotent
	})

	t.Run("revoke releases a held lease and wakes watchers", func(t *testing.T) {
		s := newStore(t).store
		mustAcquire(t, s, "k", "lease-a", time.Hour)
		released, stop, err := s.WatchRelease(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		if err := s.Revoke(ctx, "k", "lease-a"); err != nil {
			t.Fatalf("revoke: %v", err)
		}
		select {
		case <-released:
		case <-time.After(10 * time.Second):
			t.Fatal("watcher not woken by the revocation")
		}
		mustAcquire(t, s, "k", "lease-b", time.Hour)
		// Idempotent, and harmless to another holder.
		if err := s.Revoke(ctx, "k", "lease-a"); err != nil {
			t.Fatalf("second revoke: %v", err)
		}
		if info, err := s.Get(ctx, "k"); err != nil || info.Holder.Owner != "owner-lease-b" {
			t.Fatalf("after revoking another lease: %+v, %v", info, err)
		}
	})

	t.Run("revoke of a lease never granted is harmless", func(t *testing.T) {
		s := newStore(t).store
		if err := s.Revoke(ctx, "never", "lease-x"); err != nil {
			t.Fatalf("revoke: %v", err)
		}
		mustAcquire(t, s, "never", "lease-y", time.Hour)
	})

	t.Run("exactly one of many concurrent acquirers wins", func(t *testing.T) {
		s := newStore(t).store
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, ok, err := s.TryAcquire(ctx, "hot", fmt.Sprintf("lease-%d", i), "c", 10*time.Second)
				if err != nil {
					t.Error(err)
				}
				if ok {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d winners, want 1", wins.Load())
		}
	})
}

// A grant still on its way when its lease id is revoked (a script queued
// behind a paused Redis, run after the caller gave up) is refused, in
// either order of the two.
func TestRedisRevokeDefeatsAGrantOnItsWay(t *testing.T) {
	rd := testharness.StartRedis(t)
	s := lock.NewRedisStore(rd.Client(t), "revoke", 300*time.Millisecond)
	ctx := context.Background()

	// Revocation first: the acquisition arrives later and is refused.
	if err := s.Revoke(ctx, "k", "late"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := s.TryAcquire(ctx, "k", "late", "o", time.Hour); ok || err == nil {
		t.Fatalf("TryAcquire of a revoked lease: ok %v, err %v; want refused with an error", ok, err)
	}
	if info, err := s.Get(ctx, "k"); err != nil || info.Held {
		t.Fatalf("held after a refused grant: %+v, %v", info, err)
	}
	if _, _, ok, err := s.TryAcquire(ctx, "k", "other", "o", time.Hour); !ok || err != nil {
		t.Fatalf("another lease: ok %v, err %v; want granted", ok, err)
	}

	// The real sequence: Redis paused while the grant is sent, the caller
	// gives up, and the grant runs when Redis resumes.
	rd.Pause()
	errc := make(chan error, 1)
	go func() {
		_, _, _, err := s.TryAcquire(ctx, "paused", "p", "o", time.Hour)
		errc <- err
	}()
	if err := <-errc; err == nil {
		t.Fatal("TryAcquire on a paused Redis succeeded")
	}
	revoked := make(chan error, 1)
	go func() { revoked <- s.Revoke(ctx, "paused", "p") }()
	rd.Resume()
	if err := <-revoked; err != nil {
		// Sent while paused: try again, as the Service's hand-back does.
		if err := s.Revoke(ctx, "paused", "p"); err != nil {
			t.Fatal(err)
		}
	}
	if info, err := s.Get(ctx, "paused"); err != nil || info.Held {
		t.Fatalf("held after the revocation: %+v, %v", info, err)
	}
}
