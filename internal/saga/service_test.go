package saga_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// compServer is a real local HTTP server standing for the services a saga
// compensates in. It records every compensation it completes, by
// idempotency key, and answers with the handler of the moment.
type compServer struct {
	*httptest.Server
	mu      sync.Mutex
	handler func(key string, w http.ResponseWriter, r *http.Request) bool // true: completed
	order   []string                                                      // keys, in completion order
	done    map[string]int                                                // key -> completions with an effect
	seen    map[string]int                                                // key -> requests
	bodies  map[string]string
}

func newCompServer(t *testing.T) *compServer {
	t.Helper()
	s := &compServer{done: map[string]int{}, seen: map[string]int{}, bodies: map[string]string{}}
	s.handler = func(string, http.ResponseWriter, *http.Request) bool { return true }
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.seen[key]++
		h := s.handler
		s.mu.Unlock()
		if !h(key, w, r) {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		// Idempotent: a key seen completed before has no new effect.
		if s.done[key] == 0 {
			s.order = append(s.order, key)
			s.bodies[key] = r.Method + " " + r.URL.Path + " " + r.Header.Get("X-Tenant") + " " + string(body)
		}
		s.done[key]++
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *compServer) set(h func(key string, w http.ResponseWriter, r *http.Request) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handler = h
}

func (s *compServer) completed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.order...)
}

func (s *compServer) requests(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[key]
}

// fixture is a saga service on a memory store, compensating through a
// real upstream caller to srv.
type fixture struct {
	svc     *saga.Service
	store   saga.Store
	srv     *compServer
	metrics *metrics.Metrics
}

type fixtureOpt func(*saga.Options)

