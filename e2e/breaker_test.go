package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// brkConfig writes a sidecar config file and returns its path.
func brkConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sidecar.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// brkSidecars starts n sidecars with the config file (on Redis when
// redisURL is set).
func brkSidecars(t *testing.T, n int, redisURL, config string, extra ...string) []v1.BreakerServiceClient {
	t.Helper()
	bin := testharness.BuildSidecar(t)
	args := append([]string{"--config", config}, extra...)
	if redisURL != "" {
		args = append(args, "--redis-url", redisURL)
	}
	out := make([]v1.BreakerServiceClient, n)
	for i := range out {
		out[i] = v1.NewBreakerServiceClient(testharness.StartSidecar(t, bin, args...).Conn(t))
	}
	return out
}

func brkAllow(t *testing.T, ctx context.Context, c v1.BreakerServiceClient, name string) *v1.AllowCallResponse {
	t.Helper()
	r, err := c.AllowCall(ctx, &v1.AllowCallRequest{Breaker: name})
	if err != nil {
		t.Fatalf("AllowCall(%s): %v", name, err)
	}
	return r
}

func brkReport(t *testing.T, ctx context.Context, c v1.BreakerServiceClient, permit string, o v1.CallOutcome) *v1.ReportCallResponse {
	t.Helper()
	r, err := c.ReportCall(ctx, &v1.ReportCallRequest{PermitId: permit, Outcome: o})
	if err != nil {
		t.Fatalf("ReportCall: %v", err)
	}
	return r
}

// brkFail makes one allowed call through c and reports it failed.
func brkFail(t *testing.T, ctx context.Context, c v1.BreakerServiceClient, name string) *v1.ReportCallResponse {
	t.Helper()
	a := brkAllow(t, ctx, c, name)
	if !a.GetAllowed() {
		t.Fatalf("AllowCall(%s) refused in %v", name, a.GetState())
	}
	return brkReport(t, ctx, c, a.GetPermitId(), v1.CallOutcome_CALL_OUTCOME_FAILURE)
}

// brkWaitState polls GetBreaker until the breaker shows want.
func brkWaitState(t *testing.T, ctx context.Context, c v1.BreakerServiceClient, name string, want v1.BreakerState) *v1.Breaker {
	t.Helper()
	var b *v1.Breaker
	testkit.EventuallyNil(t, 20*time.Second, fmt.Sprintf("breaker %s %v", name, want), func() error {
		r, err := c.GetBreaker(ctx, &v1.GetBreakerRequest{Breaker: name})
		if b = r.GetBreaker(); err == nil && b.GetState() != want {
			err = fmt.Errorf("breaker %v", b)
		}
		return err
	})
	return b
}

