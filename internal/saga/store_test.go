package saga_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// storeUnderTest is one Store with a way to let store time pass.
type storeUnderTest struct {
	store   saga.Store
	advance func(time.Duration)
}

func memoryStores(t *testing.T) func(*testing.T) storeUnderTest {
	return func(t *testing.T) storeUnderTest {
		clk := testkit.NewClock()
		return storeUnderTest{store: saga.NewMemoryStore(clk.Now), advance: clk.Advance}
	}
}

// redisStores share one redis-server; each store has its own namespace.
func redisStores(t *testing.T) func(*testing.T) storeUnderTest {
	rdb := testharness.StartRedis(t).Client(t)
	ns := testkit.Namespaces("conformance")
	return func(t *testing.T) storeUnderTest {
		// Redis decides time by its own clock.
		return storeUnderTest{store: saga.NewRedisStore(rdb, ns(), 2*time.Second), advance: testkit.RedisTime}
	}
}

// clusterStores share one 3-master Redis Cluster: every script's keys must
// hash to one slot, and ListSagas and the recovery scan pipeline over
// shards living on different masters.
func clusterStores(t *testing.T) func(*testing.T) storeUnderTest {
	rdb := testharness.StartCluster(t, 3).Client(t)
	ns := testkit.Namespaces("cluster")
	return func(t *testing.T) storeUnderTest {
		return storeUnderTest{store: saga.NewRedisStore(rdb, ns(), 2*time.Second), advance: testkit.RedisTime}
	}
}

func TestSagaMemoryStoreConformance(t *testing.T)  { runConformance(t, memoryStores(t)) }
func TestSagaRedisStoreConformance(t *testing.T)   { runConformance(t, redisStores(t)) }
func TestSagaClusterStoreConformance(t *testing.T) { runConformance(t, clusterStores(t)) }

// params with a long lease and retention unless a test shortens them.
func params(exec string) saga.Params {
	return saga.Params{ExecID: exec, Lease: time.Minute, Retention: time.Hour}
}

func comp(path string) saga.Compensation {
	return saga.Compensation{Upstream: "inventory", Method: "POST", Path: path,
		Headers: []upstream.Header{{Name: "X-Tenant", Value: "t1"}}, Body: []byte(`{"undo":"` + path + `"}`)}
}