func newFixture(t *testing.T, srv *compServer, st saga.Store, opts ...fixtureOpt) *fixture {
	t.Helper()
	if srv == nil {
		srv = newCompServer(t)
	}
	if st == nil {
		st = saga.NewMemoryStore(nil)
	}
	brk, err := breaker.NewService(breaker.Options{Policies: map[string]breaker.Policy{
		"inventory": {ConsecutiveFailures: 1000, OpenDuration: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(brk.Close)
	caller, err := upstream.New([]upstream.Config{{Name: "inventory", URL: srv.URL + "/api", MaxAttempts: 1, MaxBodyBytes: 4096}},
		upstream.Options{Breakers: brk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(caller.Close)
	m := metrics.New()
	o := saga.Options{
		Store: st, Caller: caller, Metrics: m,
		Lease: time.Second, RecoveryInterval: 20 * time.Millisecond, MaxBodyBytes: 1024,
		Retry: func(string) saga.RetryPolicy {
			return saga.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
		},
	}
	for _, f := range opts {
		f(&o)
	}
	svc, err := saga.NewService(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return &fixture{svc: svc, store: st, srv: srv, metrics: m}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (f *fixture) startWithSteps(t *testing.T, id string, timeout time.Duration, steps ...string) {
	t.Helper()
	ctx := testCtx(t)
	if _, created, err := f.svc.Start(ctx, saga.NewSaga{ID: id, Name: "order", Timeout: timeout}); err != nil || !created {
		t.Fatalf("start %s: %v %v", id, created, err)
	}
	for i, st := range steps {
		c := saga.Compensation{Upstream: "inventory", Path: "/undo/" + st, Body: []byte(st),
			Headers: []upstream.Header{{Name: "X-Tenant", Value: "t1"}}}
		idx, created, err := f.svc.RecordStep(ctx, id, st, c)
		if err != nil || idx != i+1 || !created {
			t.Fatalf("record %s/%s: %d %v %v", id, st, idx, created, err)
		}
	}
}

// waitState polls until the saga is in want (bounded, not a timing assertion).
func (f *fixture) waitState(t *testing.T, id string, want saga.State) saga.Saga {
	t.Helper()
	var s saga.Saga
	testkit.EventuallyNil(t, 20*time.Second, fmt.Sprintf("saga %s %v", id, want), func() (err error) {
		s, err = f.svc.Get(context.Background(), id)
		if err == nil && s.State != want {
			err = fmt.Errorf("saga is %+v", s)
		}
		return err
	})
	return s
}

func TestSagaCompleteRunsNoCompensation(t *testing.T) {
	f := newFixture(t, nil, nil)
	f.startWithSteps(t, "o-1", time.Minute, "reserve", "charge", "ship")
	s, err := f.svc.Complete(testCtx(t), "o-1")
	if err != nil || s.State != saga.Completed {
		t.Fatalf("complete: %+v %v", s, err)
	}
	f.svc.Close() // the worker has nothing to do either
	if got := f.srv.completed(); len(got) != 0 {
		t.Fatalf("compensations ran: %v", got)
	}
	if n := testutil.ToFloat64(f.metrics.SagaTotal.WithLabelValues("COMPLETED")); n != 1 {
		t.Fatalf("saga_total{COMPLETED} = %v", n)
	}
}

func TestSagaAbortCompensatesNewestFirstOnce(t *testing.T) {
	f := newFixture(t, nil, nil)
	f.startWithSteps(t, "o-2", time.Minute, "reserve", "charge", "ship")
	s, err := f.svc.Abort(testCtx(t), "o-2", "payment declined")
	if err != nil || (s.State != saga.Compensating && s.State != saga.Compensated) {
		t.Fatalf("abort: %+v %v", s, err)
	}
	s = f.waitState(t, "o-2", saga.Compensated)
	want := []string{"o-2:ship", "o-2:charge", "o-2:reserve"}
	if got := f.srv.completed(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("compensations %v, want %v", got, want)
	}
	for _, k := range want {
		if f.srv.requests(k) != 1 {
			t.Fatalf("%s requested %d times", k, f.srv.requests(k))
		}
	}
	if b := f.srv.bodies["o-2:charge"]; b != "POST /api/undo/charge t1 charge" {
		t.Fatalf("compensation request %q", b)
	}
	for _, st := range s.Steps {
		if st.Status != saga.StepSucceeded || st.Attempts != 1 || st.CompensateTime.IsZero() {
			t.Fatalf("step %+v", st)
		}
	}
	if s.Reason != "payment declined" {
		t.Fatalf("reason %q", s.Reason)
	}
	for st, want := range map[string]float64{"RUNNING": 1, "COMPENSATING": 1, "COMPENSATED": 1} {
		if n := testutil.ToFloat64(f.metrics.SagaTotal.WithLabelValues(st)); n != want {
			t.Fatalf("saga_total{%s} = %v, want %v", st, n, want)
		}
	}
}

func TestSagaTimeoutCompensatesWithoutAbort(t *testing.T) {
	f := newFixture(t, nil, nil)
	f.startWithSteps(t, "o-3", 100*time.Millisecond, "reserve", "charge")
	s := f.waitState(t, "o-3", saga.Compensated)
	if s.Reason != "timeout" {
		t.Fatalf("reason %q", s.Reason)
	}
	if got := f.srv.completed(); fmt.Sprint(got) != "[o-3:charge o-3:reserve]" {
		t.Fatalf("compensations %v", got)
	}
	_, err := f.svc.Complete(testCtx(t), "o-3")
	if !errors.Is(err, saga.ErrStateConflict) {
		t.Fatalf("complete after the timeout: %v", err)
	}
}

func TestSagaCompensationFailedThenRetried(t *testing.T) {
	f := newFixture(t, nil, nil)
	down := func(_ string, w http.ResponseWriter, _ *http.Request) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return false
	}
	f.srv.set(down)
	f.startWithSteps(t, "o-4", time.Minute, "reserve", "charge")
	if _, err := f.svc.Abort(testCtx(t), "o-4", "x"); err != nil {
		t.Fatal(err)
	}
	s := f.waitState(t, "o-4", saga.CompensationFailed)
	if f.srv.requests("o-4:charge") != 3 || f.srv.requests("o-4:reserve") != 0 {
		t.Fatalf("requests: charge %d reserve %d; want 3 tries then stop", f.srv.requests("o-4:charge"), f.srv.requests("o-4:reserve"))
	}
	if st := s.Steps[1]; st.Status != saga.StepFailed || st.Attempts != 3 || !strings.Contains(st.LastError, "503") ||
		!strings.Contains(s.LastError, `"charge"`) {
		t.Fatalf("failed saga %+v / step %+v", s, st)
	}
	list, _, err := f.svc.List(testCtx(t), saga.CompensationFailed, "", 10)
	if err != nil || len(list) != 1 || list[0].ID != "o-4" {
		t.Fatalf("list failed: %+v %v", list, err)
	}
	testkit.Eventually(t, 10*time.Second, "saga_stuck to become 1", func() bool { return testutil.ToFloat64(f.metrics.SagaStuck) == 1 })
	if _, err := f.svc.Complete(testCtx(t), "o-4"); !errors.Is(err, saga.ErrStateConflict) {
		t.Fatalf("complete a failed saga: %v", err)
	}

	f.srv.set(func(string, http.ResponseWriter, *http.Request) bool { return true })
	if s, err = f.svc.RetryCompensation(testCtx(t), "o-4"); err != nil || s.State != saga.Compensating {
		t.Fatalf("retry: %+v %v", s, err)
	}
	s = f.waitState(t, "o-4", saga.Compensated)
	if got := f.srv.completed(); fmt.Sprint(got) != "[o-4:charge o-4:reserve]" || s.Steps[1].Attempts != 4 {
		t.Fatalf("after retry: %v, steps %+v", got, s.Steps)
	}
	if _, err := f.svc.RetryCompensation(testCtx(t), "o-4"); !errors.Is(err, saga.ErrStateConflict) {
		t.Fatalf("retry of a compensated saga: %v", err)
	}
}

func TestSagaClientErrorFailsAtOnce(t *testing.T) {
	f := newFixture(t, nil, nil)
	f.srv.set(func(_ string, w http.ResponseWriter, _ *http.Request) bool {
		w.WriteHeader(http.StatusBadRequest)
		return false
	})
	f.startWithSteps(t, "o-5", time.Minute, "reserve")
	if _, err := f.svc.Abort(testCtx(t), "o-5", "x"); err != nil {
		t.Fatal(err)
	}
	s := f.waitState(t, "o-5", saga.CompensationFailed)
	if f.srv.requests("o-5:reserve") != 1 || !strings.Contains(s.LastError, "400") {
		t.Fatalf("a 400 was retried (%d requests) or not reported: %q", f.srv.requests("o-5:reserve"), s.LastError)
	}
}

func TestSagaRecordStepChecksTheCompensation(t *testing.T) {
	f := newFixture(t, nil, nil)
	ctx := testCtx(t)
	if _, _, err := f.svc.Start(ctx, saga.NewSaga{ID: "o-6", Name: "order", Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		c      saga.Compensation
		field  string
		target bool
	}{
		{saga.Compensation{Upstream: "payments", Path: "/x"}, "compensation.upstream", true},
		{saga.Compensation{Upstream: "inventory", Path: "/../admin"}, "compensation.path", true},
		{saga.Compensation{Upstream: "inventory", Path: "/x", Method: "BREW"}, "compensation.method", false},
		{saga.Compensation{Upstream: "inventory", Path: "/x", Body: make([]byte, 1025)}, "compensation.body", false},
		{saga.Compensation{Upstream: "inventory", Path: "/x", Headers: []upstream.Header{{Name: "Idempotency-Key", Value: "k"}}}, "compensation.headers", false},
	} {
		_, _, err := f.svc.RecordStep(ctx, "o-6", "s", tc.c)
		var re *upstream.RequestError
		if !errors.As(err, &re) || re.Field != tc.field || re.Target != tc.target {
			t.Errorf("%+v: err %v; want a request error on %s (target %v)", tc.c, err, tc.field, tc.target)
		}
	}
	if s, _ := f.svc.Get(ctx, "o-6"); s.StepCount != 0 {
		t.Fatalf("refused steps were recorded: %d", s.StepCount)
	}
	_, _, err := f.svc.Start(ctx, saga.NewSaga{ID: "o-6", Name: "refund", Timeout: time.Minute})
	if !errors.Is(err, saga.ErrAlreadyExists) {
		t.Fatalf("start with another name: %v", err)
	}
	if _, err := f.svc.Abort(ctx, "nope", ""); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("abort unknown: %v", err)
	}
}

// lockElector adapts the lock store, as cmd/sidecar does.
type lockElector struct{ s lock.Store }

func (e lockElector) TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (bool, error) {
	_, _, ok, err := e.s.TryAcquire(ctx, key, leaseID, owner, ttl)
	return ok, err
}

func (e lockElector) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (bool, error) {
	_, err := e.s.Renew(ctx, key, leaseID, ttl)
	if errors.Is(err, lock.ErrLeaseLost) {
		return false, nil
	}
	return err == nil, err
}

func (e lockElector) Release(ctx context.Context, key, leaseID string) error {
	err := e.s.Release(ctx, key, leaseID)
	if errors.Is(err, lock.ErrLeaseLost) {
		return nil
	}
	return err
}

// TestSagaShutdownHandsTheSagaOver: a sidecar stops while a compensation call
// hangs; it gives its lease up, and another sidecar's recovery worker
// finishes the saga. Every compensation takes effect once.
func TestSagaShutdownHandsTheSagaOver(t *testing.T) {
	srv := newCompServer(t)
	st := saga.NewMemoryStore(nil)
	shared := lock.NewMemoryStore(nil)
	elector := func(o *saga.Options) { o.Elector = lockElector{shared} }
	a := newFixture(t, srv, st, elector)

	hung := make(chan struct{})
	var once sync.Once
	srv.set(func(key string, _ http.ResponseWriter, r *http.Request) bool {
		if key != "o-7:charge" {
			return true
		}
		first := false
		once.Do(func() { first = true })
		if !first {
			return true
		}
		close(hung)
		<-r.Context().Done() // until the caller gives up
		return false
	})
	a.startWithSteps(t, "o-7", time.Minute, "reserve", "charge", "ship")
	if _, err := a.svc.Abort(testCtx(t), "o-7", "x"); err != nil {
		t.Fatal(err)
	}
	<-hung
	b := newFixture(t, srv, st, elector)
	a.svc.Close()
	s := b.waitState(t, "o-7", saga.Compensated)
	if got := srv.completed(); fmt.Sprint(got) != "[o-7:ship o-7:charge o-7:reserve]" {
		t.Fatalf("compensations %v", got)
	}
	if srv.requests("o-7:charge") != 2 || s.Steps[1].Attempts != 1 {
		t.Fatalf("charge requested %d times, %d attempts logged", srv.requests("o-7:charge"), s.Steps[1].Attempts)
	}
}

func TestSagaIdempotencyKey(t *testing.T) {
	for _, tc := range []struct{ saga, step, want string }{
		{"order-42", "reserve", "order-42:reserve"},
		{"a:b", "c", "a:b:c"},
		{"a", "b:c", "a:b%3Ac"},
		{"déjà vu", "50%", "d%C3%A9j%C3%A0%20vu:50%25"},
	} {
		if got := saga.IdempotencyKey(tc.saga, tc.step); got != tc.want {
			t.Errorf("IdempotencyKey(%q, %q) = %q, want %q", tc.saga, tc.step, got, tc.want)
		}
	}
	long := saga.IdempotencyKey(strings.Repeat("é", 200), "s")
	if !strings.HasPrefix(long, "sha256:") || len(long) != 71 {
		t.Errorf("long key %q", long)
	}
	if saga.IdempotencyKey(strings.Repeat("x", 300), strings.Repeat("y", 300)) == saga.IdempotencyKey(strings.Repeat("x", 301), strings.Repeat("y", 299)) {
		t.Error("hashed keys collide")
	}
}

// waitTerminal polls until the saga is in a terminal state (bounded, not a
// timing assertion).
func (f *fixture) waitTerminal(t *testing.T, id string) saga.Saga {
	t.Helper()
	var s saga.Saga
	testkit.EventuallyNil(t, 20*time.Second, fmt.Sprintf("saga %s to end", id), func() (err error) {
		s, err = f.svc.Get(context.Background(), id)
		if err == nil && !s.State.Terminal() {
			err = fmt.Errorf("saga is %+v", s)
		}
		return err
	})
	return s
}

// TestSagaBreakerRefusalIsNoTry (issue 16): the upstream fails until its
// breaker opens, then recovers. The compensations that meet the open
// breaker sent nothing: they wait for the breaker (its retry-after) instead
// of spending their tries, and every saga ends COMPENSATED with exactly as
// many attempts logged as HTTP requests were made.
func TestSagaBreakerRefusalIsNoTry(t *testing.T) {
	srv := newCompServer(t)
	var mu sync.Mutex
	failures := 2
	srv.set(func(_ string, w http.ResponseWriter, _ *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			w.WriteHeader(http.StatusServiceUnavailable)
			return false
		}
		return true
	})
	brk, err := breaker.NewService(breaker.Options{Policies: map[string]breaker.Policy{
		"inventory": {ConsecutiveFailures: 2, OpenDuration: 300 * time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(brk.Close)
	caller, err := upstream.New([]upstream.Config{{Name: "inventory", URL: srv.URL + "/api", MaxAttempts: 1, MaxBodyBytes: 4096}},
		upstream.Options{Breakers: brk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(caller.Close)
	// The saga's waits: the retry policy's backoffs are at most 2ms, so a
	// wait of 100ms or more is a wait on the breaker.
	var breakerWaits atomic.Int32
	f := newFixture(t, srv, nil, func(o *saga.Options) {
		o.Caller = caller
		o.Sleep = func(ctx context.Context, d time.Duration) error {
			if d >= 100*time.Millisecond {
				breakerWaits.Add(1)
			}
			tm := time.NewTimer(d)
			defer tm.Stop()
			select {
			case <-tm.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	})
	const n = 10
	for i := range n {
		id := fmt.Sprintf("b-%d", i)
		f.startWithSteps(t, id, time.Minute, "reserve")
	}
	// The first saga alone meets the two failures, which open the breaker
	// (nothing interleaves a success that would reset the count), so its
	// third try is refused: it must wait for the breaker, not give up
	// (MaxAttempts is 3). The others then meet the open or half-open
	// breaker too.
	if _, err := f.svc.Abort(testCtx(t), "b-0", "x"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "a saga to wait for the breaker", func() bool { return breakerWaits.Load() > 0 })
	for i := 1; i < n; i++ {
		if _, err := f.svc.Abort(testCtx(t), fmt.Sprintf("b-%d", i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	total := 0
	for i := range n {
		id := fmt.Sprintf("b-%d", i)
		s := f.waitTerminal(t, id)
		key := id + ":reserve"
		if s.State != saga.Compensated {
			t.Errorf("%s is %v (%q), want COMPENSATED: a breaker refusal spent its tries", id, s.State, s.LastError)
			continue
		}
		if got, want := s.Steps[0].Attempts, f.srv.requests(key); got != want {
			t.Errorf("%s: %d attempts logged, %d HTTP requests made", id, got, want)
		}
		total += f.srv.requests(key)
	}
	if total != n+2 {
		t.Errorf("%d HTTP requests, want %d (two failures, then one success a saga)", total, n+2)
	}
}

// TestSagaAbortUnknownOutcomeHandsTheLeaseBack (issue 16): an Abort whose
// context ends while Redis is frozen has an unknown outcome: the script may
// run (and claim the saga for an executor that never starts) once Redis
// goes on. The service hands the lease back by its executor id, so the
// saga is claimable at once instead of after its lease (an hour here).
func TestSagaAbortUnknownOutcomeHandsTheLeaseBack(t *testing.T) {
	rd := testharness.StartRedis(t)
	st := saga.NewRedisStore(rd.Client(t), "handback", 5*time.Second)
	f := newFixture(t, nil, st, func(o *saga.Options) {
		o.Lease = time.Hour
		o.RecoveryInterval = time.Hour
	})
	// Warm up: every script the test needs is loaded (a script sent as
	// EVALSHA to a frozen Redis would otherwise only get NOSCRIPT).
	f.startWithSteps(t, "h-0", time.Hour, "reserve")
	if _, err := f.svc.Abort(testCtx(t), "h-0", "warm up"); err != nil {
		t.Fatal(err)
	}
	f.waitState(t, "h-0", saga.Compensated)

	f.startWithSteps(t, "h-1", time.Hour, "reserve")
	rd.Pause()
	resumed := make(chan struct{})
	go func() {
		defer close(resumed)
		// Real time: Redis stays frozen while the Abort's 100ms deadline
		// passes, so the Abort gives up with its script sent.
		time.Sleep(400 * time.Millisecond)
		rd.Resume()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := f.svc.Abort(ctx, "h-1", "x")
	cancel()
	<-resumed
	if err == nil {
		t.Fatal("Abort answered while Redis was frozen")
	}
	// The abort reached Redis: the saga is compensating...
	s := f.waitState(t, "h-1", saga.Compensating)
	// ...and no executor holds it: another executor claims it right away.
	other := saga.NewRedisStore(rd.Client(t), "handback", 5*time.Second)
	out, err := other.Recover(testCtx(t), "h-1", saga.Params{ExecID: "other", Lease: time.Hour, Retention: time.Hour})
	if err != nil || !out.Claimed {
		t.Fatalf("recover after the failed abort: claimed %v, %v (saga %+v); want claimed at once", out.Claimed, err, s)
	}
	if got := f.srv.requests("h-1:reserve"); got != 0 {
		t.Fatalf("the failed abort ran the compensation %d times", got)
	}
}
