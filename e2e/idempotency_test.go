package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/linearize"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

func idemClient(t *testing.T, s *testharness.Sidecar) v1.IdempotencyServiceClient {
	t.Helper()
	return v1.NewIdempotencyServiceClient(s.Conn(t))
}

// idemSidecars starts n sidecars on one Redis.
func idemSidecars(t *testing.T, n int, redisURL string, extra ...string) []*testharness.Sidecar {
	t.Helper()
	bin := testharness.BuildSidecar(t)
	out := make([]*testharness.Sidecar, n)
	for i := range out {
		out[i] = testharness.StartSidecar(t, bin, append([]string{"--redis-url", redisURL}, extra...)...)
	}
	return out
}

// ledger records the executions of operations that really happened.
type ledger struct {
	mu      sync.Mutex
	entries map[string][]string // key -> executors, in order
}

func (l *ledger) append(key, executor string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.entries == nil {
		l.entries = map[string][]string{}
	}
	l.entries[key] = append(l.entries[key], executor)
}

func (l *ledger) of(key string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.entries[key]...)
}

// Many concurrent duplicates of one key, spread over three sidecar
// processes on one Redis, behave as a real client would (wait, call again,
// retry its own failures): the operation runs exactly once and every caller
// ends with its result. On one key the first execution fails, so the key is
// released and handed to exactly one other caller.
func TestIdempotencyExactlyOnceAcrossSidecars(t *testing.T) {
	rd := testharness.StartRedis(t)
	sidecars := idemSidecars(t, 3, rd.URL())
	clients := make([]v1.IdempotencyServiceClient, len(sidecars))
	for i, s := range sidecars {
		clients[i] = idemClient(t, s)
	}
	ctx := ctxT(t, 3*time.Minute)
	const callers = 120
	keys := []string{"orders/1/charge", "orders/2/charge", "orders/3/flaky"}
	var book ledger
	var failedOnce sync.Once
	errFlaky := errors.New("upstream said 503")
	hist := linearize.NewHistory()

	type outcome struct {
		key, result string
		err         error
	}
	out := make(chan outcome, callers*len(keys))
	start := make(chan struct{}) // all callers go at once
	var wg sync.WaitGroup
	for _, key := range keys {
		for i := range callers {
			wg.Go(func() {
				c := recordIdem(hist, clients[i%len(clients)])
				me := fmt.Sprintf("caller-%d", i)
				op := func(ctx context.Context) (resilience.Result, error) {
					time.Sleep(30 * time.Millisecond) // real time: the operation takes a while, so that duplicates overlap
					if strings.HasSuffix(key, "flaky") {
						failed := false
						failedOnce.Do(func() { failed = true })
						if failed {
							return resilience.Result{}, errFlaky // did not happen: not in the ledger
						}
					}
					book.append(key, me)
					return resilience.Result{Data: []byte(me), Metadata: map[string]string{"executor": me}}, nil
				}
				<-start
				for {
					res, err := resilience.Idempotent(ctx, c, key, "fp:"+key, op, resilience.WithInProgressWait(2*time.Second))
					if errors.Is(err, errFlaky) {
						continue // our own execution failed: retry, as a client would
					}
					out <- outcome{key: key, result: string(res.Data), err: err}
					return
				}
			})
		}
	}
	close(start)
	wg.Wait()
	close(out)
	linearize.Check(t, idemModel, hist)

	results := map[string]map[string]int{}
	for o := range out {
		if o.err != nil {
			t.Fatalf("%s: %v", o.key, o.err)
		}
		if results[o.key] == nil {
			results[o.key] = map[string]int{}
		}
		results[o.key][o.result]++
	}
	for _, key := range keys {
		execs := book.of(key)
		if len(execs) != 1 {
			t.Fatalf("%s executed %d times: %v", key, len(execs), execs)
		}
		if len(results[key]) != 1 || results[key][execs[0]] != callers {
			t.Fatalf("%s: callers ended with %v; want all %d with %q", key, results[key], callers, execs[0])
		}
		g, err := clients[0].GetIdempotency(ctx, &v1.GetIdempotencyRequest{Key: key, Fingerprint: "fp:" + key})
		if err != nil || g.GetState() != v1.GetIdempotencyResponse_STATE_COMPLETED || !g.GetFingerprintMatch() || g.GetAttempts() != 1 {
			t.Fatalf("%s: Get = %v, %v", key, g, err)
		}
	}
}

