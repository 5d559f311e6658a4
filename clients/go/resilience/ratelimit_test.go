package resilience_test

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// rateLimitConfig declares the limiters of the rate limit tests: "hourly"
// refills one token an hour (nothing refills during a test), "slow" one
// every 3 s (long enough for a refusal, short enough to wait for).
const rateLimitConfig = `ratelimits:
  hourly: {algorithm: gcra, rate: 1, period: 1h, burst: 3}
  slow: {algorithm: gcra, rate: 1, period: 3s, burst: 1}
  window: {algorithm: sliding_window, limit: 2, window: 1h}
`

// rateLimits starts a sidecar on Redis declaring rateLimitConfig's limiters
// and returns its RateLimitService client.
func rateLimits(t *testing.T) v1.RateLimitServiceClient {
	t.Helper()
	sc := redisSidecars(t, 1, configFile(t, rateLimitConfig)...)[0]
	return v1.NewRateLimitServiceClient(dial(t, sc.Addr()))
}

// The take-decision scenario: Take answers a typed Decision; takes within
// the capacity are allowed with the remaining capacity going down; past it
// the refusal is a Decision (not an error) with a retry delay.
func TestTakeDecision(t *testing.T) {
	scenario(t, "ratelimit-take-decision")
	c := rateLimits(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, limiter := range []string{"hourly", "window"} {
		t.Run(limiter, func(t *testing.T) {
			key := "user/" + rand.Text()
			capacity := map[string]int64{"hourly": 3, "window": 2}[limiter]
			for i := range capacity {
				d, err := resilience.Take(ctx, c, limiter, key)
				if err != nil {
					t.Fatal(err)
				}
				if !d.Allowed || d.Remaining != capacity-1-i || d.Limit != capacity || d.RetryAfter != 0 || d.ResetAfter <= 0 {
					t.Fatalf("take %d: %+v; want allowed, remaining %d, limit %d", i+1, d, capacity-1-i, capacity)
				}
			}
			d, err := resilience.Take(ctx, c, limiter, key)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed || d.Remaining != 0 || d.Limit != capacity || d.RetryAfter <= 0 || d.RetryAfter > time.Hour {
				t.Fatalf("take past the capacity: %+v; want refused with a retry delay of at most 1h", d)
			}
		})
	}

	key := "user/" + rand.Text()
	d, err := resilience.Take(ctx, c, "hourly", key, resilience.WithCost(2))
	if err != nil || !d.Allowed || d.Remaining != 1 {
		t.Fatalf("cost 2: %+v, %v; want allowed with 1 remaining", d, err)
	}
	d, err = resilience.Take(ctx, c, "hourly", key, resilience.WithCost(2))
	if err != nil || d.Allowed || d.Remaining != 1 || d.RetryAfter <= 0 {
		t.Fatalf("cost 2 with 1 remaining: %+v, %v; want refused with a retry delay", d, err)
	}

	for _, tc := range []struct {
		name    string
		limiter string
		opts    []resilience.TakeOption
		want    error
	}{
		{"undeclared limiter", "nope", nil, resilience.ErrLimiterUnknown},
		{"negative cost", "hourly", []resilience.TakeOption{resilience.WithCost(-1)}, resilience.ErrInvalidArgument},
		{"cost above the capacity", "hourly", []resilience.TakeOption{resilience.WithCost(4)}, resilience.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := resilience.Take(ctx, c, tc.limiter, "k", tc.opts...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Take = %v; want %v", err, tc.want)
			}
			ran := false
			err = resilience.RateLimited(ctx, c, tc.limiter, "k", func(context.Context) error { ran = true; return nil }, tc.opts...)
			if !errors.Is(err, tc.want) || ran {
				t.Fatalf("RateLimited = %v (fn ran: %v); want %v without running fn", err, ran, tc.want)
			}
		})
	}
}

// The wait-then-typed-error scenario: RateLimited runs fn when the cost
// fits; when it does not fit within the wait, fn does not run and the
// error is a RateLimitedError with the retry delay; with a wait long
// enough for the cost to fit, the sidecar waits and fn runs.
func TestRateLimitedWaitsThenFailsTyped(t *testing.T) {
	scenario(t, "ratelimit-wait-then-typed-error")
	c := rateLimits(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key := "user/" + rand.Text()
	runs := 0
	fn := func(context.Context) error { runs++; return nil }

	if err := resilience.RateLimited(ctx, c, "slow", key, fn); err != nil || runs != 1 {
		t.Fatalf("first call: %v, %d runs; want fn run", err, runs)
	}
	err := resilience.RateLimited(ctx, c, "slow", key, fn, resilience.WithTakeWait(100*time.Millisecond))
	var rl *resilience.RateLimitedError
	if !errors.Is(err, resilience.ErrRateLimited) || !errors.As(err, &rl) || runs != 1 {
		t.Fatalf("second call: %v, %d runs; want a RateLimitedError without running fn", err, runs)
	}
	if rl.RetryAfter <= 0 || rl.RetryAfter > 3*time.Second || rl.Limiter != "slow" || rl.Key != key || rl.Cost != 1 || rl.Decision.Allowed {
		t.Fatalf("RateLimitedError %+v; want a retry delay in (0, 3s] for cost 1 of slow/%s", rl, key)
	}
	// The token comes back within 3 s: a wait of 10 s gets it. Without a
	// deadline of the caller's, the call is bounded by the wait plus the
	// call timeout, which leaves the whole wait to the sidecar.
	if err := resilience.RateLimited(context.Background(), c, "slow", key, fn,
		resilience.WithTakeWait(10*time.Second), resilience.WithTakeCallTimeout(5*time.Second)); err != nil || runs != 2 {
		t.Fatalf("call with a wait: %v, %d runs; want fn run after the wait", err, runs)
	}
	d, err := resilience.Take(ctx, c, "slow", key)
	if err != nil || d.Allowed {
		t.Fatalf("after the wait: %+v, %v; want the waited-for token taken", d, err)
	}
	fnErr := errors.New("boom")
	other := "user/" + rand.Text()
	if err := resilience.RateLimited(ctx, c, "slow", other, func(context.Context) error { return fnErr }); !errors.Is(err, fnErr) {
		t.Fatalf("RateLimited = %v; want fn's error", err)
	}
}
