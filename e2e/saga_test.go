package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// sagaUpstream is the real HTTP service the compensations go to. It is
// idempotent the way the sidecar's contract asks: a compensation whose
// Idempotency-Key already completed has no new effect. It counts requests
// and effects per key and remembers the order of the effects.
type sagaUpstream struct {
	*httptest.Server
	mu       sync.Mutex
	requests map[string]int
	effects  map[string]int
	order    []string
	// blockOnce: the first request for this key waits until its caller
	// goes away (the sidecar is killed); blocked is signalled then.
	blockOnce map[string]bool
	blocked   chan string
	// down: every request fails with 503.
	down bool
	// traceparents: the traceparent header of each key's last request.
	traceparents map[string]string
}

func newSagaUpstream(t *testing.T) *sagaUpstream {
	t.Helper()
	u := &sagaUpstream{requests: map[string]int{}, effects: map[string]int{}, blockOnce: map[string]bool{}, blocked: make(chan string, 16),
		traceparents: map[string]string{}}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Close)
	return u
}

func (u *sagaUpstream) serve(w http.ResponseWriter, r *http.Request) {
	// Read the body first: only then does the server watch the connection
	// and cancel r.Context() when the caller goes away.
	_, _ = io.Copy(io.Discard, r.Body)
	key := r.Header.Get("Idempotency-Key")
	u.mu.Lock()
	u.requests[key]++
	u.traceparents[key] = r.Header.Get("traceparent")
	block := u.blockOnce[key]
	delete(u.blockOnce, key)
	down := u.down
	u.mu.Unlock()
	if block {
		u.blocked <- key
		<-r.Context().Done()
		return
	}
	if down || key == "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	u.mu.Lock()
	if u.effects[key] == 0 {
		u.order = append(u.order, key)
	}
	u.effects[key]++
	u.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (u *sagaUpstream) setDown(down bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.down = down
}

// effectsOf returns the keys of saga id that took effect, in order.
func (u *sagaUpstream) effectsOf(id string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for _, k := range u.order {
		if strings.HasPrefix(k, id+":") {
			out = append(out, k)
		}
	}
	return out
}

func (u *sagaUpstream) traceparent(key string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.traceparents[key]
}

func (u *sagaUpstream) counts(key string) (requests, effects int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.requests[key], u.effects[key]
}

// sagaSidecars starts n sidecars on one Redis with a config whose upstream
// "inventory" is up, retries compensations twice quickly, and whose
// executors and recovery worker react within about a second.
func sagaSidecars(t *testing.T, n int, up *sagaUpstream) ([]*testharness.Sidecar, []v1.SagaServiceClient) {
	t.Helper()
	rd := testharness.StartRedis(t)
	cfg := brkConfig(t, fmt.Sprintf(`
saga_lease_ttl: 1s
saga_recovery_interval: 100ms
saga_max_body_bytes: 1024
upstreams:
  inventory:
    url: %q
    timeout: 1m
    retry: {max_attempts: 1}
    compensation_retry: {max_attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}
`, up.URL))
	bin := testharness.BuildSidecar(t)
	var scs []*testharness.Sidecar
	var clients []v1.SagaServiceClient
	for range n {
		sc := testharness.StartSidecar(t, bin, "--config", cfg, "--redis-url", rd.URL(), "--log-level", "warn")
		scs = append(scs, sc)
		clients = append(clients, v1.NewSagaServiceClient(sc.Conn(t)))
	}
	return scs, clients
}

func sagaComp(step string) *v1.Compensation {
	return &v1.Compensation{Upstream: "inventory", Method: "POST", Path: "/undo/" + step, Body: []byte(`{"step":"` + step + `"}`)}
}

func startSaga(t *testing.T, ctx context.Context, c v1.SagaServiceClient, id string, timeout time.Duration, steps ...string) {
	t.Helper()
	if _, err := c.StartSaga(ctx, &v1.StartSagaRequest{SagaId: id, Name: "place-order", Timeout: durationpb.New(timeout)}); err != nil {
		t.Fatalf("StartSaga(%s): %v", id, err)
	}
	for _, st := range steps {
		if _, err := c.RecordStep(ctx, &v1.RecordStepRequest{SagaId: id, Step: st, Compensation: sagaComp(st)}); err != nil {
			t.Fatalf("RecordStep(%s, %s): %v", id, st, err)
		}
	}
}

// waitSaga polls GetSaga until the saga is in want (bounded).
func waitSaga(t *testing.T, ctx context.Context, c v1.SagaServiceClient, id string, want v1.SagaState) *v1.Saga {
	t.Helper()
	var s *v1.Saga
	testkit.EventuallyNil(t, 30*time.Second, fmt.Sprintf("saga %s %v", id, want), func() error {
		r, err := c.GetSaga(ctx, &v1.GetSagaRequest{SagaId: id})
		if s = r.GetSaga(); err == nil && s.GetState() != want {
			err = fmt.Errorf("saga %v", s)
		}
		return err
	})
	return s
}

// wantEffects checks that saga id's compensations took effect exactly
// once each, in exactly this order.
func wantEffects(t *testing.T, up *sagaUpstream, id string, steps ...string) {
	t.Helper()
	var want []string
	for _, s := range steps {
		want = append(want, id+":"+s)
	}
	if got := up.effectsOf(id); !slices.Equal(got, want) {
		t.Fatalf("saga %s: compensations took effect as %v, want %v", id, got, want)
	}
	for _, k := range want {
		if _, e := up.counts(k); e != 1 {
			t.Fatalf("%s completed %d times", k, e)
		}
	}
}

// TestSagaCompleteAndAbort: a completed saga compensates nothing; an
// aborted one is compensated newest first, each step once, with the
// Idempotency-Key <saga_id>:<step>; bad input is refused.
func TestSagaCompleteAndAbort(t *testing.T) {
	up := newSagaUpstream(t)
	_, cs := sagaSidecars(t, 1, up)
	c := cs[0]
	ctx := ctxT(t, time.Minute)

	startSaga(t, ctx, c, "order-ok", time.Minute, "reserve", "charge", "ship")
	done, err := c.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: "order-ok"})
	if err != nil || done.GetSaga().GetState() != v1.SagaState_SAGA_STATE_COMPLETED {
		t.Fatalf("complete: %v %v", done, err)
	}

	startSaga(t, ctx, c, "order-bad", time.Minute, "reserve", "charge", "ship")
	if _, err := c.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: "order-bad", Reason: "card declined"}); err != nil {
		t.Fatal(err)
	}
	s := waitSaga(t, ctx, c, "order-bad", v1.SagaState_SAGA_STATE_COMPENSATED)
	wantEffects(t, up, "order-bad", "ship", "charge", "reserve")
	wantEffects(t, up, "order-ok")
	if r, _ := up.counts("order-bad:charge"); r != 1 {
		t.Fatalf("charge requested %d times", r)
	}
	if s.GetReason() != "card declined" || len(s.GetSteps()) != 3 || s.GetSteps()[0].GetStatus() != v1.CompensationStatus_COMPENSATION_STATUS_SUCCEEDED {
		t.Fatalf("saga %v", s)
	}
	list, err := c.ListSagas(ctx, &v1.ListSagasRequest{State: v1.SagaState_SAGA_STATE_COMPLETED})
	if err != nil || len(list.GetSagas()) != 1 || list.GetSagas()[0].GetSagaId() != "order-ok" {
		t.Fatalf("list completed: %v %v", list, err)
	}

	// Bad input.
	_, err = c.GetSaga(ctx, &v1.GetSagaRequest{SagaId: "order-none"})
	if code, reason := reasonOf(err); code != codes.NotFound || reason != "SAGA_NOT_FOUND" {
		t.Fatalf("unknown saga: %v", err)
	}
	_, err = c.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: "order-bad"})
	if code, reason := reasonOf(err); code != codes.FailedPrecondition || reason != "SAGA_STATE_CONFLICT" {
		t.Fatalf("complete an aborted saga: %v", err)
	}
	startSaga(t, ctx, c, "order-in", time.Minute)
	big := sagaComp("x")
	big.Body = make([]byte, 1025)
	_, err = c.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "order-in", Step: "x", Compensation: big})
	if code, _ := reasonOf(err); code != codes.InvalidArgument || !strings.Contains(err.Error(), "compensation.body") {
		t.Fatalf("oversize body: %v", err)
	}
	_, err = c.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "order-in", Step: "x", Compensation: &v1.Compensation{Upstream: "payments", Path: "/x"}})
	if code, reason := reasonOf(err); code != codes.InvalidArgument || reason != "UPSTREAM_UNKNOWN" {
		t.Fatalf("unknown upstream: %v", err)
	}
	for _, d := range []*durationpb.Duration{durationpb.New(time.Millisecond), durationpb.New(1000 * time.Hour), {Seconds: -5}} {
		_, err = c.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "order-t", Name: "n", Timeout: d})
		if code, _ := reasonOf(err); code != codes.InvalidArgument || !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("timeout %v: %v", d, err)
		}
	}
}

