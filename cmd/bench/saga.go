package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

func init() { groups = append(groups, sagaRows) }

// sagaRows: a whole successful saga (StartSaga, three RecordStep, then
// CompleteSaga: five calls, one op per saga, so the throughput is sagas per
// second) through the sidecar on Redis, on the embedded store, and the same
// five scripts called from Go (raw); and an aborted saga with three
// compensations run by the sidecar against an HTTP server in this process,
// timed from StartSaga until the server has answered the last (oldest)
// compensation.
//
// The scenario starts its own sidecars (on the bench's Redis and embedded),
// with a config file declaring the upstream.
func sagaRows(env *Env) []Row {
	const rawRow = "saga start+3 steps+complete: raw Redis Lua (baseline)"
	var seq atomic.Int64 // fresh saga ids across rows and concurrency levels
	run := fmt.Sprintf("%d", time.Now().UnixNano())

	// The upstream closes the waiter of a saga when its last compensation
	// (the first step's) arrives.
	var mu sync.Mutex
	waiters := map[string]chan struct{}{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		env.TB.Fatalf("bench: listen: %v", err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		key := r.Header.Get("Idempotency-Key")
		mu.Lock()
		if ch, ok := waiters[key]; ok {
			close(ch)
			delete(waiters, key)
		}
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "bench: upstream server:", err)
		}
	}()
	env.TB.Cleanup(func() { _ = hs.Close(); <-served })

	dir, err := os.MkdirTemp("", "bench-saga-")
	if err != nil {
		env.TB.Fatalf("bench: %v", err)
	}
	env.TB.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "sidecar.yaml")
	err = os.WriteFile(cfg, []byte(fmt.Sprintf(`
saga_retention: 1m
upstreams:
  inventory: {url: "http://%s", max_connections: 256, retry: {max_attempts: 1}}
`, lis.Addr())), 0o600)
	if err != nil {
		env.TB.Fatalf("bench: %v", err)
	}
	bin := testharness.BuildSidecar(env.TB)
	// A namespace of its own: any sidecar of a namespace may run its sagas'
	// compensations (the recovery worker), and the bench's other sidecars
	// do not declare the upstream.
	onRedis := v1.NewSagaServiceClient(testharness.StartSidecar(env.TB, bin, "--namespace", "bench-saga",
		"--config", cfg, "--redis-url", "redis://"+env.Redis.Options().Addr, "--log-level", "error").Conn(env.TB))
	embedded := v1.NewSagaServiceClient(testharness.StartSidecar(env.TB, bin, "--config", cfg, "--log-level", "error").Conn(env.TB))

	steps := []string{"reserve", "charge", "ship"}
	comp := func(step string) *v1.Compensation {
		return &v1.Compensation{Upstream: "inventory", Method: "POST", Path: "/undo/" + step, Body: []byte(`{"order":"bench"}`)}
	}
	begin := func(ctx context.Context, c v1.SagaServiceClient, id string) error {
		if _, err := c.StartSaga(ctx, &v1.StartSagaRequest{SagaId: id, Name: "bench", Timeout: durationpb.New(time.Minute)}); err != nil {
			return err
		}
		for _, st := range steps {
			if _, err := c.RecordStep(ctx, &v1.RecordStepRequest{SagaId: id, Step: st, Compensation: comp(st)}); err != nil {
				return err
			}
		}
		return nil
	}
	complete := func(c v1.SagaServiceClient) func(context.Context, int, int) error {
		return func(ctx context.Context, _, _ int) error {
			id := fmt.Sprintf("bench-saga-%s-%d", run, seq.Add(1))
			if err := begin(ctx, c, id); err != nil {
				return err
			}
			_, err := c.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: id})
			return err
		}
	}
	abort := func(c v1.SagaServiceClient) func(context.Context, int, int) error {
		return func(ctx context.Context, _, _ int) error {
			id := fmt.Sprintf("bench-saga-%s-%d", run, seq.Add(1))
			done := make(chan struct{})
			mu.Lock()
			waiters[saga.IdempotencyKey(id, steps[0])] = done
			mu.Unlock()
			if err := begin(ctx, c, id); err != nil {
				return err
			}
			if _, err := c.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: id, Reason: "bench"}); err != nil {
				return err
			}
			select {
			case <-done:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(30 * time.Second):
				return fmt.Errorf("saga %s: compensations did not finish", id)
			}
		}
	}

	raw := saga.NewRedisStore(env.Redis, "bench-raw", 5*time.Second)
	p := saga.Params{Lease: 15 * time.Second, Retention: time.Minute}
	rawOp := func(ctx context.Context, _, _ int) error {
		id := fmt.Sprintf("bench-saga-raw-%s-%d", run, seq.Add(1))
		if _, _, err := raw.Start(ctx, saga.NewSaga{ID: id, Name: "bench", Timeout: time.Minute}, p); err != nil {
			return err
		}
		for _, st := range steps {
			c := comp(st)
			if _, _, _, err := raw.RecordStep(ctx, id, saga.Step{Name: st, Compensation: saga.Compensation{
				Upstream: c.Upstream, Method: c.Method, Path: c.Path, Body: c.Body}}, 1000, p); err != nil {
				return err
			}
		}
		_, err := raw.Complete(ctx, id, p)
		return err
	}

	return []Row{
		{Name: "saga start+3 steps+complete (Redis)", Op: complete(onRedis), Raw: rawRow, Redis: env.Redis},
		{Name: "saga start+3 steps+complete (embedded)", Op: complete(embedded)},
		{Name: rawRow, Op: rawOp, Redis: env.Redis},
		{Name: "saga abort, 3 compensations over HTTP (Redis)", Op: abort(onRedis)},
		{Name: "saga abort, 3 compensations over HTTP (embedded)", Op: abort(embedded)},
	}
}
