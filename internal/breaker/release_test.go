package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// afterAllowStore runs the real Allow, then calls after, whose error (if
// any) replaces the answer: the grant happened, the caller does not get it.
type afterAllowStore struct {
	breaker.Store
	after func() error
}

func (s *afterAllowStore) Allow(ctx context.Context, name string, p breaker.Policy, a breaker.AllowArgs) (breaker.Allowance, error) {
	out, err := s.Store.Allow(ctx, name, p, a)
	if err != nil {
		return out, err
	}
	if s.after != nil {
		if err := s.after(); err != nil {
			return breaker.Allowance{}, err
		}
	}
	return out, nil
}

// halfOpenProbe is a shared breaker in half-open admitting one probe.
var halfOpenProbe = breaker.Policy{Scope: breaker.Shared, ConsecutiveFailures: 1, OpenDuration: 200 * time.Millisecond, HalfOpenMaxCalls: 1}

// tripToHalfOpen opens breaker name and waits out its open duration with
// advance: the fake clock's, plus real time for a store on Redis time.
func tripToHalfOpen(t *testing.T, s *breaker.Service, advance func(time.Duration), name string) {
	t.Helper()
	ctx := context.Background()
	d, err := s.Allow(ctx, name, time.Minute)
	if err != nil || !d.Allowed {
		t.Fatalf("Allow = %+v, %v", d, err)
	}
	if r, err := s.Report(ctx, d.PermitID, breaker.Failure, 0); err != nil || r.State != breaker.Open {
		t.Fatalf("Report(failure) = %+v, %v; want open", r, err)
	}
	advance(halfOpenProbe.OpenDuration + 50*time.Millisecond)
}

// probeAdmitted waits (at most `within`, far less than the minute-long
// permit TTL) for breaker name to admit a half-open probe, then reports it
// a success: the slot the failed call took was handed back.
func probeAdmitted(t *testing.T, s *breaker.Service, name string, within time.Duration) {
	t.Helper()
	ctx := context.Background()
	testkit.EventuallyNil(t, within, "a half-open probe admitted (the permit of the failed call holds the slot until it expires)", func() error {
		d, err := s.Allow(ctx, name, time.Minute)
		if err != nil {
			t.Fatalf("Allow: %v", err)
		}
		if !d.Allowed {
			info, _ := s.Get(ctx, name)
			return fmt.Errorf("refused: %+v", info)
		}
		if d.State != breaker.HalfOpen {
			t.Fatalf("admitted in %v, want a half-open probe", d.State)
		}
		if r, err := s.Report(ctx, d.PermitID, breaker.Success, 0); err != nil || r.State != breaker.Closed {
			t.Fatalf("probe success = %+v, %v; want closed", r, err)
		}
		return nil
	})
}

// TestAllowCutShortOnPausedRedisHandsBackProbe: the caller's deadline
// expires while Redis (paused) holds the Allow script; when Redis runs it,
// the probe it grants has no taker, and the sidecar hands it back: the
// next probe is admitted at once, not when the permit expires as a
// failure a minute later.
func TestAllowCutShortOnPausedRedisHandsBackProbe(t *testing.T) {
	r := testharness.StartRedis(t)
	rs := breaker.NewRedisStore(r.Client(t), "release", 300*time.Millisecond)
	clk := testkit.NewClock()
	s := newService(t, clk, map[string]breaker.Policy{"probe": halfOpenProbe}, func(o *breaker.Options) {
		o.Shared = rs
		o.RecoveryInterval = 50 * time.Millisecond
	})
	tripToHalfOpen(t, s, func(d time.Duration) { clk.Advance(d); testkit.RedisTime(d) }, "probe")

	r.Pause()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	d, err := s.Allow(ctx, "probe", time.Minute)
	cancel()
	r.Resume()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Allow on a paused Redis = %+v, %v; want the deadline's error", d, err)
	}
	probeAdmitted(t, s, "probe", 5*time.Second)
}