// TestSagaTimeout: nobody aborts; the recovery worker compensates the saga
// after its timeout, and a late CompleteSaga is refused.
func TestSagaTimeout(t *testing.T) {
	up := newSagaUpstream(t)
	_, cs := sagaSidecars(t, 1, up)
	c := cs[0]
	ctx := ctxT(t, time.Minute)
	startSaga(t, ctx, c, "order-slow", 500*time.Millisecond, "reserve", "charge")
	s := waitSaga(t, ctx, c, "order-slow", v1.SagaState_SAGA_STATE_COMPENSATED)
	if s.GetReason() != "timeout" {
		t.Fatalf("reason %q", s.GetReason())
	}
	wantEffects(t, up, "order-slow", "charge", "reserve")
	_, err := c.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: "order-slow"})
	if code, reason := reasonOf(err); code != codes.FailedPrecondition || reason != "SAGA_STATE_CONFLICT" {
		t.Fatalf("complete after the timeout: %v", err)
	}
}

// TestSagaSidecarKilledWhileCompensating: the sidecar compensating a saga
// is killed (SIGKILL) while a compensation call hangs; another sidecar
// finishes the saga, and no compensation takes effect twice.
func TestSagaSidecarKilledWhileCompensating(t *testing.T) {
	up := newSagaUpstream(t)
	scs, cs := sagaSidecars(t, 2, up)
	a, b := cs[0], cs[1]
	ctx := ctxT(t, time.Minute)
	startSaga(t, ctx, a, "order-crash", time.Minute, "reserve", "charge", "ship")
	up.mu.Lock()
	up.blockOnce["order-crash:charge"] = true
	up.mu.Unlock()
	if _, err := a.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: "order-crash", Reason: "out of stock"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-up.blocked:
	case <-ctx.Done():
		t.Fatal("the charge compensation never arrived")
	}
	scs[0].Kill()
	s := waitSaga(t, ctx, b, "order-crash", v1.SagaState_SAGA_STATE_COMPENSATED)
	wantEffects(t, up, "order-crash", "ship", "charge", "reserve")
	if r, _ := up.counts("order-crash:charge"); r != 2 {
		t.Fatalf("charge requested %d times, want 2 (the hung call and the takeover)", r)
	}
	if r, _ := up.counts("order-crash:ship"); r != 1 {
		t.Fatalf("ship requested %d times: a logged success was repeated", r)
	}
	if s.GetSteps()[1].GetAttempts() != 1 {
		t.Fatalf("charge attempts %d: the killed attempt was never logged, the takeover's was", s.GetSteps()[1].GetAttempts())
	}
}

