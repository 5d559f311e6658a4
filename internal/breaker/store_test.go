package breaker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// storeUnderTest is one Store with a way to let its time pass.
type storeUnderTest struct {
	store   breaker.Store
	advance func(time.Duration)
	// exists reports whether the store holds anything for name.
	exists func(name string) bool
}

func memoryStore(t *testing.T) storeUnderTest {
	clk := testkit.NewClock()
	m := breaker.NewMemoryStore(clk.Now)
	return storeUnderTest{store: m, advance: clk.Advance, exists: func(name string) bool {
		s, _ := m.Get(context.Background(), name, breaker.DefaultPolicy())
		return s.Generation != 0
	}}
}

func redisStore(t *testing.T) storeUnderTest {
	r := testharness.StartRedis(t)
	rdb := r.Client(t)
	return storeUnderTest{
		store:   breaker.NewRedisStore(rdb, "conformance", 2*time.Second),
		advance: testkit.RedisTime, // Redis decides time by its own clock
		exists: func(name string) bool {
			n, err := rdb.Exists(context.Background(), "rs:{conformance/breaker/"+name+"}:b").Result()
			if err != nil {
				t.Fatal(err)
			}
			return n > 0
		},
	}
}

func TestMemoryStoreConformance(t *testing.T) { runConformance(t, memoryStore) }
func TestRedisStoreConformance(t *testing.T)  { runConformance(t, redisStore) }

var (
	repA = breaker.Reporter{'a'}
	repB = breaker.Reporter{'b'}
	repC = breaker.Reporter{'c'}
)

// permit is one allowed call in the suite.
type permit struct {
	ref breaker.PermitRef
}

