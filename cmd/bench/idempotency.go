package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/idempotency"
)

func init() { groups = append(groups, idempotencyRows) }

// idempotencyRows: the first execution of a key (CheckOrRecord answering
// STARTED, then Complete with a 1 KiB result; every op a fresh key), and the
// retry path (CheckOrRecord answering COMPLETED with that result; each
// worker its own completed key), through the sidecar on Redis, on the
// embedded store, the same Lua scripts called from Go (raw), and bare unary
// gRPC calls (floor).
func idempotencyRows(env *Env) []Row {
	const (
		rawPair   = "idem STARTED+Complete: raw Redis Lua (baseline)"
		rawHit    = "idem COMPLETED hit: raw Redis Lua (baseline)"
		floorPair = "gRPC floor: 2 bare unary calls"
		floorHit  = "gRPC floor: 1 bare unary call"
	)
	var seq atomic.Int64 // fresh keys across rows and concurrency levels
	result := &v1.IdempotencyResult{Data: make([]byte, 1024), Metadata: map[string]string{"status": "201", "content-type": "application/json"}}
	domainResult := idempotency.Result{Data: result.GetData(), Metadata: result.GetMetadata()}
	// Fresh keys are kept briefly, so Redis stays small over a run; the few
	// completed keys of the hit rows for the whole run.
	const freshRetention, hitRetention = 10 * time.Second, time.Hour

	claim := func(key string, retention time.Duration) *v1.CheckOrRecordIdempotencyRequest {
		return &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "sha256:bench", Retention: durationpb.New(retention)}
	}
	pair := func(c v1.IdempotencyServiceClient, prefix string) func(context.Context, int, int) error {
		return func(ctx context.Context, _, _ int) error {
			key := fmt.Sprintf("bench-idem-%s-%d", prefix, seq.Add(1))
			r, err := c.CheckOrRecordIdempotency(ctx, claim(key, freshRetention))
			if err != nil {
				return err
			}
			if r.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
				return fmt.Errorf("fresh key: %v", r.GetOutcome())
			}
			_, err = c.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: key, LeaseId: r.GetLeaseId(), Result: result})
			return err
		}
	}
	// hit answers from a completed key; the worker's first call (the
	// warm-up) completes it.
	hit := func(c v1.IdempotencyServiceClient, prefix string) func(context.Context, int, int) error {
		return func(ctx context.Context, w, _ int) error {
			key := fmt.Sprintf("bench-idem-hit-%s-%d", prefix, w)
			r, err := c.CheckOrRecordIdempotency(ctx, claim(key, hitRetention))
			switch {
			case err != nil:
				return err
			case r.GetOutcome() == v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED:
				_, err = c.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: key, LeaseId: r.GetLeaseId(), Result: result})
				return err
			case r.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_COMPLETED || len(r.GetResult().GetData()) != 1024:
				return fmt.Errorf("completed key: %v", r.GetOutcome())
			}
			return nil
		}
	}

	store := idempotency.NewRedisStore(env.Redis, "bench-raw", 5*time.Second)
	svc := idempotency.NewService(store, nil, nil)
	rawClaim := func(ctx context.Context, key string, retention time.Duration) (idempotency.Claim, string, error) {
		id, err := svc.NewLeaseID()
		if err != nil {
			return idempotency.Claim{}, "", err
		}
		opts := idempotency.Options{Fingerprint: "sha256:bench", LeaseTTL: 30 * time.Second, Retention: retention}
		c, err := store.CheckOrRecord(ctx, key, id, opts)
		return c, id, err
	}
	health := healthpb.NewHealthClient(env.Floor)
	floorCalls := func(n int) func(context.Context, int, int) error {
		return func(ctx context.Context, _, _ int) error {
			for range n {
				if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
					return err
				}
			}
			return nil
		}
	}
	onRedis := v1.NewIdempotencyServiceClient(env.OnRedis)
	embedded := v1.NewIdempotencyServiceClient(env.Embedded)
	return []Row{
		{Name: "idem STARTED+Complete: sidecar on Redis", Op: pair(onRedis, "redis"), Raw: rawPair, Floor: floorPair, Redis: env.Redis},
		{Name: "idem STARTED+Complete: sidecar on embedded store", Op: pair(embedded, "mem"), Floor: floorPair},
		{Name: rawPair, Redis: env.Redis, Op: func(ctx context.Context, _, _ int) error {
			key := fmt.Sprintf("bench-idem-raw-%d", seq.Add(1))
			c, id, err := rawClaim(ctx, key, freshRetention)
			if err != nil || c.Outcome != idempotency.Started {
				return fmt.Errorf("raw claim: %v %v", c.Outcome, err)
			}
			_, err = store.Complete(ctx, key, id, domainResult)
			return err
		}},
		{Name: "idem COMPLETED hit: sidecar on Redis", Op: hit(onRedis, "redis"), Raw: rawHit, Floor: floorHit, Redis: env.Redis},
		{Name: "idem COMPLETED hit: sidecar on embedded store", Op: hit(embedded, "mem"), Floor: floorHit},
		{Name: rawHit, Redis: env.Redis, Op: func(ctx context.Context, w, _ int) error {
			key := fmt.Sprintf("bench-idem-raw-hit-%d", w)
			c, id, err := rawClaim(ctx, key, hitRetention)
			switch {
			case err != nil:
				return err
			case c.Outcome == idempotency.Started:
				_, err = store.Complete(ctx, key, id, domainResult)
				return err
			case c.Outcome != idempotency.Completed:
				return fmt.Errorf("raw hit: %v", c.Outcome)
			}
			return nil
		}},
		{Name: floorHit, Op: floorCalls(1)},
	}
}
