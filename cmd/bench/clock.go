package main

import (
	"context"
	"fmt"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

func init() { groups = append(groups, clockRows) }

// clockRows: NextLamport blocks of 1 and 1000 values on one shared (hot)
// clock, through the sidecar on Redis and on the embedded store, against a
// raw INCRBY from Go (what the Redis store does per call: the baseline);
// NextUlid of 1 and 1000 ULIDs (no store involved); and one bare unary gRPC
// call (the floor). Throughput is in values (or ULIDs) per second.
func clockRows(env *Env) []Row {
	const floor = "clock: gRPC floor, 1 bare unary call"
	raw := func(n int) string { return fmt.Sprintf("clock INCRBY %d: raw Redis (baseline)", n) }
	next := func(c v1.ClockServiceClient, n uint32) func(context.Context, int, int) error {
		return func(ctx context.Context, _, _ int) error {
			r, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "bench", Count: n})
			if err == nil && r.GetLast()-r.GetFirst()+1 != uint64(n) {
				err = fmt.Errorf("block %d..%d for %d", r.GetFirst(), r.GetLast(), n)
			}
			return err
		}
	}
	incr := func(n int64) func(context.Context, int, int) error {
		return func(ctx context.Context, _, _ int) error {
			return env.Redis.IncrBy(ctx, "bench-lamport-raw", n).Err()
		}
	}
	ulids := func(c v1.ClockServiceClient, n uint32) func(context.Context, int, int) error {
		return func(ctx context.Context, _, _ int) error {
			r, err := c.NextUlid(ctx, &v1.NextUlidRequest{Count: n})
			if err == nil && len(r.GetUlids()) != int(n) {
				err = fmt.Errorf("%d ULIDs for %d", len(r.GetUlids()), n)
			}
			return err
		}
	}
	onRedis, embedded := v1.NewClockServiceClient(env.OnRedis), v1.NewClockServiceClient(env.Embedded)
	health := healthpb.NewHealthClient(env.Floor)
	var rows []Row
	for _, n := range []int{1, 1000} {
		rows = append(rows,
			Row{Name: fmt.Sprintf("clock NextLamport n=%d: sidecar on Redis", n), Op: next(onRedis, uint32(n)), Raw: raw(n), Floor: floor, PerOp: n},
			Row{Name: fmt.Sprintf("clock NextLamport n=%d: sidecar on embedded store", n), Op: next(embedded, uint32(n)), Floor: floor, PerOp: n},
			Row{Name: raw(n), Op: incr(int64(n)), PerOp: n},
		)
	}
	for _, n := range []int{1, 1000} {
		rows = append(rows, Row{Name: fmt.Sprintf("clock NextUlid n=%d: sidecar", n), Op: ulids(onRedis, uint32(n)), Floor: floor, PerOp: n})
	}
	return append(rows, Row{Name: floor, Op: func(ctx context.Context, _, _ int) error {
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}})
}
