package redisx_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// BenchmarkAutoPipeline runs lock ops through the Redis lock store (each
// worker owns a key and alternates TryAcquire and Release: one EVALSHA per
// op, as cmd/bench's lock op) and, for comparison, a trivial script, at
// concurrency 1 and 64, with and without the
// auto-pipeliner. Besides ns/op it reports Redis's CPU time per call (INFO
// cpu), calls/s and the calls per round trip:
//
//	go test -run '^$' -bench AutoPipeline -benchtime 3s ./internal/redisx
func BenchmarkAutoPipeline(b *testing.B) {
	r := testharness.StartRedis(b)
	admin := r.Client(b)
	trivial := redisx.NewScript("bench.trivial", `return 1`)
	for _, script := range []string{"lock", "trivial"} {
		for _, conc := range []int{1, 64} {
			for _, flushers := range []int{0, 1, 2, 4} { // 0: no pipelining
				if conc == 1 && flushers != 0 && flushers != redisx.DefaultPipelineFlushers {
					continue
				}
				name := "plain"
				if flushers > 0 {
					name = fmt.Sprintf("pipelined-%d", flushers)
				}
				b.Run(fmt.Sprintf("%s/conc=%d/%s", script, conc, name), func(b *testing.B) {
					c, err := redisx.NewClient(r.URL(), redisx.Standalone, 5*time.Second)
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close()
					var p *redisx.Coalescer
					if flushers > 0 {
						p = redisx.AutoPipeline(c, flushers, 0)
					}
					ctx := context.Background()
					if err := redisx.LoadScripts(ctx, c, append(lock.Scripts, trivial)...); err != nil {
						b.Fatal(err)
					}
					st := lock.NewRedisStore(c, "bench", 5*time.Second)
					op := func(worker, i int) error {
						key := "k" + strconv.Itoa(worker)
						if i%2 == 1 {
							return st.Release(ctx, key, "lease")
						}
						_, _, ok, err := st.TryAcquire(ctx, key, "lease", "owner", time.Minute)
						if err == nil && !ok {
							err = errors.New("not granted")
						}
						return err
					}
					if script == "trivial" {
						op = func(worker, _ int) error { return trivial.Run(ctx, c, []string{"k" + strconv.Itoa(worker)}).Err() }
					}
					benchCalls(b, admin, p, conc, op)
				})
			}
		}
	}
}

// benchCalls runs b.N calls of op from conc workers.
func benchCalls(b *testing.B, admin *redis.Client, p *redisx.Coalescer, conc int, op func(worker, i int) error) {
	ctx := context.Background()
	if err := admin.FlushAll(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	for w := range conc {
		if err := op(w, 0); err != nil {
			b.Fatal(err)
		}
		if err := op(w, 1); err != nil {
			b.Fatal(err)
		}
	}
	cpu0 := redisCPU(b, admin)
	var before redisx.PipelineStats
	if p != nil {
		before = p.Stats()
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range conc {
		wg.Go(func() {
			for i := 0; ; i++ {
				if next.Add(1) > int64(b.N) {
					return
				}
				if err := op(w, i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	cpu := redisCPU(b, admin) - cpu0
	b.ReportMetric(float64(cpu.Nanoseconds())/1000/float64(b.N), "redis-cpu-µs/op")
	b.ReportMetric(float64(b.N)/el.Seconds(), "calls/s")
	if p != nil {
		s := p.Stats()
		b.ReportMetric(float64(s.Calls-before.Calls)/float64(max(s.RoundTrips-before.RoundTrips, 1)), "calls/trip")
	}
}

// redisCPU is the CPU time Redis used so far (used_cpu_sys + used_cpu_user).
func redisCPU(b *testing.B, c *redis.Client) time.Duration {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}
