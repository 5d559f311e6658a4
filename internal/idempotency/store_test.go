package idempotency_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// storeUnderTest is one Store implementation with the hooks the suite
// needs: advance lets store time pass.
type storeUnderTest struct {
	store   idempotency.Store
	advance func(time.Duration)
}

func memoryStore(t *testing.T) storeUnderTest {
	t.Helper()
	clk := testkit.NewClock()
	return storeUnderTest{store: idempotency.NewMemoryStore(clk.Now), advance: clk.Advance}
}

func redisStore(t *testing.T) storeUnderTest {
	t.Helper()
	rdb := testharness.StartRedis(t).Client(t)
	return storeUnderTest{
		store:   idempotency.NewRedisStore(rdb, "conformance", time.Second),
		advance: testkit.RedisTime, // Redis decides expiry by its own clock
	}
}

func TestIdempotencyMemoryStoreConformance(t *testing.T) { runConformance(t, memoryStore) }
func TestIdempotencyRedisStoreConformance(t *testing.T)  { runConformance(t, redisStore) }

// Lease ids used by the suite; the store treats them as opaque.
const (
	leaseA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	leaseB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	leaseC = "cccccccccccccccccccccccccccccccc"
)

func opts(fp string, ttl time.Duration) idempotency.Options {
	return idempotency.Options{Fingerprint: fp, LeaseTTL: ttl, Retention: time.Hour}
}

func sameResult(a, b idempotency.Result) bool {
	return bytes.Equal(a.Data, b.Data) && len(a.Metadata) == len(b.Metadata) && maps.Equal(a.Metadata, b.Metadata)
}