// The executor dies mid-operation (with its sidecar) after a checkpoint.
// Once its lease expires exactly one duplicate takes over, resuming from the
// checkpoint; the dead executor's late completion is refused; everyone ends
// with the takeover's result.
func TestIdempotencyExecutorCrashTakeover(t *testing.T) {
	rd := testharness.StartRedis(t)
	sidecars := idemSidecars(t, 3, rd.URL())
	ctx := ctxT(t, 2*time.Minute)
	const key = "orders/9/fulfil"
	hist := linearize.NewHistory()
	defer linearize.Check(t, idemModel, hist)
	deadSide := recordIdem(hist, idemClient(t, sidecars[0]))
	dead, err := deadSide.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{
		Key: key, Fingerprint: "fp", LeaseTtl: durationpb.New(time.Second)})
	if err != nil || dead.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
		t.Fatalf("first claim: %v, %v", dead, err)
	}
	if _, err := deadSide.CheckpointIdempotency(ctx, &v1.CheckpointIdempotencyRequest{
		Key: key, LeaseId: dead.GetLeaseId(), RecoveryPoint: "charged", Data: []byte("ch_9")}); err != nil {
		t.Fatal(err)
	}
	sidecars[0].Kill() // the executor's pod dies mid-operation

	var book ledger
	const callers = 30
	results := make([]string, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			c := recordIdem(hist, idemClient(t, sidecars[1+i%2]))
			me := fmt.Sprintf("caller-%d", i)
			res, err := resilience.Idempotent(ctx, c, key, "fp", func(ctx context.Context) (resilience.Result, error) {
				run := resilience.ExecutionFrom(ctx)
				if run.Attempt != 2 || run.RecoveryPoint != "charged" || string(run.RecoveryData) != "ch_9" {
					return resilience.Result{}, fmt.Errorf("takeover sees attempt %d from %q %q", run.Attempt, run.RecoveryPoint, run.RecoveryData)
				}
				book.append(key, me) // only the phases after "charged"
				return resilience.Result{Data: []byte("shipped by " + me + " for " + string(run.RecoveryData))}, nil
			}, resilience.WithInProgressWait(5*time.Second))
			results[i], errs[i] = string(res.Data), err
		})
	}
	wg.Wait()
	execs := book.of(key)
	if len(execs) != 1 {
		t.Fatalf("%d takeovers, want 1: %v", len(execs), execs)
	}
	want := "shipped by " + execs[0] + " for ch_9"
	for i := range callers {
		if errs[i] != nil || results[i] != want {
			t.Fatalf("caller %d: %q, %v; want %q", i, results[i], errs[i], want)
		}
	}

	// The dead executor comes back (through another sidecar) and tries to
	// record its own result: refused, and nothing changes.
	live := recordIdem(hist, idemClient(t, sidecars[1]))
	_, err = live.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: key, LeaseId: dead.GetLeaseId(),
		Result: &v1.IdempotencyResult{Data: []byte("stale")}})
	if code, reason := reasonOf(err); code != codes.FailedPrecondition || reason != "LEASE_LOST" {
		t.Fatalf("stale completion: %v; want FAILED_PRECONDITION/LEASE_LOST", err)
	}
	final, err := live.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "fp"})
	if err != nil || final.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_COMPLETED || string(final.GetResult().GetData()) != want {
		t.Fatalf("final: %v, %v; want the takeover's result", final, err)
	}
	if g, err := live.GetIdempotency(ctx, &v1.GetIdempotencyRequest{Key: key, Fingerprint: "fp"}); err != nil || g.GetAttempts() != 2 {
		t.Fatalf("Get = %v, %v; want 2 attempts", g, err)
	}
}

