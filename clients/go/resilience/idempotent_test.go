package resilience_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

func idempotency(t *testing.T) v1.IdempotencyServiceClient {
	t.Helper()
	conn, err := resilience.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return v1.NewIdempotencyServiceClient(conn)
}

// freshKey returns a key no earlier run of the test binary used (the
// sidecar lives as long as TestMain).
func freshKey(t *testing.T) string {
	return t.Name() + "/" + rand.Text()
}

func idemTestCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// callerKey is the context key of a caller number for countingIdempotency.
type callerKey struct{}

// countingIdempotency records which callers (by the number in their
// context) have called CheckOrRecord through it.
type countingIdempotency struct {
	v1.IdempotencyServiceClient
	mu      sync.Mutex
	checked map[int]bool
}

func (c *countingIdempotency) CheckOrRecordIdempotency(ctx context.Context, in *v1.CheckOrRecordIdempotencyRequest, opts ...grpc.CallOption) (*v1.CheckOrRecordIdempotencyResponse, error) {
	if i, ok := ctx.Value(callerKey{}).(int); ok {
		c.mu.Lock()
		c.checked[i] = true
		c.mu.Unlock()
	}
	return c.IdempotencyServiceClient.CheckOrRecordIdempotency(ctx, in, opts...)
}

func (c *countingIdempotency) callers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.checked)
}

// Concurrent runs with one key, on Redis: the function runs once, every
// other caller waits and gets its stored result, and so does a later one.
func TestIdempotentRunsOnceForConcurrentDuplicates(t *testing.T) {
	scenario(t, "idempotent-run-once-stored-result")
	conn := dial(t, redisSidecars(t, 1)[0].Addr())
	c := &countingIdempotency{IdempotencyServiceClient: v1.NewIdempotencyServiceClient(conn), checked: map[int]bool{}}
	ctx := idemTestCtx(t)
	key := freshKey(t)
	var runs atomic.Int32
	release := make(chan struct{})
	fn := func(ctx context.Context) (resilience.Result, error) {
		runs.Add(1)
		<-release // keep the duplicates waiting
		return resilience.Result{Data: []byte("done"), Metadata: map[string]string{"status": "201"}}, nil
	}
	var wg sync.WaitGroup
	results := make([]resilience.Result, 20)
	errs := make([]error, len(results))
	for i := range results {
		wg.Go(func() {
			results[i], errs[i] = resilience.Idempotent(context.WithValue(ctx, callerKey{}, i), c, key, "fp", fn, resilience.WithInProgressWait(time.Second))
		})
	}
	// Every caller has asked while the first one runs (the duplicates
	// wait), then it finishes.
	testkit.Eventually(t, 30*time.Second, "every caller to check while the first runs", func() bool {
		return runs.Load() >= 1 && c.callers() == len(results)
	})
	close(release)
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Fatalf("ran %d times, want 1", n)
	}
	for i := range results {
		if errs[i] != nil || string(results[i].Data) != "done" || results[i].Metadata["status"] != "201" {
			t.Fatalf("caller %d: %+v, %v", i, results[i], errs[i])
		}
	}
	later, err := resilience.Idempotent(ctx, c, key, "fp", fn)
	if err != nil || string(later.Data) != "done" || runs.Load() != 1 {
		t.Fatalf("a later call: %+v, %v, %d runs; want the stored result without a run", later, err, runs.Load())
	}
}

func TestIdempotentReleasesOnError(t *testing.T) {
	c := idempotency(t)
	ctx := idemTestCtx(t)
	key := freshKey(t)
	boom := errors.New("payment declined")
	_, err := resilience.Idempotent(ctx, c, key, "fp", func(ctx context.Context) (resilience.Result, error) {
		if e := resilience.ExecutionFrom(ctx); e == nil || e.Attempt != 1 || e.Key != key {
			t.Errorf("execution = %+v", e)
		}
		return resilience.Result{}, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the function's error", err)
	}
	// Released: the next call runs again, as a first attempt.
	res, err := resilience.Idempotent(ctx, c, key, "fp", func(ctx context.Context) (resilience.Result, error) {
		if a := resilience.ExecutionFrom(ctx).Attempt; a != 1 {
			t.Errorf("attempt %d after a release, want 1", a)
		}
		return resilience.Result{Data: []byte("ok")}, nil
	})
	if err != nil || string(res.Data) != "ok" {
		t.Fatalf("retry after release: %+v, %v", res, err)
	}
}

func TestIdempotentReleasesOnPanic(t *testing.T) {
	c := idempotency(t)
	ctx := idemTestCtx(t)
	key := freshKey(t)
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v, want the function's panic", r)
			}
		}()
		_, _ = resilience.Idempotent(ctx, c, key, "fp", func(context.Context) (resilience.Result, error) { panic("boom") })
	}()
	g, err := c.GetIdempotency(ctx, &v1.GetIdempotencyRequest{Key: key})
	if err != nil || g.GetState() != v1.GetIdempotencyResponse_STATE_ABSENT {
		t.Fatalf("after panic: %v, %v; want released", g, err)
	}
}

