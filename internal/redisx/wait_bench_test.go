package redisx_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// BenchmarkRunWait is the cost of each replication setting per durable
// write, on a Sentinel deployment with two replicas (as in
// docs/topologies.md): a script that writes, alone, with WAIT 1, with WAIT
// for every replica online, and with that plus the Sentinel fence; at
// concurrency 1 (latency) and 64 (the fence's rounds are shared):
//
//	go test -run '^$' -bench RunWait -benchtime 3s -cpu 1 ./internal/redisx
func BenchmarkRunWait(b *testing.B) {
	s := testharness.StartSentinel(b, testharness.WithSentinelReplicas(2))
	c, err := redisx.NewClient(s.URL(), redisx.Sentinel, 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	fence, err := redisx.NewSentinelFence(s.URL(), 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fence.Close() })
	waits := []struct {
		name string
		w    redisx.Wait
	}{
		{"none", redisx.Wait{}},
		{"wait1", redisx.Wait{Replicas: 1, Timeout: 5 * time.Second}},
		{"all", redisx.Wait{All: true, Timeout: 5 * time.Second}},
		{"all+fence", redisx.Wait{All: true, Fence: fence, Timeout: 5 * time.Second}},
	}
	ctx := context.Background()
	for _, conc := range []int{1, 64} {
		for _, w := range waits {
			b.Run(fmt.Sprintf("%s/c=%d", w.name, conc), func(b *testing.B) {
				b.SetParallelism(conc) // GOMAXPROCS x conc goroutines: run with -cpu 1
				b.RunParallel(func(pb *testing.PB) {
					keys := []string{fmt.Sprintf("bench:{%p}:n", pb)}
					for pb.Next() {
						if _, err := redisx.RunWait(ctx, c, incrScript, w.w, wroteReply, keys, "w"); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