// TestSagaCompensationFailedThenRetried: the compensation endpoint is down
// beyond the retry budget: the saga is COMPENSATION_FAILED and listed;
// once the endpoint is back, RetryCompensation finishes it.
func TestSagaCompensationFailedThenRetried(t *testing.T) {
	up := newSagaUpstream(t)
	_, cs := sagaSidecars(t, 1, up)
	c := cs[0]
	ctx := ctxT(t, time.Minute)
	startSaga(t, ctx, c, "order-stuck", time.Minute, "reserve", "charge")
	up.setDown(true)
	if _, err := c.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: "order-stuck"}); err != nil {
		t.Fatal(err)
	}
	s := waitSaga(t, ctx, c, "order-stuck", v1.SagaState_SAGA_STATE_COMPENSATION_FAILED)
	if r, _ := up.counts("order-stuck:charge"); r != 2 {
		t.Fatalf("charge tried %d times, want the budget of 2", r)
	}
	if st := s.GetSteps()[1]; st.GetStatus() != v1.CompensationStatus_COMPENSATION_STATUS_FAILED || !strings.Contains(st.GetLastError(), "503") ||
		s.GetSteps()[0].GetStatus() != v1.CompensationStatus_COMPENSATION_STATUS_PENDING || !strings.Contains(s.GetLastError(), `"charge"`) {
		t.Fatalf("failed saga %v", s)
	}
	list, err := c.ListSagas(ctx, &v1.ListSagasRequest{State: v1.SagaState_SAGA_STATE_COMPENSATION_FAILED})
	if err != nil || len(list.GetSagas()) != 1 || list.GetSagas()[0].GetSagaId() != "order-stuck" {
		t.Fatalf("list failed: %v %v", list, err)
	}

	up.setDown(false)
	if _, err := c.RetryCompensation(ctx, &v1.RetryCompensationRequest{SagaId: "order-stuck"}); err != nil {
		t.Fatal(err)
	}
	waitSaga(t, ctx, c, "order-stuck", v1.SagaState_SAGA_STATE_COMPENSATED)
	wantEffects(t, up, "order-stuck", "charge", "reserve")
	list, err = c.ListSagas(ctx, &v1.ListSagasRequest{State: v1.SagaState_SAGA_STATE_COMPENSATION_FAILED})
	if err != nil || len(list.GetSagas()) != 0 {
		t.Fatalf("list failed after the retry: %v %v", list, err)
	}
}