// Refused requests through the real binary, with --max-result-bytes: clear
// errors, and nothing written to Redis.
func TestIdempotencyRefusedRequestsStoreNothing(t *testing.T) {
	rd := testharness.StartRedis(t)
	sc := idemSidecars(t, 1, rd.URL(), "--max-result-bytes", "2048")[0]
	c := idemClient(t, sc)
	rdb := rd.Client(t)
	ctx := ctxT(t, time.Minute)
	owner, err := c.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "k", Fingerprint: "fp"})
	if err != nil {
		t.Fatal(err)
	}
	snapshot := func() map[string]string {
		keys, err := rdb.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		state := map[string]string{}
		for _, k := range keys {
			h, err := rdb.HGetAll(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			state[k] = fmt.Sprint(h)
		}
		return state
	}
	before := snapshot()
	if len(before) != 1 {
		t.Fatalf("Redis holds %v; want one record", before)
	}
	refused := []struct {
		field string
		call  func() error
	}{
		{"key", func() error {
			_, err := c.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Fingerprint: "fp"})
			return err
		}},
		{"lease_ttl", func() error {
			_, err := c.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "new", LeaseTtl: durationpb.New(2 * time.Hour)})
			return err
		}},
		{"retention", func() error {
			_, err := c.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "new", Retention: durationpb.New(31 * 24 * time.Hour)})
			return err
		}},
		{"wait_timeout", func() error {
			_, err := c.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "k", Fingerprint: "fp", WaitTimeout: durationpb.New(-time.Second)})
			return err
		}},
		{"result", func() error {
			_, err := c.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: owner.GetLeaseId(),
				Result: &v1.IdempotencyResult{Data: make([]byte, 2049)}})
			return err
		}},
	}
	for _, r := range refused {
		err := r.call()
		e, ok := resilience.FromError(err).(*resilience.Error)
		if !ok || e.Code != codes.InvalidArgument || e.Violations[r.field] == "" {
			t.Fatalf("%s: %v; want INVALID_ARGUMENT naming %s", r.field, err, r.field)
		}
		t.Logf("%s: %s", r.field, e.Violations[r.field])
	}
	_, err = c.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "k", Fingerprint: "other"})
	if code, reason := reasonOf(err); code != codes.FailedPrecondition || reason != "IDEMPOTENCY_KEY_MISMATCH" {
		t.Fatalf("mismatch: %v", err)
	}
	if after := snapshot(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("refused requests changed Redis:\n%v\n%v", before, after)
	}
	// The limit itself is accepted.
	if _, err := c.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "k", LeaseId: owner.GetLeaseId(),
		Result: &v1.IdempotencyResult{Data: make([]byte, 2048)}}); err != nil {
		t.Fatal(err)
	}
}

// While Redis is down every call is UNAVAILABLE/STORE_UNAVAILABLE, never a
// STARTED for a key that is in fact completed; afterwards (Redis restarted
// from its append-only file) the completed key still answers its result.
func TestIdempotencyRedisOutage(t *testing.T) {
	rd := testharness.StartRedis(t, testharness.WithAppendOnly(), testharness.WithRedisArgs("--appendfsync", "always"))
	sc := idemSidecars(t, 1, rd.URL(), "--store-timeout", "300ms", "--health-interval", "100ms")[0]
	hist := linearize.NewHistory()
	defer linearize.Check(t, idemModel, hist)
	c := recordIdem(hist, idemClient(t, sc))
	ctx := ctxT(t, 2*time.Minute)
	claim := func(key string, wait time.Duration) (*v1.CheckOrRecordIdempotencyResponse, error) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return c.CheckOrRecordIdempotency(cctx, &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "fp", WaitTimeout: durationpb.New(wait)})
	}
	paid, err := claim("paid", 0)
	if err != nil {
		t.Fatal(err)
	}
	result := &v1.IdempotencyResult{Data: []byte("receipt-1"), Metadata: map[string]string{"status": "201"}}
	if _, err := c.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "paid", LeaseId: paid.GetLeaseId(), Result: result}); err != nil {
		t.Fatal(err)
	}
	running, err := claim("running", 0)
	if err != nil {
		t.Fatal(err)
	}

	outage := func(phase string) {
		t.Helper()
		var wg sync.WaitGroup
		for i := range 12 {
			wg.Go(func() {
				key := []string{"paid", "running", "fresh"}[i%3]
				r, err := claim(key, time.Duration(i%2)*time.Second)
				if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" || r != nil {
					t.Errorf("%s: %s: %v, %v; want UNAVAILABLE/STORE_UNAVAILABLE", phase, key, r, err)
				}
			})
		}
		wg.Wait()
		_, err := c.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "running", LeaseId: running.GetLeaseId()})
		if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" {
			t.Errorf("%s: complete: %v; want UNAVAILABLE (never a false success)", phase, err)
		}
	}
	rd.Pause() // hangs: every call must still end within the store timeout
	outage("paused")
	rd.Kill() // connection refused
	outage("killed")
	waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_NOT_SERVING, 10*time.Second)

	rd.Restart()
	waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_SERVING, 20*time.Second)
	after, err := claim("paid", 0)
	if err != nil || after.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_COMPLETED || !proto.Equal(after.GetResult(), result) {
		t.Fatalf("after restart: %v, %v; want the stored result", after, err)
	}
	if r, err := claim("running", 0); err != nil || r.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_IN_PROGRESS {
		t.Fatalf("in-progress key after restart: %v, %v", r, err)
	}
	if _, err := c.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "running", LeaseId: running.GetLeaseId()}); err != nil {
		t.Fatalf("owner completes after the outage: %v", err)
	}
}
