package lock_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// BenchmarkRedisLockPair is one uncontended acquire+release pair through
// the Service on a RedisStore (the client the sidecar uses, auto-pipelined),
// on a real Redis; with -benchmem it gives the store path's allocations
// per pair:
//
//	go test -run '^$' -bench RedisLockPair -benchmem ./internal/lock
func BenchmarkRedisLockPair(b *testing.B) {
	rd := testharness.StartRedis(b)
	c, err := redisx.NewClient(rd.URL(), redisx.Standalone, 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	redisx.AutoPipeline(c, 0, 0)
	ctx := context.Background()
	if err := redisx.LoadScripts(ctx, c, lock.Scripts...); err != nil {
		b.Fatal(err)
	}
	svc := lock.NewService(lock.NewRedisStore(c, "bench", 5*time.Second), nil, nil)
	b.Cleanup(svc.Close)
	var workers atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(32) // 64 callers on 2 cores, as cmd/bench's c=64
	b.RunParallel(func(pb *testing.PB) {
		key := "k" + strconv.FormatInt(workers.Add(1), 10)
		for pb.Next() {
			l, _, ok, err := svc.Acquire(ctx, key, lock.AcquireOptions{TTL: time.Minute, Owner: "bench"})
			if err != nil || !ok {
				b.Errorf("acquire: %v %v", ok, err)
				return
			}
			if err := svc.Release(ctx, key, l.LeaseID); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
