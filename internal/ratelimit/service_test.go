package ratelimit_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// scriptCalls is how many scripts Redis has run (EVALSHA and EVAL).
func scriptCalls(t *testing.T, rdb *redis.Client) int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, line := range strings.Split(info, "\n") {
		if strings.HasPrefix(line, "cmdstat_evalsha:calls=") || strings.HasPrefix(line, "cmdstat_eval:calls=") {
			v, _, _ := strings.Cut(strings.SplitN(line, "=", 2)[1], ",")
			c, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			n += c
		}
	}
	return n
}

func newService(t *testing.T, st ratelimit.Store, lims ratelimit.Config) *ratelimit.Service {
	t.Helper()
	svc, err := ratelimit.NewService(ratelimit.Options{Limiters: lims, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func TestServiceUnknownLimiter(t *testing.T) {
	svc := newService(t, ratelimit.NewMemoryStore(nil), ratelimit.Config{"api": {Rate: 1}})
	if _, err := svc.Take(t.Context(), "nope", "", 1, 0, ratelimit.Override{}); !errors.Is(err, ratelimit.ErrLimiterUnknown) {
		t.Fatalf("Take: %v", err)
	}
	if _, _, err := svc.Get(t.Context(), "nope", ""); !errors.Is(err, ratelimit.ErrLimiterUnknown) {
		t.Fatalf("Get: %v", err)
	}
	if _, err := ratelimit.NewService(ratelimit.Options{Limiters: ratelimit.Config{"bad": {Rate: -1}}, Store: ratelimit.NewMemoryStore(nil)}); err == nil ||
		!strings.Contains(err.Error(), "bad.rate") {
		t.Fatalf("invalid config: %v", err)
	}
}

// TestServiceAnswersExhaustedKeysLocally: once the store refuses a key,
// the sidecar refuses it (same or larger cost) until retry_after without
// a script, and asks the store again after it.
func TestServiceAnswersExhaustedKeysLocally(t *testing.T) {
	r := testharness.StartRedis(t)
	rdb := r.Client(t)
	svc := newService(t, ratelimit.NewRedisStore(rdb, "hot", 2*time.Second),
		ratelimit.Config{"api": {Rate: 4, Burst: 2}}) // a token per 250ms
	ctx := t.Context()
	for range 2 {
		if d, err := svc.Take(ctx, "api", "k", 1, 0, ratelimit.Override{}); err != nil || !d.Allowed || d.Cached {
			t.Fatalf("take: %+v, %v", d, err)
		}
	}
	d, err := svc.Take(ctx, "api", "k", 1, 0, ratelimit.Override{})
	if err != nil || d.Allowed || d.Cached || d.RetryAfter <= 0 {
		t.Fatalf("refusal from the store: %+v, %v", d, err)
	}
	before := scriptCalls(t, rdb)
	for range 50 {
		d, err := svc.Take(ctx, "api", "k", 1, 0, ratelimit.Override{})
		if err != nil || d.Allowed || !d.Cached || d.RetryAfter <= 0 || d.Limit != 2 {
			t.Fatalf("hot refusal: %+v, %v", d, err)
		}
	}
	if after := scriptCalls(t, rdb); after != before {
		t.Fatalf("%d scripts ran for refusals the sidecar knew", after-before)
	}
	// Another key still goes to the store.
	if d, _ := svc.Take(ctx, "api", "other", 1, 0, ratelimit.Override{}); !d.Allowed || d.Cached {
		t.Fatalf("other key: %+v", d)
	}
	time.Sleep(d.RetryAfter) // real time: the remembered refusal ends at retry_after
	if d, err := svc.Take(ctx, "api", "k", 1, 0, ratelimit.Override{}); err != nil || !d.Allowed || d.Cached {
		t.Fatalf("after retry_after: %+v, %v", d, err)
	}
}

// TestServiceStoreDownModes: with Redis gone, fail_open allows, fail_closed
// refuses, local enforces the sidecar's share; all degraded.
func TestServiceStoreDownModes(t *testing.T) {
	r := testharness.StartRedis(t)
	st := ratelimit.NewRedisStore(r.Client(t), "down", 200*time.Millisecond)
	svc := newService(t, st, ratelimit.Config{
		"open":   {Rate: 1, Burst: 1, StoreDown: ratelimit.FailOpen},
		"closed": {Rate: 1, Burst: 1, StoreDown: ratelimit.FailClosed},
		"local":  {Rate: 1, Period: time.Hour, Burst: 9, StoreDown: ratelimit.Local, ExpectedSidecars: 3},
	})
	ctx := t.Context()
	if d, err := svc.Take(ctx, "open", "k", 1, 0, ratelimit.Override{}); err != nil || !d.Allowed || d.Degraded {
		t.Fatalf("store up: %+v, %v", d, err)
	}
	r.Kill()
	for range 3 {
		if d, err := svc.Take(ctx, "open", "k", 1, 0, ratelimit.Override{}); err != nil || !d.Allowed || !d.Degraded {
			t.Fatalf("fail_open: %+v, %v", d, err)
		}
		if d, err := svc.Take(ctx, "closed", "k", 1, 0, ratelimit.Override{}); err != nil || d.Allowed || !d.Degraded || d.RetryAfter != ratelimit.FailClosedRetry {
			t.Fatalf("fail_closed: %+v, %v", d, err)
		}
	}
	// local: burst 9 over 3 sidecars is 3 here.
	for i := range 3 {
		if d, err := svc.Take(ctx, "local", "k", 1, 0, ratelimit.Override{}); err != nil || !d.Allowed || !d.Degraded || d.Remaining != int64(2-i) || d.Limit != 3 {
			t.Fatalf("local take %d: %+v, %v", i, d, err)
		}
	}
	if d, err := svc.Take(ctx, "local", "k", 1, 0, ratelimit.Override{}); err != nil || d.Allowed || !d.Degraded {
		t.Fatalf("local past its share: %+v, %v", d, err)
	}
	if d, _, err := svc.Get(ctx, "local", "k"); err != nil || d.Allowed || !d.Degraded {
		t.Fatalf("local Get: %+v, %v", d, err)
	}
	// Get on the other modes says the store is unavailable.
	if _, _, err := svc.Get(ctx, "open", "k"); err == nil {
		t.Fatal("Get with the store down and no local state: no error")
	}
	r.Restart()
	if d, err := svc.Take(ctx, "closed", "k", 1, 0, ratelimit.Override{}); err != nil || d.Degraded {
		t.Fatalf("store back: %+v, %v", d, err)
	}
}

// TestServiceWait: a waiting take is allowed once its cost fits; one
// that cannot fit within its wait is refused at once with retry_after.
func TestServiceWait(t *testing.T) {
	svc := newService(t, ratelimit.NewMemoryStore(nil), ratelimit.Config{
		"api":  {Rate: 20, Burst: 1}, // 50ms per token
		"slow": {Rate: 1, Period: time.Hour, Burst: 1},
	})
	ctx := t.Context()
	if d, _ := svc.Take(ctx, "api", "k", 1, 0, ratelimit.Override{}); !d.Allowed {
		t.Fatalf("first: %+v", d)
	}
	d, err := svc.Take(ctx, "api", "k", 1, time.Millisecond, ratelimit.Override{})
	if err != nil || d.Allowed || d.RetryAfter <= time.Millisecond {
		t.Fatalf("take that cannot fit in its wait: %+v, %v", d, err)
	}
	if d, err := svc.Take(ctx, "api", "k", 1, 5*time.Second, ratelimit.Override{}); err != nil || !d.Allowed {
		t.Fatalf("waiting take: %+v, %v", d, err)
	}
	// Concurrent waiters all get their token, one per 50ms.
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Go(func() {
			if d, err := svc.Take(ctx, "api", "k", 1, 10*time.Second, ratelimit.Override{}); err != nil || !d.Allowed {
				errs <- errors.New("waiter refused")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A waiter whose context ends returns its context's error.
	if d, _ := svc.Take(ctx, "slow", "k", 1, 0, ratelimit.Override{}); !d.Allowed {
		t.Fatalf("slow: %+v", d)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := svc.Take(cctx, "slow", "k", 1, 2*time.Hour, ratelimit.Override{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

// TestServiceOverrides: a Take may lower (or, up to max_*, raise) the
// declared burst, rate or limit for itself; the key's count is shared.
func TestServiceOverrides(t *testing.T) {
	svc := newService(t, ratelimit.NewMemoryStore(nil), ratelimit.Config{
		"api": {Rate: 1, Period: time.Hour, Burst: 3, MaxBurst: 5, MaxCost: 3},
		"win": {Algorithm: ratelimit.FixedWindow, Limit: 4, Window: time.Hour},
	})
	ctx := t.Context()
	take := func(name string, o ratelimit.Override) ratelimit.Decision {
		t.Helper()
		d, err := svc.Take(ctx, name, "k", 1, 0, o)
		if err != nil {
			t.Fatalf("Take(%s, %+v): %v", name, o, err)
		}
		return d
	}
	// A burst of 1 for this call: one token, then refused, though the
	// declared burst is 3.
	if d := take("api", ratelimit.Override{Burst: 1}); !d.Allowed || d.Limit != 1 {
		t.Fatalf("burst 1: %+v", d)
	}
	if d := take("api", ratelimit.Override{Burst: 1}); d.Allowed {
		t.Fatalf("burst 1, second: %+v", d)
	}
	// The declared burst still has room on the same key, and max_burst 5 more.
	for range 2 {
		if d := take("api", ratelimit.Override{}); !d.Allowed {
			t.Fatalf("declared burst: %+v", d)
		}
	}
	if d := take("api", ratelimit.Override{}); d.Allowed {
		t.Fatalf("declared burst exhausted: %+v", d)
	}
	if d := take("api", ratelimit.Override{Burst: 5}); !d.Allowed || d.Limit != 5 {
		t.Fatalf("burst 5: %+v", d)
	}
	if d := take("win", ratelimit.Override{Limit: 2}); !d.Allowed || d.Remaining != 1 || d.Limit != 2 {
		t.Fatalf("limit 2: %+v", d)
	}
	for _, c := range []struct {
		name  string
		o     ratelimit.Override
		field string
	}{
		{"api", ratelimit.Override{Burst: 6}, "burst"},
		{"api", ratelimit.Override{Rate: 2}, "rate"},
		{"api", ratelimit.Override{Rate: -1}, "rate"},
		{"api", ratelimit.Override{Limit: 2}, "limit"},
		{"win", ratelimit.Override{Limit: 5}, "limit"},
		{"win", ratelimit.Override{Burst: 1}, "burst"},
		{"win", ratelimit.Override{Rate: 1}, "rate"},
	} {
		_, err := svc.Take(ctx, c.name, "k", 1, 0, c.o)
		var fe *field.Error
		if !errors.As(err, &fe) || fe.Path != c.field {
			t.Errorf("%s %+v: %v, want a problem of %s", c.name, c.o, err, c.field)
		}
	}
}