func TestIdempotentKeyMismatch(t *testing.T) {
	c := idempotency(t)
	ctx := idemTestCtx(t)
	key := freshKey(t)
	ok := func(context.Context) (resilience.Result, error) { return resilience.Result{}, nil }
	if _, err := resilience.Idempotent(ctx, c, key, resilience.Fingerprint([]byte("a")), ok); err != nil {
		t.Fatal(err)
	}
	_, err := resilience.Idempotent(ctx, c, key, resilience.Fingerprint([]byte("b")), ok)
	if !errors.Is(err, resilience.ErrIdempotencyKeyMismatch) {
		t.Fatalf("err = %v, want ErrIdempotencyKeyMismatch", err)
	}
}

// An executor that dies after a checkpoint is taken over once its lease
// expires; the takeover resumes from the checkpoint, and the dead
// executor's late completion is refused.
func TestIdempotentTakeoverResumesFromCheckpoint(t *testing.T) {
	c := idempotency(t)
	ctx := idemTestCtx(t)
	key := freshKey(t)
	dead, err := c.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "fp", LeaseTtl: durationpb.New(time.Second)})
	if err != nil || dead.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
		t.Fatalf("claim: %v, %v", dead, err)
	}
	if _, err := c.CheckpointIdempotency(ctx, &v1.CheckpointIdempotencyRequest{Key: key, LeaseId: dead.GetLeaseId(), RecoveryPoint: "charged", Data: []byte("ch_7")}); err != nil {
		t.Fatal(err)
	}
	var phases []string
	res, err := resilience.Idempotent(ctx, c, key, "fp", func(ctx context.Context) (resilience.Result, error) {
		e := resilience.ExecutionFrom(ctx)
		if e.Attempt != 2 || e.RecoveryPoint != "charged" || string(e.RecoveryData) != "ch_7" {
			t.Errorf("execution = %+v; want attempt 2 resuming after charged", e)
		}
		if e.RecoveryPoint != "charged" {
			phases = append(phases, "charge")
		}
		phases = append(phases, "ship")
		if err := e.Checkpoint(ctx, "shipped", nil); err != nil {
			return resilience.Result{}, err
		}
		return resilience.Result{Data: e.RecoveryData}, nil
	})
	if err != nil || string(res.Data) != "ch_7" || len(phases) != 1 || phases[0] != "ship" {
		t.Fatalf("takeover: %+v, %v, phases %v", res, err, phases)
	}
	_, err = c.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: key, LeaseId: dead.GetLeaseId()})
	if !errors.Is(resilience.FromError(err), resilience.ErrLeaseLost) {
		t.Fatalf("late completion: %v, want ErrLeaseLost", err)
	}
}

// A function that outlives its lease while another caller takes over gets
// its result back with ErrLeaseLost.
func TestIdempotentReportsLeaseLost(t *testing.T) {
	c := idempotency(t)
	ctx := idemTestCtx(t)
	key := freshKey(t)
	res, err := resilience.Idempotent(ctx, c, key, "fp", func(ctx context.Context) (resilience.Result, error) {
		// Another caller waits for the lease to expire and takes over.
		other, err := c.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "fp", WaitTimeout: durationpb.New(30 * time.Second)})
		if err != nil || other.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED || other.GetAttempt() != 2 {
			t.Errorf("takeover: %v, %v", other, err)
		}
		return resilience.Result{Data: []byte("late")}, nil
	}, resilience.WithLeaseTTL(time.Second))
	if !errors.Is(err, resilience.ErrLeaseLost) || string(res.Data) != "late" {
		t.Fatalf("Idempotent = %+v, %v; want the result and ErrLeaseLost", res, err)
	}
}

func TestIdempotentHonoursContext(t *testing.T) {
	c := idempotency(t)
	key := freshKey(t)
	held, err := c.CheckOrRecordIdempotency(idemTestCtx(t), &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "fp", LeaseTtl: durationpb.New(time.Minute)})
	if err != nil || held.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
		t.Fatal(held, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = resilience.Idempotent(ctx, c, key, "fp", func(context.Context) (resilience.Result, error) {
		t.Error("ran while another caller holds the key")
		return resilience.Result{}, nil
	}, resilience.WithInProgressWait(time.Minute))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
}

