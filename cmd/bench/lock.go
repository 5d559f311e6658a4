package main

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func init() { groups = append(groups, lockRows) }

func numCPU() int { return runtime.NumCPU() }

// lockRows: an uncontended AcquireLock+ReleaseLock pair (each worker its own
// key), through the sidecar on Redis, on the embedded store, the same Lua
// scripts called from Go (raw), and two bare unary gRPC calls (floor).
func lockRows(env *Env) []Row {
	const raw, floor = "lock pair: raw Redis Lua (baseline)", "gRPC floor: 2 bare unary calls"
	viaSidecar := func(c v1.LockServiceClient, prefix string) func(context.Context, int, int) error {
		return func(ctx context.Context, w, _ int) error {
			key := fmt.Sprintf("bench-%s-%d", prefix, w)
			r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(10 * time.Second)})
			if err != nil {
				return err
			}
			if !r.GetAcquired() {
				return fmt.Errorf("not acquired")
			}
			_, err = c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: r.GetLease().GetLeaseId()})
			return err
		}
	}
	store := lock.NewRedisStore(env.Redis, "bench-raw", 5*time.Second)
	svc := lock.NewService(store, nil, nil)
	health := healthpb.NewHealthClient(env.Floor)
	return []Row{
		{Name: "lock pair: sidecar on Redis", Op: viaSidecar(v1.NewLockServiceClient(env.OnRedis), "redis"), Raw: raw, Floor: floor, PID: env.OnRedisSidecar.PID()},
		{Name: "lock pair: sidecar on embedded store", Op: viaSidecar(v1.NewLockServiceClient(env.Embedded), "mem"), Floor: floor},
		{Name: raw, Op: func(ctx context.Context, w, _ int) error {
			key := fmt.Sprintf("bench-%d", w)
			id, err := svc.NewLeaseID()
			if err != nil {
				return err
			}
			if _, _, ok, err := store.TryAcquire(ctx, key, id, "", 10*time.Second); err != nil || !ok {
				return fmt.Errorf("raw acquire: %v %v", ok, err)
			}
			return store.Release(ctx, key, id)
		}},
		{Name: floor, Op: func(ctx context.Context, _, _ int) error {
			for range 2 {
				if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
					return err
				}
			}
			return nil
		}},
	}
}