// TestAllowToGoneCallerHandsBackProbe: the store granted the probe but the
// caller's context ended before the answer could reach it.
func TestAllowToGoneCallerHandsBackProbe(t *testing.T) {
	synctest.Test(t, testAllowToGoneCallerHandsBackProbe)
}

func testAllowToGoneCallerHandsBackProbe(t *testing.T) {
	clk := testkit.NewClock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &afterAllowStore{Store: breaker.NewMemoryStore(clk.Now)}
	s := newService(t, clk, map[string]breaker.Policy{"probe": halfOpenProbe}, func(o *breaker.Options) { o.Shared = st })
	tripToHalfOpen(t, s, clk.Advance, "probe")
	st.after = func() error { cancel(); return nil }
	if d, err := s.Allow(ctx, "probe", time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("Allow for a caller gone meanwhile = %+v, %v; want canceled", d, err)
	}
	st.after = nil
	probeAdmitted(t, s, "probe", 0)
}

// TestAllowWithLostReplyHandsBackProbe: the store ran the Allow but its
// reply was lost (an error after the request was sent). Not unavailable:
// released straight away; unavailable: the release is replayed when the
// store answers again.
func TestAllowWithLostReplyHandsBackProbe(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		within time.Duration
	}{
		{"reply lost", errors.New("breaker: bad reply"), 0},
		{"store unavailable", store.Unavailable(errors.New("i/o timeout")), 5 * time.Second},
	} {
		// Time is all the service's recovery waits for: a synctest bubble.
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				clk := testkit.NewClock()
				st := &afterAllowStore{Store: breaker.NewMemoryStore(clk.Now)}
				s := newService(t, clk, map[string]breaker.Policy{"probe": halfOpenProbe}, func(o *breaker.Options) {
					o.Shared = st
					o.RecoveryInterval = 10 * time.Millisecond
				})
				tripToHalfOpen(t, s, clk.Advance, "probe")
				st.after = func() error { return tc.err }
				_, _ = s.Allow(context.Background(), "probe", time.Minute) // an error, or a fallback's answer
				st.after = nil
				testkit.Eventually(t, 5*time.Second, "the store to recover", func() bool { return !s.Degraded() })
				probeAdmitted(t, s, "probe", tc.within)
			})
		})
	}
}

// TestReleaseHandsBackLocalProbe: Service.Release frees a local probe's
// slot without counting it, and is idempotent.
func TestReleaseHandsBackLocalProbe(t *testing.T) { synctest.Test(t, testReleaseHandsBackLocalProbe) }

func testReleaseHandsBackLocalProbe(t *testing.T) {
	ctx := context.Background()
	clk := testkit.NewClock()
	pol := halfOpenProbe
	pol.Scope = breaker.Local
	s := newService(t, clk, map[string]breaker.Policy{"probe": pol})
	tripToHalfOpen(t, s, clk.Advance, "probe")
	d, err := s.Allow(ctx, "probe", time.Minute)
	if err != nil || !d.Allowed {
		t.Fatalf("probe = %+v, %v", d, err)
	}
	if d2, _ := s.Allow(ctx, "probe", time.Minute); d2.Allowed {
		t.Fatal("second probe admitted with half_open_max_calls 1")
	}
	s.Release(ctx, d.PermitID)
	s.Release(ctx, d.PermitID)
	if info, err := s.Get(ctx, "probe"); err != nil || info.State != breaker.HalfOpen || info.Counts.HalfOpenInFlight != 0 || info.Counts.OutstandingPermits != 0 {
		t.Fatalf("after Release: %+v, %v", info, err)
	}
	if _, err := s.Report(ctx, d.PermitID, breaker.Failure, 0); !errors.Is(err, breaker.ErrPermitUnknown) {
		t.Fatalf("report of a released permit: %v, want ErrPermitUnknown", err)
	}
	probeAdmitted(t, s, "probe", 0)
}