func runConformance(t *testing.T, newStore func(*testing.T) storeUnderTest) {
	ctx := context.Background()
	claim := func(t *testing.T, s idempotency.Store, key, lease string, o idempotency.Options) idempotency.Claim {
		t.Helper()
		c, err := s.CheckOrRecord(ctx, key, lease, o)
		if err != nil {
			t.Fatalf("CheckOrRecord(%s, %s): %v", key, lease, err)
		}
		return c
	}
	mustStart := func(t *testing.T, s idempotency.Store, key, lease string, o idempotency.Options, attempt int) idempotency.Claim {
		t.Helper()
		c := claim(t, s, key, lease, o)
		if c.Outcome != idempotency.Started || c.LeaseID != lease || c.Attempt != attempt {
			t.Fatalf("CheckOrRecord(%s, %s) = %+v; want STARTED attempt %d", key, lease, c, attempt)
		}
		return c
	}
	get := func(t *testing.T, s idempotency.Store, key string) idempotency.Info {
		t.Helper()
		info, err := s.Get(ctx, key)
		if err != nil {
			t.Fatalf("Get(%s): %v", key, err)
		}
		return info
	}
	result := idempotency.Result{
		Data:     []byte("{\"id\":42}\x00\xff binary"),
		Metadata: map[string]string{"status": "201", "content-type": "application/json", "empty": "", "ünï": "çødé"},
	}

	t.Run("first caller starts, duplicates see it in progress", func(t *testing.T) {
		s := newStore(t).store
		c := mustStart(t, s, "k", leaseA, opts("fp", 10*time.Second), 1)
		if c.Checkpoint != nil || c.LeaseExpireTime.IsZero() {
			t.Fatalf("first start = %+v", c)
		}
		d := claim(t, s, "k", leaseB, opts("fp", 10*time.Second))
		if d.Outcome != idempotency.InProgress || d.LeaseID != "" || d.Attempt != 1 ||
			d.LeaseRemaining <= 0 || d.LeaseRemaining > 10*time.Second || !d.LeaseExpireTime.Equal(c.LeaseExpireTime) {
			t.Fatalf("duplicate = %+v; want IN_PROGRESS of %+v", d, c)
		}
		// A retried claim by the owner is harmless.
		mustStart(t, s, "k", leaseA, opts("fp", 10*time.Second), 1)
		info := get(t, s, "k")
		if info.State != idempotency.Running || info.Attempts != 1 || info.Fingerprint != "fp" ||
			!info.LeaseExpireTime.Equal(c.LeaseExpireTime) || info.CreateTime.IsZero() ||
			!info.ExpireTime.Equal(c.LeaseExpireTime.Add(time.Hour)) || !info.CompleteTime.IsZero() {
			t.Fatalf("info = %+v", info)
		}
	})

	t.Run("complete stores the result for duplicates", func(t *testing.T) {
		s := newStore(t).store
		mustStart(t, s, "k", leaseA, opts("fp", 10*time.Second), 1)
		exp, err := s.Complete(ctx, "k", leaseA, result)
		if err != nil {
			t.Fatalf("Complete: %v", err)
		}
		c := claim(t, s, "k", leaseB, opts("fp", 10*time.Second))
		if c.Outcome != idempotency.Completed || !sameResult(c.Result, result) || c.LeaseID != "" {
			t.Fatalf("after complete: %+v; want COMPLETED with %+v", c, result)
		}
		if !exp.Equal(c.CompleteTime.Add(time.Hour)) {
			t.Fatalf("expire %v, complete time %v: want complete time + retention", exp, c.CompleteTime)
		}
		// Retrying the completion with the same lease answers the same.
		exp2, err := s.Complete(ctx, "k", leaseA, idempotency.Result{Data: []byte("other")})
		if err != nil || !exp2.Equal(exp) {
			t.Fatalf("retried Complete = %v, %v; want %v, nil", exp2, err, exp)
		}
		if c := claim(t, s, "k", leaseC, opts("fp", time.Second)); !sameResult(c.Result, result) {
			t.Fatalf("retried Complete changed the result: %+v", c.Result)
		}
		if _, err := s.Complete(ctx, "k", leaseB, result); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("Complete by another lease: %v, want ErrLeaseLost", err)
		}
		if err := s.Release(ctx, "k", leaseA); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("Release of a completed record: %v, want ErrLeaseLost", err)
		}
		if _, err := s.Checkpoint(ctx, "k", leaseA, idempotency.Checkpoint{RecoveryPoint: "x"}); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("Checkpoint of a completed record: %v, want ErrLeaseLost", err)
		}
		info := get(t, s, "k")
		if info.State != idempotency.Done || info.Attempts != 1 || !info.CompleteTime.Equal(c.CompleteTime) ||
			!info.ExpireTime.Equal(exp) || !info.LeaseExpireTime.IsZero() || info.RecoveryPoint != "" {
			t.Fatalf("info = %+v", info)
		}
	})

	t.Run("empty and large results round trip", func(t *testing.T) {
		s := newStore(t).store
		for i, res := range []idempotency.Result{
			{},
			{Data: bytes.Repeat([]byte{0, 1, 2, 0xff}, 1<<18)}, // 1 MiB
			{Metadata: map[string]string{"k": strings.Repeat("v", 4096)}},
		} {
			key := fmt.Sprint("k", i)
			mustStart(t, s, key, leaseA, opts("", time.Second), 1)
			if _, err := s.Complete(ctx, key, leaseA, res); err != nil {
				t.Fatal(err)
			}
			if c := claim(t, s, key, leaseB, opts("", time.Second)); c.Outcome != idempotency.Completed || !sameResult(c.Result, res) {
				t.Fatalf("result %d changed: got %d bytes %d metadata", i, len(c.Result.Data), len(c.Result.Metadata))
			}
		}
	})

	t.Run("a different fingerprint is refused and changes nothing", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		mustStart(t, s, "run", leaseA, opts("fp1", 150*time.Millisecond), 1)
		mustStart(t, s, "done", leaseA, opts("fp1", 10*time.Second), 1)
		if _, err := s.Complete(ctx, "done", leaseA, result); err != nil {
			t.Fatal(err)
		}
		before := map[string]idempotency.Info{"run": get(t, s, "run"), "done": get(t, s, "done")}
		for _, key := range []string{"run", "done"} {
			for _, fp := range []string{"fp2", "", "FP1", "fp1 "} {
				if c, err := s.CheckOrRecord(ctx, key, leaseB, opts(fp, time.Second)); !errors.Is(err, idempotency.ErrKeyMismatch) {
					t.Fatalf("%s with fingerprint %q: %+v %v, want ErrKeyMismatch", key, fp, c, err)
				}
			}
			if after := get(t, s, key); after != before[key] {
				t.Fatalf("%s changed by refused calls:\n%+v\n%+v", key, before[key], after)
			}
		}
		// Also after the lease expired: the key stays bound to fp1.
		st.advance(300 * time.Millisecond)
		if _, err := s.CheckOrRecord(ctx, "run", leaseB, opts("fp2", time.Second)); !errors.Is(err, idempotency.ErrKeyMismatch) {
			t.Fatalf("takeover with another fingerprint: %v, want ErrKeyMismatch", err)
		}
		if info := get(t, s, "run"); info.State != idempotency.LeaseExpired || info.Attempts != 1 {
			t.Fatalf("after refused takeover: %+v", info)
		}
	})

	t.Run("release requires the lease and frees the key", func(t *testing.T) {
		s := newStore(t).store
		mustStart(t, s, "k", leaseA, opts("fp", 10*time.Second), 1)
		if _, err := s.Checkpoint(ctx, "k", leaseA, idempotency.Checkpoint{RecoveryPoint: "half", Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if err := s.Release(ctx, "k", leaseB); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("Release with another lease: %v, want ErrLeaseLost", err)
		}
		if info := get(t, s, "k"); info.State != idempotency.Running {
			t.Fatalf("after refused release: %+v", info)
		}
		if err := s.Release(ctx, "k", leaseA); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if err := s.Release(ctx, "k", leaseA); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("second Release: %v, want ErrLeaseLost", err)
		}
		if info := get(t, s, "k"); info.State != idempotency.Absent {
			t.Fatalf("after release: %+v, want absent", info)
		}
		// The released record is gone with its checkpoint; even a new
		// fingerprint may use the key now.
		c := mustStart(t, s, "k", leaseB, opts("fp-new", 10*time.Second), 1)
		if c.Checkpoint != nil {
			t.Fatalf("checkpoint survived the release: %+v", c.Checkpoint)
		}
		if _, err := s.Complete(ctx, "k", leaseA, result); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("Complete after own release: %v, want ErrLeaseLost", err)
		}
	})

	t.Run("unknown key", func(t *testing.T) {
		s := newStore(t).store
		if _, err := s.Complete(ctx, "nope", leaseA, result); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("Complete: %v", err)
		}
		if _, err := s.Checkpoint(ctx, "nope", leaseA, idempotency.Checkpoint{RecoveryPoint: "x"}); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("Checkpoint: %v", err)
		}
		if err := s.Release(ctx, "nope", leaseA); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("Release: %v", err)
		}
		if info := get(t, s, "nope"); info != (idempotency.Info{State: idempotency.Absent}) {
			t.Fatalf("Get: %+v", info)
		}
	})

	t.Run("expired lease is taken over once, with the checkpoint", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		mustStart(t, s, "k", leaseA, opts("fp", 200*time.Millisecond), 1)
		cpExp, err := s.Checkpoint(ctx, "k", leaseA, idempotency.Checkpoint{RecoveryPoint: "charged", Data: []byte("ch_123")})
		if err != nil {
			t.Fatal(err)
		}
		if info := get(t, s, "k"); info.RecoveryPoint != "charged" || !info.LeaseExpireTime.Equal(cpExp) {
			t.Fatalf("after checkpoint: %+v (lease expiry %v)", info, cpExp)
		}
		st.advance(400 * time.Millisecond)
		if info := get(t, s, "k"); info.State != idempotency.LeaseExpired || info.RecoveryPoint != "charged" {
			t.Fatalf("after expiry: %+v", info)
		}
		c := mustStart(t, s, "k", leaseB, opts("fp", 10*time.Second), 2)
		if c.Checkpoint == nil || c.Checkpoint.RecoveryPoint != "charged" || string(c.Checkpoint.Data) != "ch_123" || c.Checkpoint.Time.IsZero() {
			t.Fatalf("takeover checkpoint = %+v", c.Checkpoint)
		}
		if d := claim(t, s, "k", leaseC, opts("fp", 10*time.Second)); d.Outcome != idempotency.InProgress || d.Attempt != 2 {
			t.Fatalf("after takeover: %+v, want IN_PROGRESS attempt 2", d)
		}
		// The dead executor's late calls are refused and change nothing.
		if _, err := s.Complete(ctx, "k", leaseA, idempotency.Result{Data: []byte("stale")}); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("stale Complete: %v, want ErrLeaseLost", err)
		}
		if _, err := s.Checkpoint(ctx, "k", leaseA, idempotency.Checkpoint{RecoveryPoint: "stale"}); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("stale Checkpoint: %v, want ErrLeaseLost", err)
		}
		if err := s.Release(ctx, "k", leaseA); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("stale Release: %v, want ErrLeaseLost", err)
		}
		if info := get(t, s, "k"); info.State != idempotency.Running || info.Attempts != 2 || info.RecoveryPoint != "charged" {
			t.Fatalf("after stale calls: %+v", info)
		}
		if _, err := s.Complete(ctx, "k", leaseB, result); err != nil {
			t.Fatal(err)
		}
		if d := claim(t, s, "k", leaseC, opts("fp", time.Second)); d.Outcome != idempotency.Completed || !sameResult(d.Result, result) {
			t.Fatalf("final: %+v", d)
		}
	})

	t.Run("an expired lease nobody took over may still complete", func(t *testing.T) {
		st := newStore(t)
		mustStart(t, st.store, "k", leaseA, opts("fp", 150*time.Millisecond), 1)
		st.advance(300 * time.Millisecond)
		if _, err := st.store.Complete(ctx, "k", leaseA, result); err != nil {
			t.Fatalf("late Complete without takeover: %v", err)
		}
		if info := get(t, st.store, "k"); info.State != idempotency.Done || info.Attempts != 1 {
			t.Fatalf("info = %+v", info)
		}
	})

	t.Run("checkpoint extends the lease", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		c := mustStart(t, s, "k", leaseA, opts("fp", 400*time.Millisecond), 1)
		st.advance(250 * time.Millisecond)
		exp, err := s.Checkpoint(ctx, "k", leaseA, idempotency.Checkpoint{RecoveryPoint: "step1"})
		if err != nil || !exp.After(c.LeaseExpireTime) {
			t.Fatalf("Checkpoint = %v, %v (lease was %v)", exp, err, c.LeaseExpireTime)
		}
		st.advance(250 * time.Millisecond) // past the original expiry
		if d := claim(t, s, "k", leaseB, opts("fp", time.Second)); d.Outcome != idempotency.InProgress {
			t.Fatalf("checkpointed lease expired at its old time: %+v", d)
		}
		if _, err := s.Checkpoint(ctx, "k", leaseB, idempotency.Checkpoint{RecoveryPoint: "x"}); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("Checkpoint with another lease: %v", err)
		}
	})

	t.Run("retention forgets completed and abandoned records", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		short := idempotency.Options{Fingerprint: "fp", LeaseTTL: 100 * time.Millisecond, Retention: 200 * time.Millisecond}
		mustStart(t, s, "done", leaseA, short, 1)
		if _, err := s.Complete(ctx, "done", leaseA, result); err != nil {
			t.Fatal(err)
		}
		mustStart(t, s, "abandoned", leaseA, short, 1)
		st.advance(150 * time.Millisecond)
		if get(t, s, "done").State != idempotency.Done || get(t, s, "abandoned").State != idempotency.LeaseExpired {
			t.Fatal("records forgotten before their retention")
		}
		st.advance(300 * time.Millisecond)
		for _, key := range []string{"done", "abandoned"} {
			if info := get(t, s, key); info.State != idempotency.Absent {
				t.Fatalf("%s after retention: %+v", key, info)
			}
			mustStart(t, s, key, leaseB, opts("another", time.Second), 1)
		}
	})

	t.Run("completion and release wake watchers", func(t *testing.T) {
		s := newStore(t).store
		mustStart(t, s, "k", leaseA, opts("fp", 10*time.Second), 1)
		done, stop, err := s.WatchDone(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		other, stopOther, err := s.WatchDone(ctx, "other")
		if err != nil {
			t.Fatal(err)
		}
		defer stopOther()
		if _, err := s.Checkpoint(ctx, "k", leaseA, idempotency.Checkpoint{RecoveryPoint: "x"}); err != nil {
			t.Fatal(err)
		}
		if err := s.Release(ctx, "k", leaseA); err != nil {
			t.Fatal(err)
		}
		waitSignal(t, done, "release")
		mustStart(t, s, "k", leaseB, opts("fp", 10*time.Second), 1)
		if _, err := s.Complete(ctx, "k", leaseB, result); err != nil {
			t.Fatal(err)
		}
		waitSignal(t, done, "completion")
		select {
		case <-other:
			t.Fatal("watcher of another key woken")
		default:
		}
		stop()
		stop() // idempotent
	})

	t.Run("exactly one of many concurrent callers starts", func(t *testing.T) {
		s := newStore(t).store
		var started, inProgress atomic.Int32
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Go(func() {
				c, err := s.CheckOrRecord(ctx, "hot", fmt.Sprintf("%032x", i), opts("fp", 10*time.Second))
				switch {
				case err != nil:
					t.Error(err)
				case c.Outcome == idempotency.Started:
					started.Add(1)
				case c.Outcome == idempotency.InProgress:
					inProgress.Add(1)
				}
			})
		}
		wg.Wait()
		if started.Load() != 1 || inProgress.Load() != 63 {
			t.Fatalf("%d started, %d in progress; want 1 and 63", started.Load(), inProgress.Load())
		}
	})
}

func waitSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("watcher not woken by %s", what)
	}
}

// A lease revoked before its claim reaches Redis (the caller gave up on
// it) claims nothing, whatever the key's state; where the key is answered
// without a write (completed, or running under another lease) the late
// claim may read that answer, which nobody receives, and changes nothing.
func TestIdempotencyRedisRevokedLeaseClaimsNothing(t *testing.T) {
	ctx := context.Background()
	rdb := testharness.StartRedis(t).Client(t)
	ns := testkit.Namespaces("revoked")
	cases := []struct {
		name  string
		setup func(t *testing.T, s *idempotency.RedisStore)
		want  idempotency.Outcome // 0: refused with store.ErrUnavailable
		state idempotency.State
		att   int
	}{
		{name: "absent key", state: idempotency.Absent},
		{name: "lease expired", setup: func(t *testing.T, s *idempotency.RedisStore) {
			if _, err := s.CheckOrRecord(ctx, "k", leaseA, opts("fp", 100*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			testkit.RedisTime(200 * time.Millisecond)
		}, state: idempotency.LeaseExpired, att: 1},
		{name: "running under another lease", setup: func(t *testing.T, s *idempotency.RedisStore) {
			if _, err := s.CheckOrRecord(ctx, "k", leaseA, opts("fp", time.Minute)); err != nil {
				t.Fatal(err)
			}
		}, want: idempotency.InProgress, state: idempotency.Running, att: 1},
		{name: "completed", setup: func(t *testing.T, s *idempotency.RedisStore) {
			if _, err := s.CheckOrRecord(ctx, "k", leaseA, opts("fp", time.Minute)); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Complete(ctx, "k", leaseA, idempotency.Result{Data: []byte("r")}); err != nil {
				t.Fatal(err)
			}
		}, want: idempotency.Completed, state: idempotency.Done, att: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := idempotency.NewRedisStore(rdb, ns(), time.Second)
			if tc.setup != nil {
				tc.setup(t, s)
			}
			if err := s.Revoke(ctx, "k", leaseC); err != nil {
				t.Fatal(err)
			}
			c, err := s.CheckOrRecord(ctx, "k", leaseC, opts("fp", time.Minute))
			switch {
			case tc.want == 0 && !errors.Is(err, store.ErrUnavailable):
				t.Fatalf("late claim by a revoked lease = %+v, %v; want store.ErrUnavailable", c, err)
			case tc.want != 0 && (err != nil || c.Outcome != tc.want):
				t.Fatalf("late claim by a revoked lease = %+v, %v; want outcome %v", c, err, tc.want)
			}
			info, err := s.Get(ctx, "k")
			if err != nil {
				t.Fatal(err)
			}
			if info.State != tc.state || info.Attempts != tc.att {
				t.Fatalf("after the late claim: %+v; want state %v, %d attempts", info, tc.state, tc.att)
			}
		})
	}
}
