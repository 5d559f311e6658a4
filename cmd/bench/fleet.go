package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// lockCostFleet is how many sidecar processes share one Redis in the
// lockcost group's fleet row (issue 24, goal 6).
var lockCostFleet = flag.Int("lockcost-fleet", 4, "lockcost: sidecar processes on one Redis in the fleet row, the load spread over them; 0 or 1: no fleet row")

// fleetRow is the pair load spread over n fresh sidecars on the bench's
// Redis, worker w on sidecar w mod n: what Redis pays when a fleet shares it.
// Only Redis's CPU is attributed (the sidecars share the machine's cores
// with Redis and the load generator, so their own CPU is not the point).
func (t *targetRun) fleetRow(n int, rcpu cpuSource) pairRow {
	env, tb := t.env, t.env.TB.(*benchTB)
	clients := make([]v1.LockServiceClient, n)
	for i := range clients {
		sc := testharness.StartSidecar(tb, env.Bin, "--redis-url", env.RedisURL, "--metrics-listen", testharness.FreeAddr(tb), "--http-listen", "")
		clients[i] = v1.NewLockServiceClient(sc.Conn(tb))
	}
	run := t.seq.Add(1)
	return pairRow{name: fmt.Sprintf("%d sidecars on one Redis (fleet)", n), procs: []cpuSource{rcpu},
		newOp: func(_, w int) func(context.Context) error {
			return sidecarPair(clients[w%n], fmt.Sprintf("fleet-%d-%d", run, w))
		}}
}

// pairMedians are one row's medians at one concurrency.
type pairMedians struct {
	throughput float64 // pairs/s
	redisCPU   float64 // µs of Redis CPU per pair
}

// printRedisCeiling projects, from each row's Redis CPU per pair at
// concurrency c, how many lock operations one Redis core (one Cluster
// shard: Redis runs commands on one thread) could serve before it is
// saturated, and how busy Redis was during the cell. The projection
// assumes Redis CPU per pair stays flat as load grows, which pipelining
// makes pessimistic rather than optimistic.
func printRedisCeiling(out io.Writer, c int, names []string, meds []pairMedians) {
	fmt.Fprintf(out, "\n== Redis ceiling projected from Redis CPU per pair at c=%d (one Redis core = one Cluster shard; a pair is 2 lock ops) ==\n", c)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "row\tpairs/s\tRedis CPU/pair\tRedis utilisation\tceiling lock ops/s per Redis core\t")
	for i, m := range meds {
		if m.redisCPU <= 0 {
			continue
		}
		util := m.throughput * m.redisCPU / 1e6
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%.0f%%\t%.0f\t\n", trunc(names[i], 60), m.throughput, us(m.redisCPU), util*100, 2e6/m.redisCPU)
	}
	tw.Flush()
}