// TestBreakerSharedAcrossSidecars: a shared breaker lives in Redis, so
// failures reported to one sidecar open it for all, and half-open admits
// exactly half_open_max_calls probes in total, whichever sidecars ask.
func TestBreakerSharedAcrossSidecars(t *testing.T) {
	rd := testharness.StartRedis(t)
	cfg := brkConfig(t, `
breakers:
  fleet:  {scope: shared, consecutive_failures: 3, open_duration: 3s, half_open_max_calls: 2}
  mine:   {scope: local, consecutive_failures: 3, open_duration: 1m}
  quorum: {scope: shared, consecutive_failures: 2, min_reporters: 2, open_duration: 1m}
  probe:  {scope: shared, consecutive_failures: 1, open_duration: 2s}
`)
	sc := brkSidecars(t, 3, rd.URL(), cfg)
	a, b, c := sc[0], sc[1], sc[2]
	ctx := ctxT(t, 2*time.Minute)

	for i := range 3 {
		r := brkFail(t, ctx, a, "fleet")
		if want := map[bool]v1.BreakerState{true: v1.BreakerState_BREAKER_STATE_OPEN, false: v1.BreakerState_BREAKER_STATE_CLOSED}[i == 2]; r.GetState() != want {
			t.Fatalf("failure %d: state %v, want %v", i+1, r.GetState(), want)
		}
	}
	for i, other := range []v1.BreakerServiceClient{b, c} {
		r := brkAllow(t, ctx, other, "fleet")
		if r.GetAllowed() || r.GetState() != v1.BreakerState_BREAKER_STATE_OPEN || r.GetRetryAfter().AsDuration() <= 0 || r.GetDegraded() {
			t.Fatalf("sidecar %d after 3 failures on sidecar 0: %v; want refused, open", i+1, r)
		}
	}

	// A local breaker is per sidecar.
	for range 3 {
		brkFail(t, ctx, a, "mine")
	}
	if r := brkAllow(t, ctx, a, "mine"); r.GetAllowed() {
		t.Fatal("local breaker did not open on its own sidecar")
	}
	if r := brkAllow(t, ctx, b, "mine"); !r.GetAllowed() {
		t.Fatal("local breaker opened on another sidecar")
	}

	// Half-open: exactly 2 probes fleet-wide among 30 concurrent asks.
	brkWaitState(t, ctx, c, "fleet", v1.BreakerState_BREAKER_STATE_HALF_OPEN)
	type probe struct {
		c      v1.BreakerServiceClient
		permit string
	}
	var mu sync.Mutex
	var probes []probe
	var wg sync.WaitGroup
	for _, cl := range sc {
		for range 10 {
			wg.Go(func() {
				r, err := cl.AllowCall(ctx, &v1.AllowCallRequest{Breaker: "fleet"})
				if err != nil {
					t.Error(err)
					return
				}
				if r.GetAllowed() {
					mu.Lock()
					probes = append(probes, probe{cl, r.GetPermitId()})
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(probes) != 2 {
		t.Fatalf("%d probes admitted across 3 sidecars, want half_open_max_calls = 2", len(probes))
	}
	if r := brkReport(t, ctx, probes[0].c, probes[0].permit, v1.CallOutcome_CALL_OUTCOME_SUCCESS); r.GetState() != v1.BreakerState_BREAKER_STATE_HALF_OPEN {
		t.Fatalf("after one probe: %v", r.GetState())
	}
	if r := brkReport(t, ctx, probes[1].c, probes[1].permit, v1.CallOutcome_CALL_OUTCOME_SUCCESS); r.GetState() != v1.BreakerState_BREAKER_STATE_CLOSED {
		t.Fatalf("after both probes succeeded: %v, want closed", r.GetState())
	}
	for i, cl := range sc {
		if r := brkAllow(t, ctx, cl, "fleet"); !r.GetAllowed() || r.GetState() != v1.BreakerState_BREAKER_STATE_CLOSED {
			t.Fatalf("sidecar %d after recovery: %v", i, r)
		}
	}

	// min_reporters 2: one sick sidecar cannot trip the fleet.
	for range 4 {
		brkFail(t, ctx, a, "quorum")
	}
	g, err := c.GetBreaker(ctx, &v1.GetBreakerRequest{Breaker: "quorum"})
	if err != nil || g.GetBreaker().GetState() != v1.BreakerState_BREAKER_STATE_CLOSED || g.GetBreaker().GetCounts().GetFailureReporters() != 1 {
		t.Fatalf("after failures from one sidecar: %v, %v; want closed with 1 reporter", g, err)
	}
	if r := brkFail(t, ctx, b, "quorum"); r.GetState() != v1.BreakerState_BREAKER_STATE_OPEN {
		t.Fatalf("after a failure from a second sidecar: %v, want open", r.GetState())
	}
	if r := brkAllow(t, ctx, c, "quorum"); r.GetAllowed() {
		t.Fatal("quorum breaker open on sidecars 0 and 1 but not 2")
	}

	// A probe whose sidecar never reports cannot wedge half-open: when its
	// permit expires, another sidecar finds the breaker open again.
	brkFail(t, ctx, a, "probe")
	brkWaitState(t, ctx, b, "probe", v1.BreakerState_BREAKER_STATE_HALF_OPEN)
	p, err := a.AllowCall(ctx, &v1.AllowCallRequest{Breaker: "probe", PermitTtl: durationpb.New(300 * time.Millisecond)})
	if err != nil || !p.GetAllowed() || p.GetState() != v1.BreakerState_BREAKER_STATE_HALF_OPEN {
		t.Fatalf("probe: %v, %v", p, err)
	}
	if r := brkAllow(t, ctx, b, "probe"); r.GetAllowed() {
		t.Fatal("a second probe was admitted")
	}
	testkit.RedisTime(400 * time.Millisecond) // the probe's permit expires by Redis time
	if r := brkAllow(t, ctx, c, "probe"); r.GetAllowed() || r.GetState() != v1.BreakerState_BREAKER_STATE_OPEN {
		t.Fatalf("after the probe's permit expired: %v; want refused, open again", r)
	}
	if _, err := a.ReportCall(ctx, &v1.ReportCallRequest{PermitId: p.GetPermitId(), Outcome: v1.CallOutcome_CALL_OUTCOME_SUCCESS}); err != nil {
		t.Fatalf("late report of the expired probe (an earlier generation): %v", err)
	}
}

// brkUpstream is a local HTTP server the sidecar calls.
type brkUpstream struct {
	*httptest.Server
	hits  atomic.Int32
	mu    sync.Mutex
	mode  string
	times []time.Time
	keys  []string
}

func newBrkUpstream(t *testing.T) *brkUpstream {
	u := &brkUpstream{mode: "ok"}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := u.hits.Add(1)
		u.mu.Lock()
		mode := u.mode
		u.times = append(u.times, time.Now())
		u.keys = append(u.keys, r.Header.Get("Idempotency-Key"))
		u.mu.Unlock()
		switch {
		case r.URL.Path == "/v1/slow":
			<-r.Context().Done()
		case r.URL.Path == "/v1/big":
			fmt.Fprint(w, strings.Repeat("x", 4096))
		case mode == "503-then-ok" && n == 1, mode == "503":
			w.WriteHeader(503)
		case mode == "429-retry-after" && n == 1:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(429)
		case mode == "500":
			w.WriteHeader(500)
		default:
			fmt.Fprintf(w, "%s %s", r.Method, r.URL.RequestURI())
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *brkUpstream) set(mode string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.mode, u.times, u.keys = mode, nil, nil
	u.hits.Store(0)
}

func brkReason(t *testing.T, err error, code codes.Code, reason string) *status.Status {
	t.Helper()
	if got, r := reasonOf(err); got != code || r != reason {
		t.Fatalf("err = %v; want %v/%s", err, code, reason)
	}
	st, _ := status.FromError(err)
	return st
}

// TestBreakerExecuteCall drives ExecuteCall of the real binary against a
// real local HTTP server: retries, idempotency keys, Retry-After, timeouts,
// refused targets, body bounds, and the breaker opening and recovering.
func TestBreakerExecuteCall(t *testing.T) {
	up := newBrkUpstream(t)
	cfg := brkConfig(t, fmt.Sprintf(`
breakers:
  api: {consecutive_failures: 3, open_duration: 3s}
upstreams:
  api:
    url: %s/v1
    timeout: 1s
    retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms}
    max_body_bytes: 1024
`, up.URL))
	c := brkSidecars(t, 1, "", cfg)[0]
	ctx := ctxT(t, 2*time.Minute)
	exec := func(r *v1.ExecuteCallRequest) (*v1.ExecuteCallResponse, error) {
		r.Upstream = "api"
		return c.ExecuteCall(ctx, r)
	}

	up.set("ok")
	r, err := exec(&v1.ExecuteCallRequest{Path: "/items/7", Query: "full=1"})
	if err != nil || r.GetStatus() != 200 || string(r.GetBody()) != "GET /v1/items/7?full=1" || r.GetAttempts() != 1 {
		t.Fatalf("GET: %v, %v", r, err)
	}

	up.set("503-then-ok")
	if r, err := exec(&v1.ExecuteCallRequest{}); err != nil || r.GetStatus() != 200 || r.GetAttempts() != 2 || up.hits.Load() != 2 {
		t.Fatalf("GET after a 503: %v, %v, hits %d", r, err, up.hits.Load())
	}
	up.set("503")
	if r, err := exec(&v1.ExecuteCallRequest{Method: "POST", Body: []byte("{}")}); err != nil || r.GetStatus() != 503 || r.GetAttempts() != 1 || up.hits.Load() != 1 {
		t.Fatalf("POST without key: %v, %v, hits %d; want one attempt", r, err, up.hits.Load())
	}
	if _, err := c.ResetBreaker(ctx, &v1.ResetBreakerRequest{Breaker: "api"}); err != nil {
		t.Fatal(err)
	}
	up.set("503-then-ok")
	r, err = exec(&v1.ExecuteCallRequest{Method: "POST", Body: []byte("{}"), IdempotencyKey: "order-9"})
	if err != nil || r.GetStatus() != 200 || r.GetAttempts() != 2 || up.hits.Load() != 2 {
		t.Fatalf("POST with key: %v, %v, hits %d", r, err, up.hits.Load())
	}
	up.mu.Lock()
	if strings.Join(up.keys, ",") != "order-9,order-9" {
		t.Errorf("the upstream saw Idempotency-Key %v", up.keys)
	}
	up.mu.Unlock()

	up.set("429-retry-after")
	if r, err := exec(&v1.ExecuteCallRequest{}); err != nil || r.GetStatus() != 200 || r.GetAttempts() != 2 {
		t.Fatalf("429 with Retry-After: %v, %v", r, err)
	}
	up.mu.Lock()
	gap := up.times[1].Sub(up.times[0])
	up.mu.Unlock()
	if gap < 900*time.Millisecond { // a lower bound: slowness only adds to it
		t.Errorf("second attempt %v after the 429 with Retry-After: 1", gap)
	}

	_, err = exec(&v1.ExecuteCallRequest{Path: "/slow", Method: "POST"})
	brkReason(t, err, codes.DeadlineExceeded, "UPSTREAM_TIMEOUT")
	for _, bad := range []*v1.ExecuteCallRequest{{Path: "/../admin"}, {Path: "/%2e%2e/admin"}, {Path: "http://127.0.0.1:1/"}} {
		_, err := exec(bad)
		brkReason(t, err, codes.InvalidArgument, "UPSTREAM_UNKNOWN")
	}
	_, err = c.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "elsewhere"})
	brkReason(t, err, codes.InvalidArgument, "UPSTREAM_UNKNOWN")
	_, err = exec(&v1.ExecuteCallRequest{Method: "PUT", Body: make([]byte, 2000)})
	brkReason(t, err, codes.InvalidArgument, "")
	_, err = exec(&v1.ExecuteCallRequest{Path: "/big"})
	brkReason(t, err, codes.ResourceExhausted, "LIMIT_EXCEEDED")

	// The breaker: 3 failures open it; then a fast BREAKER_OPEN.
	if _, err := c.ResetBreaker(ctx, &v1.ResetBreakerRequest{Breaker: "api", Reason: "e2e"}); err != nil {
		t.Fatal(err)
	}
	up.set("500")
	for range 3 {
		if r, err := exec(&v1.ExecuteCallRequest{}); err != nil || r.GetStatus() != 500 {
			t.Fatalf("%v, %v", r, err)
		}
	}
	_, err = exec(&v1.ExecuteCallRequest{})
	st := brkReason(t, err, codes.Unavailable, "BREAKER_OPEN")
	var retry time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			retry = ri.GetRetryDelay().AsDuration()
		}
	}
	if retry <= 0 || retry > 3*time.Second {
		t.Fatalf("RetryInfo %v, want the time until half-open (at most 3s)", retry)
	}
	if up.hits.Load() != 3 {
		t.Fatalf("the open breaker let a request through (%d hits)", up.hits.Load())
	}
	// Recovery through half-open.
	up.set("ok")
	brkWaitState(t, ctx, c, "api", v1.BreakerState_BREAKER_STATE_HALF_OPEN)
	if r, err := exec(&v1.ExecuteCallRequest{}); err != nil || r.GetStatus() != 200 || r.GetBreakerState() != v1.BreakerState_BREAKER_STATE_CLOSED {
		t.Fatalf("probe: %v, %v", r, err)
	}
}

// TestBreakerRedisDownFallsBackLocally: with Redis gone, shared breakers
// are decided by each sidecar's local fallback, and say so, instead of
// failing every call; when Redis is back they are shared again.
func TestBreakerRedisDownFallsBackLocally(t *testing.T) {
	rd := testharness.StartRedis(t)
	up := newBrkUpstream(t)
	cfg := brkConfig(t, fmt.Sprintf(`
breakers:
  fleet: {scope: shared, consecutive_failures: 3}
upstreams:
  api: {url: %q, breaker: fleet}
`, up.URL))
	c := brkSidecars(t, 1, rd.URL(), cfg, "--store-timeout", "300ms", "--health-interval", "100ms")[0]
	ctx := ctxT(t, 2*time.Minute)
	if r := brkAllow(t, ctx, c, "fleet"); !r.GetAllowed() || r.GetDegraded() {
		t.Fatalf("with Redis: %v", r)
	}

	rd.Kill()
	a := brkAllow(t, ctx, c, "fleet")
	if !a.GetAllowed() || !a.GetDegraded() {
		t.Fatalf("with Redis down: %v; want allowed by the local fallback", a)
	}
	if r := brkReport(t, ctx, c, a.GetPermitId(), v1.CallOutcome_CALL_OUTCOME_SUCCESS); !r.GetDegraded() || !r.GetCounted() {
		t.Fatalf("report with Redis down: %v", r)
	}
	for range 3 {
		r, err := c.ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "api"})
		if err != nil || r.GetStatus() != 200 {
			t.Fatalf("ExecuteCall with Redis down: %v, %v", r, err)
		}
	}
	g, err := c.GetBreaker(ctx, &v1.GetBreakerRequest{Breaker: "fleet"})
	if err != nil || !g.GetBreaker().GetDegraded() {
		t.Fatalf("GetBreaker with Redis down: %v, %v; want degraded", g, err)
	}

	rd.Restart()
	testkit.Eventually(t, 30*time.Second, "out of degraded mode after Redis came back", func() bool {
		r := brkAllow(t, ctx, c, "fleet")
		if r.GetDegraded() {
			return false
		}
		if !r.GetAllowed() {
			t.Fatalf("after recovery: %v", r)
		}
		return true
	})
}

// TestBreakerConfigErrorExits2: a policy that cannot trip, or a bad
// value, stops the sidecar at start with one line naming the field.
func TestBreakerConfigErrorExits2(t *testing.T) {
	bin := testharness.BuildSidecar(t)
	for _, tc := range []struct{ yaml, want string }{
		{"breakers:\n  payments: {scope: shared, failure_rate: 2}\n", "config: breakers.payments.failure_rate: must be in (0,1], got 2"},
		{"breakers:\n  payments: {consecutive_failures: 0}\n", "config: breakers.payments: cannot trip"},
		{"upstreams:\n  pay: {url: \"http://h\", breaker: nope}\n", "config: upstreams.pay.breaker: breaker \"nope\" is not declared"},
	} {
		sc := testharness.StartSidecarNoWait(t, bin, "--config", brkConfig(t, tc.yaml))
		code, err := sc.Wait(20 * time.Second)
		if err != nil || code != 2 {
			t.Fatalf("exit %d, %v; want 2\n%s", code, err, sc.Log())
		}
		if log := strings.TrimSpace(sc.Log()); !strings.HasPrefix(log, tc.want) || strings.Contains(log, "\n") {
			t.Fatalf("output %q, want one line starting %q", log, tc.want)
		}
	}
}