// TestSagaManyAcrossSidecarsWithOneKilled: 200 concurrent sagas over 3
// sidecars, each completed, aborted or left to time out, while one sidecar
// is killed. Every saga ends in the terminal state its calls imply, each
// compensation of a compensated saga took effect once, newest first, and a
// completed saga compensated nothing.
func TestSagaManyAcrossSidecarsWithOneKilled(t *testing.T) {
	const sagas = 200
	up := newSagaUpstream(t)
	scs, cs := sagaSidecars(t, 3, up)
	ctx := ctxT(t, 2*time.Minute)
	steps := []string{"reserve", "charge", "ship"}

	// call runs f on a random live sidecar, moving to another when the
	// one it picked is dead (every saga call is idempotent).
	var deadMu sync.Mutex
	dead := map[int]bool{}
	call := func(rng *rand.Rand, f func(context.Context, v1.SagaServiceClient) error) error {
		var err error
		for try := 0; try < 20; try++ {
			deadMu.Lock()
			i := rng.IntN(len(cs))
			skip := dead[i]
			deadMu.Unlock()
			if skip {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = f(cctx, cs[i])
			cancel()
			if code, _ := reasonOf(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
				return err
			}
		}
		return err
	}

	type plan int
	const (
		complete plan = iota
		abort
		timeout
	)
	outcome := make([]v1.SagaState, sagas) // what the calls imply
	var wg sync.WaitGroup
	killed := make(chan struct{})
	for i := range sagas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 42))
			id := fmt.Sprintf("bulk-%03d", i)
			p := plan(rng.IntN(3))
			to := 30 * time.Second
			if p == timeout {
				to = 3 * time.Second
			}
			if i == sagas/2 {
				deadMu.Lock()
				dead[2] = true
				deadMu.Unlock()
				scs[2].Kill()
				close(killed)
			}
			err := call(rng, func(ctx context.Context, c v1.SagaServiceClient) error {
				_, err := c.StartSaga(ctx, &v1.StartSagaRequest{SagaId: id, Name: "bulk", Timeout: durationpb.New(to)})
				return err
			})
			if err != nil {
				t.Errorf("%s: start: %v", id, err)
				return
			}
			for _, st := range steps {
				err := call(rng, func(ctx context.Context, c v1.SagaServiceClient) error {
					_, err := c.RecordStep(ctx, &v1.RecordStepRequest{SagaId: id, Step: st, Compensation: sagaComp(st)})
					return err
				})
				if err != nil {
					t.Errorf("%s: record %s: %v", id, st, err)
					return
				}
			}
			switch p {
			case complete:
				err = call(rng, func(ctx context.Context, c v1.SagaServiceClient) error {
					_, err := c.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: id})
					return err
				})
				outcome[i] = v1.SagaState_SAGA_STATE_COMPLETED
			case abort:
				err = call(rng, func(ctx context.Context, c v1.SagaServiceClient) error {
					_, err := c.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: id, Reason: "random"})
					return err
				})
				outcome[i] = v1.SagaState_SAGA_STATE_COMPENSATED
			default:
				outcome[i] = v1.SagaState_SAGA_STATE_COMPENSATED
			}
			if err != nil {
				t.Errorf("%s: %v", id, err)
			}
		}()
	}
	wg.Wait()
	<-killed
	live := cs[0]
	for i := range sagas {
		id := fmt.Sprintf("bulk-%03d", i)
		s := waitSaga(t, ctx, live, id, outcome[i])
		if outcome[i] == v1.SagaState_SAGA_STATE_COMPLETED {
			wantEffects(t, up, id)
			continue
		}
		if len(s.GetSteps()) != 3 {
			t.Fatalf("%s: %d steps", id, len(s.GetSteps()))
		}
		wantEffects(t, up, id, "ship", "charge", "reserve")
	}
	// Nothing else is left behind.
	for _, st := range []v1.SagaState{v1.SagaState_SAGA_STATE_RUNNING, v1.SagaState_SAGA_STATE_COMPENSATING, v1.SagaState_SAGA_STATE_COMPENSATION_FAILED} {
		l, err := live.ListSagas(ctx, &v1.ListSagasRequest{State: st})
		if err != nil || len(l.GetSagas()) != 0 {
			t.Fatalf("sagas left %v: %v %v", st, l, err)
		}
	}
	var total int
	for tok := ""; ; {
		l, err := live.ListSagas(ctx, &v1.ListSagasRequest{PageSize: 100, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		total += len(l.GetSagas())
		if tok = l.GetNextPageToken(); tok == "" {
			break
		}
	}
	if total != sagas {
		t.Fatalf("listed %d sagas, want %d", total, sagas)
	}
}

// TestSagaCompensationJoinsTheTrace: a compensation's request carries the
// trace context of the RecordStep call that recorded its step (W3C
// traceparent, same trace id), so the undo sits in the app's trace, even
// though it runs later, from the saga log, after the call has ended.
func TestSagaCompensationJoinsTheTrace(t *testing.T) {
	up := newSagaUpstream(t)
	_, cs := sagaSidecars(t, 1, up)
	c := cs[0]
	ctx := ctxT(t, time.Minute)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	if _, err := c.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "order-traced", Name: "place-order", Timeout: durationpb.New(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	traced := metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	if _, err := c.RecordStep(traced, &v1.RecordStepRequest{SagaId: "order-traced", Step: "reserve", Compensation: sagaComp("reserve")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "order-traced", Step: "charge", Compensation: sagaComp("charge")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: "order-traced"}); err != nil {
		t.Fatal(err)
	}
	waitSaga(t, ctx, c, "order-traced", v1.SagaState_SAGA_STATE_COMPENSATED)
	tp := up.traceparent("order-traced:reserve")
	if parts := strings.Split(tp, "-"); len(parts) != 4 || parts[1] != traceID {
		t.Fatalf("compensation of reserve had traceparent %q; want trace id %s", tp, traceID)
	}
	if tp := up.traceparent("order-traced:charge"); strings.Contains(tp, traceID) {
		t.Fatalf("compensation of charge, recorded outside the trace, had traceparent %q", tp)
	}
}