func runConformance(t *testing.T, newStore func(*testing.T) storeUnderTest) {
	ctx := context.Background()
	start := func(t *testing.T, s saga.Store, id string, timeout time.Duration) saga.Saga {
		t.Helper()
		out, created, err := s.Start(ctx, saga.NewSaga{ID: id, Name: "order", Timeout: timeout, Metadata: map[string]string{"order": "42"}}, params(""))
		if err != nil || !created {
			t.Fatalf("Start(%s) = created %v, %v", id, created, err)
		}
		return out.Saga
	}
	record := func(t *testing.T, s saga.Store, id string, steps ...string) {
		t.Helper()
		for _, name := range steps {
			if _, _, _, err := s.RecordStep(ctx, id, saga.Step{Name: name, Compensation: comp("/undo/" + name)}, 100, params("")); err != nil {
				t.Fatalf("RecordStep(%s, %s): %v", id, name, err)
			}
		}
	}
	wantConflict := func(t *testing.T, err error, state saga.State, exists bool) {
		t.Helper()
		var ce *saga.ConflictError
		if !errors.As(err, &ce) || ce.State != state || ce.Exists != exists {
			t.Fatalf("err = %v; want a conflict in %v (exists %v)", err, state, exists)
		}
	}
	// finishAll reports success for every remaining step as exec.
	finishAll := func(t *testing.T, s saga.Store, id string, out saga.Outcome, p saga.Params) saga.Outcome {
		t.Helper()
		for out.Next != nil {
			var err error
			out, err = s.Report(ctx, id, saga.Attempt{Index: out.Next.Index, Name: out.Next.Name, Attempts: 1, Result: saga.StepSucceeded}, p)
			if err != nil {
				t.Fatalf("Report: %v", err)
			}
		}
		return out
	}

	t.Run("start is idempotent on id", func(t *testing.T) {
		s := newStore(t).store
		first := start(t, s, "s1", time.Hour)
		if first.State != saga.Running || first.Name != "order" || first.Metadata["order"] != "42" || first.Timeout != time.Hour ||
			first.Deadline.Sub(first.CreateTime) != time.Hour || first.StepCount != 0 {
			t.Fatalf("started %+v", first)
		}
		out, created, err := s.Start(ctx, saga.NewSaga{ID: "s1", Name: "other", Timeout: time.Minute}, params(""))
		if err != nil || created || out.Saga.Name != "order" || !out.Saga.Deadline.Equal(first.Deadline) || out.Prev != saga.Running {
			t.Fatalf("second start: %+v created %v err %v; want the first saga back", out.Saga, created, err)
		}
	})

	t.Run("record steps: append, replay, mismatch, limit", func(t *testing.T) {
		s := newStore(t).store
		start(t, s, "s1", time.Hour)
		for i, name := range []string{"reserve", "charge", "ship"} {
			_, idx, created, err := s.RecordStep(ctx, "s1", saga.Step{Name: name, Compensation: comp("/" + name)}, 3, params(""))
			if err != nil || idx != i+1 || !created {
				t.Fatalf("record %s: idx %d created %v err %v", name, idx, created, err)
			}
		}
		_, idx, created, err := s.RecordStep(ctx, "s1", saga.Step{Name: "charge", Compensation: comp("/charge")}, 3, params(""))
		if err != nil || idx != 2 || created {
			t.Fatalf("replay: idx %d created %v err %v; want 2, not created", idx, created, err)
		}
		_, _, _, err = s.RecordStep(ctx, "s1", saga.Step{Name: "charge", Compensation: comp("/refund")}, 3, params(""))
		wantConflict(t, err, saga.Running, true)
		if !errors.Is(err, saga.ErrAlreadyExists) {
			t.Fatalf("mismatch is not ErrAlreadyExists: %v", err)
		}
		if _, _, _, err = s.RecordStep(ctx, "s1", saga.Step{Name: "notify", Compensation: comp("/n")}, 3, params("")); !errors.Is(err, saga.ErrTooManySteps) {
			t.Fatalf("fourth step with max 3: %v", err)
		}
		if _, _, _, err = s.RecordStep(ctx, "nope", saga.Step{Name: "x", Compensation: comp("/x")}, 3, params("")); !errors.Is(err, saga.ErrNotFound) {
			t.Fatalf("unknown saga: %v", err)
		}
		got, err := s.Get(ctx, "s1")
		if err != nil || got.StepCount != 3 || len(got.Steps) != 3 {
			t.Fatalf("get: %+v %v", got, err)
		}
		st := got.Steps[1]
		c := st.Compensation
		if st.Name != "charge" || st.Index != 2 || st.Status != saga.StepPending || st.RecordTime.IsZero() ||
			c.Upstream != "inventory" || c.Path != "/charge" || string(c.Body) != `{"undo":"/charge"}` || len(c.Headers) != 1 || c.Headers[0].Value != "t1" {
			t.Fatalf("step 2 = %+v", st)
		}
		if _, err := s.Get(ctx, "nope"); !errors.Is(err, saga.ErrNotFound) {
			t.Fatalf("get unknown: %v", err)
		}
	})

	t.Run("a step keeps the trace context it was recorded with", func(t *testing.T) {
		s := newStore(t).store
		start(t, s, "s1", time.Hour)
		tc := map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "vendor=x"}
		if _, _, created, err := s.RecordStep(ctx, "s1", saga.Step{Name: "a", Compensation: comp("/a"), TraceContext: tc}, 10, params("")); err != nil || !created {
			t.Fatalf("record: created %v, %v", created, err)
		}
		// Sent again from another trace, it is the same step, and keeps the first.
		other := map[string]string{"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
		if _, idx, created, err := s.RecordStep(ctx, "s1", saga.Step{Name: "a", Compensation: comp("/a"), TraceContext: other}, 10, params("")); err != nil || created || idx != 1 {
			t.Fatalf("replay from another trace: idx %d created %v, %v; want the same step", idx, created, err)
		}
		record(t, s, "s1", "b") // none
		got, err := s.Get(ctx, "s1")
		if err != nil || len(got.Steps) != 2 || !maps.Equal(got.Steps[0].TraceContext, tc) || len(got.Steps[1].TraceContext) != 0 {
			t.Fatalf("get: %+v, %v; want step a with %v and step b with none", got.Steps, err, tc)
		}
		out, err := s.Abort(ctx, "s1", "r", params("e1"))
		if err != nil || out.Next == nil || out.Next.Name != "b" || len(out.Next.TraceContext) != 0 {
			t.Fatalf("abort: next %+v, %v", out.Next, err)
		}
		out, err = s.Report(ctx, "s1", saga.Attempt{Index: 2, Name: "b", Attempts: 1, Result: saga.StepSucceeded}, params("e1"))
		if err != nil || out.Next == nil || out.Next.Name != "a" || !maps.Equal(out.Next.TraceContext, tc) {
			t.Fatalf("next to compensate: %+v, %v; want step a with its trace context", out.Next, err)
		}
	})

	t.Run("complete", func(t *testing.T) {
		s := newStore(t).store
		start(t, s, "s1", time.Hour)
		record(t, s, "s1", "a")
		out, err := s.Complete(ctx, "s1", params("e1"))
		if err != nil || out.Saga.State != saga.Completed || out.Prev != saga.Running || out.Claimed || out.Saga.EndTime.IsZero() ||
			out.Saga.ExpireTime.Sub(out.Saga.EndTime) != time.Hour {
			t.Fatalf("complete: %+v %v", out, err)
		}
		if out, err = s.Complete(ctx, "s1", params("")); err != nil || out.Saga.State != saga.Completed || out.Prev != saga.Completed {
			t.Fatalf("complete again: %+v %v", out, err)
		}
		_, _, _, err = s.RecordStep(ctx, "s1", saga.Step{Name: "b", Compensation: comp("/b")}, 10, params(""))
		wantConflict(t, err, saga.Completed, false)
		_, err = s.Abort(ctx, "s1", "late", params("e1"))
		wantConflict(t, err, saga.Completed, false)
		_, err = s.Retry(ctx, "s1", params("e1"))
		wantConflict(t, err, saga.Completed, false)
		if _, err := s.Complete(ctx, "nope", params("")); !errors.Is(err, saga.ErrNotFound) {
			t.Fatalf("complete unknown: %v", err)
		}
	})

	t.Run("abort without steps is compensated at once", func(t *testing.T) {
		s := newStore(t).store
		start(t, s, "s1", time.Hour)
		out, err := s.Abort(ctx, "s1", "changed my mind", params("e1"))
		if err != nil || out.Saga.State != saga.Compensated || out.Claimed || out.Next != nil || out.Saga.Reason != "changed my mind" {
			t.Fatalf("abort: %+v %v", out, err)
		}
	})

	t.Run("abort claims and compensations run newest first", func(t *testing.T) {
		s := newStore(t).store
		start(t, s, "s1", time.Hour)
		record(t, s, "s1", "a", "b", "c")
		out, err := s.Abort(ctx, "s1", "payment declined", params("e1"))
		if err != nil || out.Saga.State != saga.Compensating || !out.Claimed || out.Next == nil || out.Next.Index != 3 ||
			out.Next.Name != "c" || out.Next.Compensation.Path != "/undo/c" || out.Saga.Reason != "payment declined" {
			t.Fatalf("abort: %+v %v", out, err)
		}
		again, err := s.Abort(ctx, "s1", "again", params("e2"))
		if err != nil || again.Claimed || again.Saga.State != saga.Compensating || again.Saga.Reason != "payment declined" {
			t.Fatalf("second abort: %+v %v; want unchanged, not claimed", again, err)
		}
		_, err = s.Complete(ctx, "s1", params(""))
		wantConflict(t, err, saga.Compensating, false)

		// A failed try keeps the step and counts attempts.
		p := params("e1")
		out, err = s.Report(ctx, "s1", saga.Attempt{Index: 3, Name: "c", Attempts: 2, Result: saga.StepPending, Error: "HTTP 503"}, p)
		if err != nil || out.Next == nil || out.Next.Index != 3 || out.Next.Attempts != 2 || out.Next.LastError != "HTTP 503" {
			t.Fatalf("report retry: %+v %v", out, err)
		}
		if _, err := s.Report(ctx, "s1", saga.Attempt{Index: 2, Name: "b", Attempts: 1, Result: saga.StepSucceeded}, p); err == nil {
			t.Fatal("report for a step that is not next succeeded")
		}
		var order []int
		for out.Next != nil {
			order = append(order, out.Next.Index)
			out, err = s.Report(ctx, "s1", saga.Attempt{Index: out.Next.Index, Name: out.Next.Name, Attempts: 1, Result: saga.StepSucceeded}, p)
			if err != nil {
				t.Fatal(err)
			}
		}
		if fmt.Sprint(order) != "[3 2 1]" || out.Saga.State != saga.Compensated || out.Saga.ExpireTime.IsZero() || out.Prev != saga.Compensating {
			t.Fatalf("order %v, final %+v", order, out.Saga)
		}
		got, err := s.Get(ctx, "s1")
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range got.Steps {
			wantAttempts := 1
			if st.Index == 3 {
				wantAttempts = 3
			}
			if st.Status != saga.StepSucceeded || st.CompensateTime.IsZero() || st.Attempts != wantAttempts {
				t.Fatalf("step %+v", st)
			}
		}
		if _, err := s.Report(ctx, "s1", saga.Attempt{Index: 1, Name: "a", Attempts: 1, Result: saga.StepSucceeded}, p); !errors.Is(err, saga.ErrLeaseLost) {
			t.Fatalf("report after compensated: %v", err)
		}
	})

	t.Run("executor lease: renew, lose, take over, release", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		start(t, s, "s1", time.Hour)
		record(t, s, "s1", "a", "b")
		short := saga.Params{ExecID: "e1", Lease: 300 * time.Millisecond, Retention: time.Hour}
		if _, err := s.Abort(ctx, "s1", "x", short); err != nil {
			t.Fatal(err)
		}
		if err := s.Renew(ctx, "s1", "e2", time.Second); !errors.Is(err, saga.ErrLeaseLost) {
			t.Fatalf("renew by a stranger: %v", err)
		}
		if _, err := s.Report(ctx, "s1", saga.Attempt{Index: 2, Name: "b", Result: saga.StepSucceeded}, params("e2")); !errors.Is(err, saga.ErrLeaseLost) {
			t.Fatalf("report by a stranger: %v", err)
		}
		if out, err := s.Recover(ctx, "s1", params("e2")); err != nil || out.Claimed {
			t.Fatalf("recover with a live lease: %+v %v", out, err)
		}
		if err := s.Renew(ctx, "s1", "e1", 300*time.Millisecond); err != nil {
			t.Fatalf("renew: %v", err)
		}
		st.advance(450 * time.Millisecond)
		due, err := s.Due(ctx, 10)
		if err != nil || len(due) != 1 || due[0] != "s1" {
			t.Fatalf("due after the lease ran out: %v %v", due, err)
		}
		out, err := s.Recover(ctx, "s1", params("e2"))
		if err != nil || !out.Claimed || out.Next == nil || out.Next.Index != 2 {
			t.Fatalf("takeover: %+v %v", out, err)
		}
		if err := s.Renew(ctx, "s1", "e1", time.Second); !errors.Is(err, saga.ErrLeaseLost) {
			t.Fatalf("old executor renews after the takeover: %v", err)
		}
		if _, err := s.Report(ctx, "s1", saga.Attempt{Index: 2, Name: "b", Result: saga.StepSucceeded}, short); !errors.Is(err, saga.ErrLeaseLost) {
			t.Fatalf("old executor reports after the takeover: %v", err)
		}
		if due, _ := s.Due(ctx, 10); len(due) != 0 {
			t.Fatalf("due with a live lease: %v", due)
		}
		// Release hands it over at once.
		if err := s.Release(ctx, "s1", "e1"); err != nil {
			t.Fatalf("release by a stranger: %v", err)
		}
		if out, _ := s.Recover(ctx, "s1", params("e3")); out.Claimed {
			t.Fatal("a stranger's release freed the lease")
		}
		if err := s.Release(ctx, "s1", "e2"); err != nil {
			t.Fatal(err)
		}
		if due, _ := s.Due(ctx, 10); len(due) != 1 {
			t.Fatalf("due after release: %v", due)
		}
		out, err = s.Recover(ctx, "s1", params("e3"))
		if err != nil || !out.Claimed || out.Next.Index != 2 {
			t.Fatalf("recover after release: %+v %v", out, err)
		}
		out = finishAll(t, s, "s1", out, params("e3"))
		if out.Saga.State != saga.Compensated {
			t.Fatalf("final %v", out.Saga.State)
		}
	})

	// Issue 16: a claiming write whose caller gave up (its outcome
	// unknown) is handed back by its executor id; the release may reach
	// the store before the write itself, which then claims nothing.
	t.Run("release before the claim: the claim claims nothing", func(t *testing.T) {
		s := newStore(t).store
		start(t, s, "s1", time.Hour)
		record(t, s, "s1", "a")
		if err := s.Release(ctx, "s1", "e1"); err != nil {
			t.Fatal(err)
		}
		out, err := s.Abort(ctx, "s1", "x", params("e1"))
		if err != nil || out.Claimed || out.Saga.State != saga.Compensating {
			t.Fatalf("abort by a handed-back executor: %+v %v; want COMPENSATING, unclaimed", out, err)
		}
		if due, err := s.Due(ctx, 10); err != nil || len(due) != 1 {
			t.Fatalf("due: %v %v; want the unclaimed saga", due, err)
		}
		if err := s.Renew(ctx, "s1", "e1", time.Minute); !errors.Is(err, saga.ErrLeaseLost) {
			t.Fatalf("renew by the handed-back executor: %v", err)
		}
		out, err = s.Recover(ctx, "s1", params("e2"))
		if err != nil || !out.Claimed || out.Next == nil || out.Next.Index != 1 {
			t.Fatalf("recover: %+v %v; want claimed", out, err)
		}
		// A release for a saga that does not exist creates nothing.
		if err := s.Release(ctx, "nope", "e1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, "nope"); !errors.Is(err, saga.ErrNotFound) {
			t.Fatalf("get after a release of nothing: %v", err)
		}
	})

	t.Run("timeout: any write past the deadline starts compensating", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		start(t, s, "by-record", 200*time.Millisecond)
		start(t, s, "by-complete", 200*time.Millisecond)
		start(t, s, "by-worker", 200*time.Millisecond)
		start(t, s, "no-steps", 200*time.Millisecond)
		start(t, s, "in-time", time.Hour)
		for _, id := range []string{"by-record", "by-complete", "by-worker"} {
			record(t, s, id, "a", "b")
		}
		if due, _ := s.Due(ctx, 10); len(due) != 0 {
			t.Fatalf("due before any deadline: %v", due)
		}
		st.advance(350 * time.Millisecond)
		due, err := s.Due(ctx, 10)
		if err != nil || len(due) != 4 {
			t.Fatalf("due after the deadline: %v %v", due, err)
		}
		out, _, _, err := s.RecordStep(ctx, "by-record", saga.Step{Name: "c", Compensation: comp("/c")}, 10, params("e1"))
		wantConflict(t, err, saga.Compensating, false)
		if !out.Claimed || out.Saga.Reason != "timeout" || out.Next == nil || out.Next.Index != 2 || out.Prev != saga.Running {
			t.Fatalf("record past the deadline: %+v", out)
		}
		out, err = s.Complete(ctx, "by-complete", params(""))
		wantConflict(t, err, saga.Compensating, false)
		if out.Claimed {
			t.Fatal("claimed without an executor id")
		}
		// Unclaimed: due at once, for the worker.
		out, err = s.Recover(ctx, "by-complete", params("e2"))
		if err != nil || !out.Claimed || out.Saga.Reason != "timeout" {
			t.Fatalf("recover unclaimed: %+v %v", out, err)
		}
		out, err = s.Recover(ctx, "by-worker", params("e3"))
		if err != nil || !out.Claimed || out.Saga.State != saga.Compensating || out.Prev != saga.Running {
			t.Fatalf("worker timeout: %+v %v", out, err)
		}
		out, err = s.Recover(ctx, "no-steps", params("e4"))
		if err != nil || out.Claimed || out.Saga.State != saga.Compensated {
			t.Fatalf("timeout without steps: %+v %v", out, err)
		}
		if out, err := s.Recover(ctx, "in-time", params("e5")); err != nil || out.Claimed || out.Saga.State != saga.Running {
			t.Fatalf("recover in time: %+v %v", out, err)
		}
		if due, _ := s.Due(ctx, 10); len(due) != 0 {
			t.Fatalf("still due after the visits: %v", due)
		}
	})

	t.Run("compensation failed, listed, retried", func(t *testing.T) {
		s := newStore(t).store
		start(t, s, "s1", time.Hour)
		record(t, s, "s1", "a", "b", "c")
		p := params("e1")
		out, err := s.Abort(ctx, "s1", "x", p)
		if err != nil {
			t.Fatal(err)
		}
		out, err = s.Report(ctx, "s1", saga.Attempt{Index: 3, Name: "c", Attempts: 1, Result: saga.StepSucceeded}, p)
		if err != nil {
			t.Fatal(err)
		}
		out, err = s.Report(ctx, "s1", saga.Attempt{Index: 2, Name: "b", Attempts: 4, Result: saga.StepFailed, Error: "HTTP 503"}, p)
		if err != nil || out.Saga.State != saga.CompensationFailed || out.Next != nil || !strings.Contains(out.Saga.LastError, `"b"`) ||
			!strings.Contains(out.Saga.LastError, "HTTP 503") || !out.Saga.ExpireTime.IsZero() || out.Saga.EndTime.IsZero() {
			t.Fatalf("failed: %+v %v", out.Saga, err)
		}
		if n, err := s.CountFailed(ctx); err != nil || n != 1 {
			t.Fatalf("count failed: %d %v", n, err)
		}
		list, _, err := s.List(ctx, saga.CompensationFailed, "", 10)
		if err != nil || len(list) != 1 || list[0].ID != "s1" || list[0].LastError == "" {
			t.Fatalf("list failed: %+v %v", list, err)
		}
		if due, _ := s.Due(ctx, 10); len(due) != 0 {
			t.Fatalf("a failed saga is due: %v", due)
		}
		_, err = s.Abort(ctx, "s1", "again", params("e2"))
		if err != nil {
			t.Fatalf("abort of a failed saga: %v", err)
		}
		if err := s.Renew(ctx, "s1", "e1", time.Second); !errors.Is(err, saga.ErrLeaseLost) {
			t.Fatalf("renew after failure: %v", err)
		}
		got, _ := s.Get(ctx, "s1")
		if got.Steps[1].Status != saga.StepFailed || got.Steps[1].Attempts != 4 || got.Steps[2].Status != saga.StepSucceeded || got.Steps[0].Status != saga.StepPending {
			t.Fatalf("steps after failure: %+v", got.Steps)
		}
		out, err = s.Retry(ctx, "s1", params("e2"))
		if err != nil || !out.Claimed || out.Saga.State != saga.Compensating || out.Next == nil || out.Next.Index != 2 ||
			out.Next.Status != saga.StepPending || out.Saga.LastError != "" || out.Prev != saga.CompensationFailed {
			t.Fatalf("retry: %+v %v", out, err)
		}
		if n, _ := s.CountFailed(ctx); n != 0 {
			t.Fatalf("count failed after retry: %d", n)
		}
		if _, err := s.Retry(ctx, "s1", params("e3")); err == nil {
			t.Fatal("retry of a compensating saga succeeded")
		}
		out = finishAll(t, s, "s1", out, params("e2"))
		if out.Saga.State != saga.Compensated {
			t.Fatalf("final %v", out.Saga.State)
		}
		got, _ = s.Get(ctx, "s1")
		if got.Steps[1].Attempts != 5 || got.Steps[1].Status != saga.StepSucceeded {
			t.Fatalf("retried step %+v", got.Steps[1])
		}
	})

	t.Run("list pages in id order, by state", func(t *testing.T) {
		s := newStore(t).store
		var ids []string
		for i := range 23 {
			id := fmt.Sprintf("saga-%02d", i)
			ids = append(ids, id)
			start(t, s, id, time.Hour)
			if i%3 == 0 {
				if _, err := s.Complete(ctx, id, params("")); err != nil {
					t.Fatal(err)
				}
			}
		}
		var got []string
		after := ""
		for page := 0; ; page++ {
			list, more, err := s.List(ctx, 0, after, 5)
			if err != nil || len(list) > 5 || page > 10 {
				t.Fatalf("page %d: %d sagas, %v", page, len(list), err)
			}
			for _, sg := range list {
				got = append(got, sg.ID)
			}
			if !more {
				break
			}
			after = list[len(list)-1].ID
		}
		if fmt.Sprint(got) != fmt.Sprint(ids) {
			t.Fatalf("listed %v\nwant %v", got, ids)
		}
		completed, more, err := s.List(ctx, saga.Completed, "", 100)
		if err != nil || more || len(completed) != 8 {
			t.Fatalf("completed: %d more %v err %v", len(completed), more, err)
		}
		for _, sg := range completed {
			if sg.State != saga.Completed || sg.Steps != nil {
				t.Fatalf("listed %+v", sg)
			}
		}
		running, _, _ := s.List(ctx, saga.Running, "saga-10", 100)
		if len(running) != 8 || running[0].ID != "saga-11" {
			t.Fatalf("running after saga-10: %d, first %v", len(running), running)
		}
	})

	t.Run("retention removes finished sagas", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		brief := saga.Params{Lease: time.Minute, Retention: 300 * time.Millisecond}
		start(t, s, "done", time.Hour)
		record(t, s, "done", "a")
		start(t, s, "undone", time.Hour)
		record(t, s, "undone", "a")
		start(t, s, "alive", time.Hour)
		if _, err := s.Complete(ctx, "done", brief); err != nil {
			t.Fatal(err)
		}
		brief.ExecID = "e1"
		out, err := s.Abort(ctx, "undone", "x", brief)
		if err != nil {
			t.Fatal(err)
		}
		finishAll(t, s, "undone", out, brief)
		st.advance(450 * time.Millisecond)
		for _, id := range []string{"done", "undone"} {
			if _, err := s.Get(ctx, id); !errors.Is(err, saga.ErrNotFound) {
				t.Fatalf("get %s after retention: %v", id, err)
			}
		}
		due, err := s.Due(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range due {
			if _, err := s.Recover(ctx, id, params("")); !errors.Is(err, saga.ErrNotFound) {
				t.Fatalf("recover %s after retention: %v", id, err)
			}
		}
		list, _, err := s.List(ctx, 0, "", 10)
		if err != nil || len(list) != 1 || list[0].ID != "alive" {
			t.Fatalf("list after retention: %+v %v", list, err)
		}
		if due, _ := s.Due(ctx, 10); len(due) != 0 {
			t.Fatalf("due after cleanup: %v", due)
		}
		// The id is free again.
		if _, created, err := s.Start(ctx, saga.NewSaga{ID: "done", Name: "again", Timeout: time.Hour}, params("")); err != nil || !created {
			t.Fatalf("restart after retention: %v %v", created, err)
		}
		if got, _ := s.Get(ctx, "done"); len(got.Steps) != 0 || got.Name != "again" {
			t.Fatalf("restarted saga kept old steps: %+v", got)
		}
	})

	t.Run("concurrent aborts claim once, concurrent steps get distinct indexes", func(t *testing.T) {
		s := newStore(t).store
		start(t, s, "s1", time.Hour)
		var wg sync.WaitGroup
		idx := make([]int, 40)
		for i := range idx {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, n, _, err := s.RecordStep(ctx, "s1", saga.Step{Name: fmt.Sprint("step-", i), Compensation: comp("/x")}, 100, params(""))
				if err != nil {
					t.Error(err)
				}
				idx[i] = n
			}()
		}
		wg.Wait()
		seen := map[int]bool{}
		for _, n := range idx {
			if n < 1 || n > 40 || seen[n] {
				t.Fatalf("indexes %v", idx)
			}
			seen[n] = true
		}
		var claims atomic.Int32
		for i := range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := s.Abort(ctx, "s1", "x", params(fmt.Sprint("e", i)))
				if err != nil {
					t.Error(err)
				}
				if out.Claimed {
					claims.Add(1)
				}
			}()
		}
		wg.Wait()
		if claims.Load() != 1 {
			t.Fatalf("%d claims, want 1", claims.Load())
		}
	})
}