func TestFingerprint(t *testing.T) {
	a, b := resilience.Fingerprint([]byte("x")), resilience.Fingerprint([]byte("y"))
	if a == b || len(a) != len("sha256:")+64 || a != resilience.Fingerprint([]byte("x")) {
		t.Fatalf("fingerprints %q %q", a, b)
	}
}

// WithRetention sets how long the result is kept for duplicates: one right
// after the operation gets the stored result, and once the retention is
// over the key is forgotten and the operation runs again (with the
// default, 24h, it never would within the test). A retention out of the
// sidecar's range is refused before fn runs.
func TestIdempotentRetention(t *testing.T) {
	c := idempotency(t)
	ctx := idemTestCtx(t)
	key := freshKey(t)
	const retention = 2 * time.Second
	var runs atomic.Int32
	var ranAt time.Time // when fn last returned: the result is stored after it
	op := func(context.Context) (resilience.Result, error) {
		n := runs.Add(1)
		ranAt = time.Now()
		return resilience.Result{Data: []byte(fmt.Sprint("run ", n))}, nil
	}
	if res, err := resilience.Idempotent(ctx, c, key, "fp", op, resilience.WithRetention(retention)); err != nil || string(res.Data) != "run 1" {
		t.Fatalf("first call: %q, %v", res.Data, err)
	}
	res, err := resilience.Idempotent(ctx, c, key, "fp", op, resilience.WithRetention(retention))
	answered := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	// The sidecar stored the result after ranAt and answered the duplicate
	// before answered: if that is within the retention, the result was kept.
	if answered.Sub(ranAt) < retention && (runs.Load() != 1 || string(res.Data) != "run 1") {
		t.Fatalf("duplicate %v after the run: %q, %d runs; want the stored result", answered.Sub(ranAt), res.Data, runs.Load())
	}
	testkit.EventuallyNil(t, 30*time.Second, "the key forgotten after its retention", func() error {
		res, err := resilience.Idempotent(ctx, c, key, "fp", op, resilience.WithRetention(retention))
		if err == nil && runs.Load() < 2 {
			err = fmt.Errorf("still the stored result %q", res.Data)
		}
		return err
	})

	_, err = resilience.Idempotent(ctx, c, freshKey(t), "fp", func(context.Context) (resilience.Result, error) {
		t.Error("ran with a retention the sidecar refuses")
		return resilience.Result{}, nil
	}, resilience.WithRetention(time.Millisecond))
	var e *resilience.Error
	if !errors.Is(err, resilience.ErrInvalidArgument) || !errors.As(err, &e) || e.Violations["retention"] == "" {
		t.Fatalf("a retention of 1ms: %v; want ErrInvalidArgument naming retention", err)
	}
}

// checkCalls counts the CheckOrRecord calls made through it.
type checkCalls struct {
	v1.IdempotencyServiceClient
	n atomic.Int32
}

func (c *checkCalls) CheckOrRecordIdempotency(ctx context.Context, in *v1.CheckOrRecordIdempotencyRequest, opts ...grpc.CallOption) (*v1.CheckOrRecordIdempotencyResponse, error) {
	c.n.Add(1)
	return c.IdempotencyServiceClient.CheckOrRecordIdempotency(ctx, in, opts...)
}

// WithUnavailableRetries sets how often a call that fails with UNAVAILABLE
// is retried: with the sidecar stopped, Idempotent asks 1+n times and
// then returns the error, without running fn.
func TestIdempotentWithUnavailableRetries(t *testing.T) {
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t))
	addr := sc.Addr()
	sc.Kill()
	conn := dial(t, addr, resilience.WithConnectWait(0))
	for _, retries := range []int{0, 2} {
		c := &checkCalls{IdempotencyServiceClient: v1.NewIdempotencyServiceClient(conn)}
		ran := false
		_, err := resilience.Idempotent(idemTestCtx(t), c, freshKey(t), "fp", func(context.Context) (resilience.Result, error) {
			ran = true
			return resilience.Result{}, nil
		}, resilience.WithUnavailableRetries(retries))
		if !errors.Is(err, resilience.ErrSidecarUnreachable) || ran {
			t.Fatalf("retries %d: %v, ran %t; want ErrSidecarUnreachable without a run", retries, err, ran)
		}
		if n := c.n.Load(); n != int32(1+retries) {
			t.Fatalf("retries %d: %d calls, want %d", retries, n, 1+retries)
		}
	}
}