func runConformance(t *testing.T, newStore func(*testing.T) storeUnderTest) {
	ctx := context.Background()
	var nonces atomic.Uint64
	nextNonce := func() breaker.Nonce {
		var n breaker.Nonce
		v := nonces.Add(1)
		for i := range n {
			n[i] = byte(v >> (8 * i))
		}
		return n
	}
	allow := func(t *testing.T, s breaker.Store, name string, p breaker.Policy, rep breaker.Reporter, ttl time.Duration) (breaker.Allowance, permit) {
		t.Helper()
		n := nextNonce()
		a, err := s.Allow(ctx, name, p, breaker.AllowArgs{Reporter: rep, Nonce: n, TTL: ttl})
		if err != nil {
			t.Fatalf("Allow: %v", err)
		}
		return a, permit{ref: breaker.PermitRef{Generation: a.Generation, Issued: a.Issued, Reporter: rep, Nonce: n}}
	}
	mustAllow := func(t *testing.T, s breaker.Store, name string, p breaker.Policy, rep breaker.Reporter) permit {
		t.Helper()
		a, pm := allow(t, s, name, p, rep, time.Minute)
		if !a.Allowed {
			t.Fatalf("Allow refused in state %v (retry %v), want allowed", a.State, a.RetryAfter)
		}
		return pm
	}
	report := func(t *testing.T, s breaker.Store, name string, p breaker.Policy, pm permit, o breaker.Outcome, dur time.Duration) breaker.Recorded {
		t.Helper()
		r, err := s.Report(ctx, name, p, pm.ref, o, dur)
		if err != nil {
			t.Fatalf("Report(%v): %v", o, err)
		}
		return r
	}
	fail := func(t *testing.T, s breaker.Store, name string, p breaker.Policy, rep breaker.Reporter) breaker.Recorded {
		t.Helper()
		return report(t, s, name, p, mustAllow(t, s, name, p, rep), breaker.Failure, 0)
	}
	succeed := func(t *testing.T, s breaker.Store, name string, p breaker.Policy, rep breaker.Reporter) breaker.Recorded {
		t.Helper()
		return report(t, s, name, p, mustAllow(t, s, name, p, rep), breaker.Success, 0)
	}
	state := func(t *testing.T, s breaker.Store, name string, p breaker.Policy) breaker.Snapshot {
		t.Helper()
		snap, err := s.Get(ctx, name, p)
		if err != nil {
			t.Fatal(err)
		}
		return snap
	}
	open := 200 * time.Millisecond

	t.Run("consecutive failures trip; a success resets the run", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 3, OpenDuration: time.Minute}
		fail(t, s, "b", p, repA)
		fail(t, s, "b", p, repA)
		succeed(t, s, "b", p, repA)
		fail(t, s, "b", p, repA)
		if r := fail(t, s, "b", p, repA); r.State != breaker.Closed {
			t.Fatalf("state after 2 failures following a success: %v", r.State)
		}
		if snap := state(t, s, "b", p); snap.Counts.ConsecutiveFailures != 2 || snap.Counts.Calls != 5 || snap.Counts.Failures != 4 {
			t.Fatalf("counts = %+v", snap.Counts)
		}
		if r := fail(t, s, "b", p, repA); r.State != breaker.Open || !r.Counted {
			t.Fatalf("third failure in a row: %+v, want open", r)
		}
		a, _ := allow(t, s, "b", p, repA, time.Minute)
		if a.Allowed || a.State != breaker.Open || a.RetryAfter <= 50*time.Second || a.RetryAfter > time.Minute {
			t.Fatalf("allow while open = %+v", a)
		}
		snap := state(t, s, "b", p)
		if snap.State != breaker.Open || snap.OpenUntil.Sub(snap.Now) <= 50*time.Second || snap.Counts != (breaker.Counts{}) {
			t.Fatalf("open snapshot = %+v", snap)
		}
	})

	t.Run("open then half-open admits exactly half_open_max_calls; all succeed closes", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open, HalfOpenMaxCalls: 2}
		fail(t, s, "b", p, repA)
		st.advance(open + 50*time.Millisecond)
		if snap := state(t, s, "b", p); snap.State != breaker.HalfOpen {
			t.Fatalf("after open_duration Get shows %v, want half-open", snap.State)
		}
		a1, p1 := allow(t, s, "b", p, repA, time.Minute)
		a2, p2 := allow(t, s, "b", p, repB, time.Minute)
		a3, _ := allow(t, s, "b", p, repC, time.Minute)
		if !a1.Allowed || !a2.Allowed || a1.State != breaker.HalfOpen || a3.Allowed || a3.State != breaker.HalfOpen || a3.RetryAfter <= 0 {
			t.Fatalf("half-open allows = %+v %+v %+v", a1, a2, a3)
		}
		if snap := state(t, s, "b", p); snap.Counts.HalfOpenInFlight != 2 || snap.Counts.OutstandingPermits != 2 {
			t.Fatalf("half-open counts = %+v", snap.Counts)
		}
		if r := report(t, s, "b", p, p1, breaker.Success, 0); r.State != breaker.HalfOpen {
			t.Fatalf("after one probe success: %v", r.State)
		}
		if a, _ := allow(t, s, "b", p, repC, time.Minute); a.Allowed {
			t.Fatal("a third probe was admitted after one succeeded: successes must count against the slots")
		}
		if r := report(t, s, "b", p, p2, breaker.Success, 0); r.State != breaker.Closed {
			t.Fatalf("after all probes succeeded: %v, want closed", r.State)
		}
		succeed(t, s, "b", p, repA)
	})

	t.Run("a failed probe reopens; its sibling's report is stale", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open, HalfOpenMaxCalls: 2}
		fail(t, s, "b", p, repA)
		st.advance(open + 50*time.Millisecond)
		_, p1 := allow(t, s, "b", p, repA, time.Minute)
		_, p2 := allow(t, s, "b", p, repA, time.Minute)
		if r := report(t, s, "b", p, p1, breaker.Failure, 0); r.State != breaker.Open {
			t.Fatalf("failed probe: %v, want open", r.State)
		}
		if r := report(t, s, "b", p, p2, breaker.Success, 0); r.Counted || r.State != breaker.Open {
			t.Fatalf("report of the other probe = %+v, want stale (not counted) and still open", r)
		}
	})

	t.Run("an ignored probe frees its slot and counts nothing", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open}
		fail(t, s, "b", p, repA)
		st.advance(open + 50*time.Millisecond)
		_, p1 := allow(t, s, "b", p, repA, time.Minute)
		if a, _ := allow(t, s, "b", p, repA, time.Minute); a.Allowed {
			t.Fatal("second probe admitted with half_open_max_calls 1")
		}
		if r := report(t, s, "b", p, p1, breaker.Ignored, 0); r.State != breaker.HalfOpen || !r.Counted {
			t.Fatalf("ignored probe = %+v", r)
		}
		if r := succeed(t, s, "b", p, repA); r.State != breaker.Closed {
			t.Fatalf("after a successful probe: %v", r.State)
		}
		// Ignored calls in closed do not break a run of failures either.
		p.ConsecutiveFailures = 2
		fail(t, s, "b", p, repA)
		report(t, s, "b", p, mustAllow(t, s, "b", p, repA), breaker.Ignored, 0)
		if r := fail(t, s, "b", p, repA); r.State != breaker.Open {
			t.Fatalf("failure, ignored, failure with consecutive_failures 2: %v, want open", r.State)
		}
	})

	t.Run("every permit counts once", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 5}
		pm := mustAllow(t, s, "b", p, repA)
		report(t, s, "b", p, pm, breaker.Failure, 0)
		if _, err := s.Report(ctx, "b", p, pm.ref, breaker.Failure, 0); !errors.Is(err, breaker.ErrPermitUnknown) {
			t.Fatalf("duplicate report: %v, want ErrPermitUnknown", err)
		}
		forged := pm.ref
		forged.Nonce = breaker.Nonce{9, 9, 9}
		if _, err := s.Report(ctx, "b", p, forged, breaker.Failure, 0); !errors.Is(err, breaker.ErrPermitUnknown) {
			t.Fatalf("unknown permit: %v, want ErrPermitUnknown", err)
		}
		if snap := state(t, s, "b", p); snap.Counts.Failures != 1 || snap.Counts.ConsecutiveFailures != 1 {
			t.Fatalf("counts after refused reports = %+v, want one failure", snap.Counts)
		}
	})

	t.Run("an unreported permit counts as a failure when it expires", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		// Long enough that the reopened breaker is still open at the end,
		// however slow the machine.
		open := 2 * time.Second
		p := breaker.Policy{ConsecutiveFailures: 2, OpenDuration: open}
		_, p1 := allow(t, s, "b", p, repA, 50*time.Millisecond)
		_, p2 := allow(t, s, "b", p, repA, 50*time.Millisecond)
		st.advance(150 * time.Millisecond)
		snap := state(t, s, "b", p)
		if snap.State != breaker.Open {
			t.Fatalf("two expired permits with consecutive_failures 2: %+v, want open", snap)
		}
		if _, err := s.Report(ctx, "b", p, p1.ref, breaker.Success, 0); err != nil {
			// p1 belongs to the generation before the trip: stale, not an error.
			t.Fatalf("late report after the trip: %v", err)
		}
		_ = p2
		// A dead probe does not wedge half-open.
		st.advance(open + 50*time.Millisecond)
		_, probe := allow(t, s, "b", p, repA, 50*time.Millisecond)
		if a, _ := allow(t, s, "b", p, repA, time.Minute); a.Allowed {
			t.Fatal("second probe admitted")
		}
		st.advance(150 * time.Millisecond)
		a, _ := allow(t, s, "b", p, repA, time.Minute)
		if a.Allowed || a.State != breaker.Open {
			t.Fatalf("after the probe's permit expired: %+v, want open again", a)
		}
		if _, err := s.Report(ctx, "b", p, probe.ref, breaker.Success, 0); err != nil {
			t.Fatalf("late probe report: %v", err)
		}
	})

	t.Run("expired permit of the current generation is refused on report", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 5}
		_, pm := allow(t, s, "b", p, repA, 50*time.Millisecond)
		st.advance(150 * time.Millisecond)
		if _, err := s.Report(ctx, "b", p, pm.ref, breaker.Success, 0); !errors.Is(err, breaker.ErrPermitUnknown) {
			t.Fatalf("report after expiry: %v, want ErrPermitUnknown", err)
		}
		if snap := state(t, s, "b", p); snap.Counts.Failures != 1 || snap.Counts.Calls != 1 {
			t.Fatalf("counts = %+v, want the expiry counted once as a failure", snap.Counts)
		}
	})

	t.Run("failure rate trips only once min_calls are in the window", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{FailureRate: 0.5, MinCalls: 4, Window: 10 * time.Second}
		fail(t, s, "b", p, repA)
		fail(t, s, "b", p, repA)
		if r := fail(t, s, "b", p, repA); r.State != breaker.Closed {
			t.Fatalf("3 failures below min_calls 4: %v", r.State)
		}
		if r := succeed(t, s, "b", p, repA); r.State != breaker.Open {
			t.Fatalf("3 of 4 failed (rate 0.75 >= 0.5): %v, want open", r.State)
		}
		p2 := breaker.Policy{FailureRate: 0.5, MinCalls: 4}
		succeed(t, s, "c", p2, repA)
		succeed(t, s, "c", p2, repA)
		succeed(t, s, "c", p2, repA)
		if r := fail(t, s, "c", p2, repA); r.State != breaker.Closed {
			t.Fatalf("1 of 4 failed: %v, want closed", r.State)
		}
		if r := fail(t, s, "c", p2, repA); r.State != breaker.Closed {
			t.Fatalf("2 of 5 failed (0.4 < 0.5): %v, want closed", r.State)
		}
		if r := fail(t, s, "c", p2, repA); r.State != breaker.Open {
			t.Fatalf("3 of 6 failed (0.5 >= 0.5): %v, want open", r.State)
		}
	})

	t.Run("slow calls trip on slow_call_rate", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{SlowCallDuration: time.Second, SlowCallRate: 0.5, MinCalls: 2}
		report(t, s, "b", p, mustAllow(t, s, "b", p, repA), breaker.Success, 10*time.Millisecond)
		report(t, s, "b", p, mustAllow(t, s, "b", p, repA), breaker.Success, 20*time.Millisecond)
		if snap := state(t, s, "b", p); snap.State != breaker.Closed || snap.Counts.SlowCalls != 0 {
			t.Fatalf("fast calls: %+v", snap)
		}
		if r := report(t, s, "b", p, mustAllow(t, s, "b", p, repA), breaker.Success, 2*time.Second); r.State != breaker.Closed {
			t.Fatalf("1 slow of 3: %v", r.State)
		}
		if r := report(t, s, "b", p, mustAllow(t, s, "b", p, repA), breaker.Success, time.Second); r.State != breaker.Open {
			t.Fatalf("2 slow of 4 (a call of exactly slow_call_duration is slow): %v, want open", r.State)
		}
	})

	t.Run("min_reporters needs failures from that many sidecars", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{Scope: breaker.Shared, ConsecutiveFailures: 2, MinReporters: 2}
		for range 5 {
			if r := fail(t, s, "b", p, repA); r.State != breaker.Closed {
				t.Fatalf("failures from one sidecar opened a min_reporters 2 breaker")
			}
		}
		if snap := state(t, s, "b", p); snap.Counts.FailureReporters != 1 {
			t.Fatalf("reporters = %d", snap.Counts.FailureReporters)
		}
		if r := fail(t, s, "b", p, repB); r.State != breaker.Open {
			t.Fatalf("a failure from a second sidecar: %v, want open", r.State)
		}
	})

	t.Run("the window slides", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{FailureRate: 1, MinCalls: 3, Window: time.Second}
		fail(t, s, "b", p, repA)
		fail(t, s, "b", p, repA)
		st.advance(1200 * time.Millisecond)
		if snap := state(t, s, "b", p); snap.Counts.Calls != 0 {
			t.Fatalf("calls older than the window still counted: %+v", snap.Counts)
		}
		if r := fail(t, s, "b", p, repA); r.State != breaker.Closed {
			t.Fatalf("one failure in the window: %v", r.State)
		}
	})

	t.Run("reset forces closed and makes permits stale", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 2}
		pm := mustAllow(t, s, "b", p, repA)
		fail(t, s, "b", p, repA)
		fail(t, s, "b", p, repA)
		snap, err := s.Reset(ctx, "b", p)
		if err != nil || snap.State != breaker.Closed || snap.Counts != (breaker.Counts{}) {
			t.Fatalf("Reset = %+v, %v", snap, err)
		}
		if r := report(t, s, "b", p, pm, breaker.Failure, 0); r.Counted {
			t.Fatal("a permit from before the reset was counted")
		}
		succeed(t, s, "b", p, repA)
	})

	t.Run("get does not create", func(t *testing.T) {
		st := newStore(t)
		snap := state(t, st.store, "ghost", breaker.DefaultPolicy())
		if snap.State != breaker.Closed || st.exists("ghost") {
			t.Fatalf("Get of an unknown breaker: %+v, exists %v", snap, st.exists("ghost"))
		}
	})

	t.Run("release hands a probe's slot back at once and counts nothing", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open, HalfOpenMaxCalls: 1}
		fail(t, s, "b", p, repA)
		st.advance(open + 50*time.Millisecond)
		probe := breaker.AllowArgs{Reporter: repA, Nonce: nextNonce(), TTL: time.Minute}
		if a, err := s.Allow(ctx, "b", p, probe); err != nil || !a.Allowed || a.State != breaker.HalfOpen {
			t.Fatalf("probe = %+v, %v", a, err)
		}
		if a, _ := allow(t, s, "b", p, repB, time.Minute); a.Allowed {
			t.Fatal("second probe admitted with half_open_max_calls 1")
		}
		// The probe's caller is gone: its grant comes back, whatever the
		// generation (the caller never learnt it).
		if ok, err := s.Release(ctx, "b", p, probe); err != nil || !ok {
			t.Fatalf("Release of the outstanding probe = %v, %v; want released", ok, err)
		}
		snap := state(t, s, "b", p)
		if snap.State != breaker.HalfOpen || snap.Counts.HalfOpenInFlight != 0 || snap.Counts.OutstandingPermits != 0 || snap.Counts.HalfOpenSuccesses != 0 {
			t.Fatalf("after the release: %+v; want half-open with a free slot and nothing counted", snap)
		}
		// Idempotent: nothing more to hand back, nothing counted.
		if ok, err := s.Release(ctx, "b", p, probe); err != nil || ok {
			t.Fatalf("second Release = %v, %v; want nothing released", ok, err)
		}
		if r := succeed(t, s, "b", p, repB); r.State != breaker.Closed {
			t.Fatalf("the next probe (admitted at once) succeeded: %v, want closed", r.State)
		}
		// In closed, a released call is no call: the run of failures and
		// the window are untouched.
		p.ConsecutiveFailures = 2
		fail(t, s, "b", p, repA)
		held := breaker.AllowArgs{Reporter: repA, Nonce: nextNonce(), TTL: time.Minute}
		if a, err := s.Allow(ctx, "b", p, held); err != nil || !a.Allowed {
			t.Fatalf("Allow = %+v, %v", a, err)
		}
		if ok, err := s.Release(ctx, "b", p, held); err != nil || !ok {
			t.Fatalf("Release in closed = %v, %v", ok, err)
		}
		if snap := state(t, s, "b", p); snap.Counts.Calls != 1 || snap.Counts.ConsecutiveFailures != 1 || snap.Counts.OutstandingPermits != 0 {
			t.Fatalf("counts after a released call = %+v; want the one failure only", snap.Counts)
		}
	})

	t.Run("a release that overtakes its allow makes that allow grant nothing", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open, HalfOpenMaxCalls: 1}
		fail(t, s, "b", p, repA)
		st.advance(open + 50*time.Millisecond)
		late := breaker.AllowArgs{Reporter: repA, Nonce: nextNonce(), TTL: time.Minute}
		if ok, err := s.Release(ctx, "b", p, late); err != nil || ok {
			t.Fatalf("Release before the Allow = %v, %v; want nothing released", ok, err)
		}
		if a, err := s.Allow(ctx, "b", p, late); err != nil || a.Allowed {
			t.Fatalf("the overtaken Allow = %+v, %v; want refused", a, err)
		}
		if snap := state(t, s, "b", p); snap.Counts.HalfOpenInFlight != 0 || snap.Counts.OutstandingPermits != 0 {
			t.Fatalf("after the overtaken Allow: %+v; want the slot free", snap.Counts)
		}
		if r := succeed(t, s, "b", p, repB); r.State != breaker.Closed {
			t.Fatalf("another caller's probe: %v, want closed", r.State)
		}
		// A release without a mark (TTL 0) of an unknown permit changes
		// nothing, and does not create the breaker.
		if ok, err := s.Release(ctx, "ghost", p, breaker.AllowArgs{Reporter: repA, Nonce: nextNonce()}); err != nil || ok {
			t.Fatalf("Release of an unknown permit = %v, %v", ok, err)
		}
		if st.exists("ghost") {
			t.Fatal("Release without a mark created the breaker")
		}
	})

	t.Run("concurrent half-open admits exactly half_open_max_calls", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		p := breaker.Policy{ConsecutiveFailures: 1, OpenDuration: open, HalfOpenMaxCalls: 3}
		fail(t, s, "b", p, repA)
		st.advance(open + 50*time.Millisecond)
		var admitted atomic.Int32
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rep := breaker.Reporter{byte(i)}
				a, err := s.Allow(ctx, "b", p, breaker.AllowArgs{Reporter: rep, Nonce: nextNonce(), TTL: time.Minute})
				if err != nil {
					t.Error(err)
				}
				if a.Allowed {
					admitted.Add(1)
				}
			}()
		}
		wg.Wait()
		if admitted.Load() != 3 {
			t.Fatalf("%d probes admitted, want 3", admitted.Load())
		}
	})
}
