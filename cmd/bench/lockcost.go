package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// The lockcost group (issue 24): what an uncontended AcquireLock+ReleaseLock
// pair costs Redis and the sidecar, next to daprd's lock pattern on the same
// Redis (a go-redis SET NX PX, and a Lua compare-and-delete to unlock) and
// two bare gRPC echo calls, all measured in this run.
//
//   - Redis commands per op type: INFO commandstats deltas over N
//     sequential acquisitions, then N releases, on distinct keys; scripts'
//     inner commands are counted as Redis counts them (EVALSHA and each
//     call it makes).
//   - Pairs/s, p50 and CPU per pair (sidecar, Redis, echo server) at each
//     concurrency of -lockcost-levels.
//   - What released locks leave in Redis: keys, bytes and time to live.
//   - With -lock-profile, a CPU profile of a sidecar on the same Redis
//     (started with --debug-listen) under the c=64 pair load, top functions.

// daprUnlock is modelled on the unlock of daprd's Redis lock component (a
// Lua compare-and-delete: GET, then DEL if the key still holds the
// caller's value; -1 when absent, -2 when another owner's).
var daprUnlock = redis.NewScript(`
local v = redis.call("get", KEYS[1])
if v == false then return -1 end
if v == ARGV[1] then return redis.call("del", KEYS[1]) end
return -2
`)

// daprPair is one lock pair in daprd's pattern on a plain go-redis client.
func daprPair(rdb *redis.Client, key string) func(context.Context) error {
	owner := "bench-" + key
	return func(ctx context.Context) error {
		ok, err := rdb.SetNX(ctx, key, owner, 10*time.Second).Result()
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("dapr pattern: not acquired")
		}
		n, err := daprUnlock.Run(ctx, rdb, []string{key}, owner).Int()
		if err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("dapr pattern: unlock %d", n)
		}
		return nil
	}
}

// sidecarPair is one AcquireLock+ReleaseLock pair through a sidecar.
func sidecarPair(c v1.LockServiceClient, key string) func(context.Context) error {
	acq := &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(10 * time.Second), Owner: "bench"}
	rel := &v1.ReleaseLockRequest{Key: key}
	return func(ctx context.Context) error {
		r, err := c.AcquireLock(ctx, acq)
		if err != nil {
			return err
		}
		if !r.GetAcquired() {
			return errors.New("not acquired")
		}
		rel.LeaseId = r.GetLease().GetLeaseId()
		_, err = c.ReleaseLock(ctx, rel)
		return err
	}
}

// echoPair is two echo calls: the gRPC floor of a pair.
func echoPair(conn grpc.ClientConnInterface) func(context.Context) error {
	op := echoOp(conn)
	return func(ctx context.Context) error {
		if err := op(ctx); err != nil {
			return err
		}
		return op(ctx)
	}
}

// opCommands measures Redis's commands per call of acquire and of release,
// n of each in sequence on distinct keys. acquire(i) returns what
// release(i) needs.
func opCommands(ctx context.Context, rdb *redis.Client, n int, acquire func(i int) (string, error), release func(i int, lease string) error) (acq, rel opCost, err error) {
	leases := make([]string, n)
	s0 := redisCommandStats(ctx, rdb)
	for i := range n {
		if leases[i], err = acquire(i); err != nil {
			return acq, rel, err
		}
	}
	s1 := redisCommandStats(ctx, rdb)
	for i := range n {
		if err := release(i, leases[i]); err != nil {
			return acq, rel, err
		}
	}
	s2 := redisCommandStats(ctx, rdb)
	return opCost{commandDelta(s0, s1, n), usecDelta(s0, s1, n)}, opCost{commandDelta(s1, s2, n), usecDelta(s1, s2, n)}, nil
}

// releasedFootprint is what n released locks under prefix leave in Redis:
// keys, bytes (MEMORY USAGE) and the longest time to live.
func releasedFootprint(ctx context.Context, rdb *redis.Client, pattern string) (keys int, bytes int64, ttl time.Duration) {
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		keys++
		n, _ := rdb.MemoryUsage(ctx, k).Result()
		bytes += n
		if d, _ := rdb.PTTL(ctx, k).Result(); d > ttl {
			ttl = d
		}
	}
	return keys, bytes, ttl
}

// runLockCost is the lockcost group.
func (t *targetRun) runLockCost() {
	env, tb := t.env, t.env.TB.(*benchTB)
	ctx := context.Background()
	run := t.seq.Add(1)
	const n = 1000
	side := v1.NewLockServiceClient(env.OnRedis)
	naive := redis.NewClient(&redis.Options{Addr: env.RedisAddr, PoolSize: 64, MinIdleConns: 64, DisableIdentity: true})
	defer naive.Close()
	rawStore := lock.NewRedisStore(naive, "bench-raw", 5*time.Second)
	rawSvc := lock.NewService(rawStore, nil, nil)

	fmt.Fprintf(t.out, "\n== lock pair cost in Redis (issue 24): INFO commandstats per call, %d sequential calls each on distinct keys ==\n", n)
	fmt.Fprintln(t.out, "(Redis-wide deltas: the bench sidecars' own background commands, a few per thousand calls, are included; µs/call is the usec Redis accounts to the top-level commands)")
	tw := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "client\top\tcommands/call\tRedis µs/call\tbreakdown\t")
	report := func(name string, acq, rel opCost, err error) { printCost(tw, name, acq, rel, err) }
	sideKey := func(i int) string { return fmt.Sprintf("cost-%d-%d", run, i) }
	acq, rel, err := opCommands(ctx, env.Redis, n, func(i int) (string, error) {
		r, err := side.AcquireLock(ctx, &v1.AcquireLockRequest{Key: sideKey(i), Ttl: durationpb.New(10 * time.Second), Owner: "bench"})
		if err == nil && !r.GetAcquired() {
			err = errors.New("not acquired")
		}
		return r.GetLease().GetLeaseId(), err
	}, func(i int, lease string) error {
		_, err := side.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: sideKey(i), LeaseId: lease})
		return err
	})
	report("sidecar on Redis", acq, rel, err)
	acq, rel, err = opCommands(ctx, env.Redis, n, func(i int) (string, error) {
		id, err := rawSvc.NewLeaseID()
		if err != nil {
			return "", err
		}
		_, _, ok, err := rawStore.TryAcquire(ctx, sideKey(i), id, "bench", 10*time.Second)
		if err == nil && !ok {
			err = errors.New("not acquired")
		}
		return id, err
	}, func(i int, lease string) error { return rawStore.Release(ctx, sideKey(i), lease) })
	report("lock scripts from go-redis (this build)", acq, rel, err)
	daprKey := func(i int) string { return fmt.Sprintf("dapr-cost-%d-%d", run, i) }
	acq, rel, err = opCommands(ctx, env.Redis, n, func(i int) (string, error) {
		owner := "bench-" + daprKey(i)
		ok, err := naive.SetNX(ctx, daprKey(i), owner, 10*time.Second).Result()
		if err == nil && !ok {
			err = errors.New("not acquired")
		}
		return owner, err
	}, func(i int, owner string) error { return daprUnlock.Run(ctx, naive, []string{daprKey(i)}, owner).Err() })
	report("daprd pattern (SET NX + Lua del)", acq, rel, err)
	tw.Flush()

	keys, bytes, ttl := releasedFootprint(ctx, env.Redis, fmt.Sprintf("rs:{default/lock/cost-%d-*", run))
	dk, db, _ := releasedFootprint(ctx, env.Redis, fmt.Sprintf("dapr-cost-%d-*", run))
	fmt.Fprintf(t.out, "left in Redis by %d released locks: sidecar %d keys, %d B (%.0f B per lock), longest TTL %s; daprd pattern %d keys, %d B\n",
		n, keys, bytes, float64(bytes)/float64(max(keys, 1)), ttl.Round(time.Second), dk, db)

	// Throughput and CPU per pair: each row's cells at one concurrency run
	// in -lockcost-rounds rounds, the rows' order rotated each round, and
	// the medians are reported, so that every row sees the same noise.
	echoConns := dialN(tb, env.FloorAddr, t.opts.conns)
	rcpu := redisCPU(env.Redis)
	rows := []pairRow{
		{name: "2 echo calls (gRPC floor)", proc: "echo", procs: []cpuSource{pidCPU("echo", env.FloorPID)},
			newOp: func(_, w int) func(context.Context) error { return echoPair(echoConns[w%len(echoConns)]) }},
		t.sidecarRow("sidecar on Redis ("+env.Bin+")", env.OnRedisSidecar, rcpu),
	}
	if *lockCostCompare != "" {
		other := testharness.StartSidecar(tb, *lockCostCompare, "--redis-url", env.RedisURL, "--metrics-listen", testharness.FreeAddr(tb))
		oc := v1.NewLockServiceClient(other.Conn(tb))
		acq, rel, err := opCommands(ctx, env.Redis, n, func(i int) (string, error) {
			r, err := oc.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "cmp-" + sideKey(i), Ttl: durationpb.New(10 * time.Second), Owner: "bench"})
			if err == nil && !r.GetAcquired() {
				err = errors.New("not acquired")
			}
			return r.GetLease().GetLeaseId(), err
		}, func(i int, lease string) error {
			_, err := oc.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "cmp-" + sideKey(i), LeaseId: lease})
			return err
		})
		tw := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', 0)
		printCost(tw, "compared sidecar ("+*lockCostCompare+")", acq, rel, err)
		tw.Flush()
		rows = append(rows, t.sidecarRow("compared sidecar ("+*lockCostCompare+")", other, rcpu))
	}
	if *lockCostFleet > 1 {
		rows = append(rows, t.fleetRow(*lockCostFleet, rcpu))
	}
	rows = append(rows, pairRow{name: "daprd pattern (SET NX + Lua del)", procs: []cpuSource{rcpu},
		newOp: func(c, w int) func(context.Context) error {
			return daprPair(daprClient(env, c), fmt.Sprintf("dapr-%d-%d", run, w))
		}})
	t.runPairRows(rows)
	if *lockProfile > 0 {
		t.profileLockPairs(run)
	}
}

// pairRow is one row of the pair table: newOp(conc, w) is worker w's op.
type pairRow struct {
	name  string
	proc  string // the process whose CPU per pair is shown ("" for none)
	procs []cpuSource
	newOp func(conc, w int) func(context.Context) error
}

// sidecarRow is the pair load on sidecar sc.
func (t *targetRun) sidecarRow(name string, sc *testharness.Sidecar, rcpu cpuSource) pairRow {
	conns := dialN(t.env.TB.(*benchTB), sc.Addr(), t.opts.conns)
	run := t.seq.Add(1)
	return pairRow{name: name, proc: "sidecar", procs: []cpuSource{pidCPU("sidecar", sc.PID()), rcpu},
		newOp: func(_, w int) func(context.Context) error {
			return sidecarPair(v1.NewLockServiceClient(conns[w%len(conns)]), fmt.Sprintf("pair-%d-%d", run, w))
		}}
}

// daprClients are the daprd-pattern clients, one per concurrency (a
// connection per worker, as the naive baseline).
var daprClients = map[int]*redis.Client{}

func daprClient(env *Env, conc int) *redis.Client {
	c := daprClients[conc]
	if c == nil {
		c = redis.NewClient(&redis.Options{Addr: env.RedisAddr, PoolSize: conc, MinIdleConns: min(conc, 64), DisableIdentity: true})
		env.TB.Cleanup(func() { _ = c.Close() })
		daprClients[conc] = c
	}
	return c
}

// runPairRows measures rows at each level in rotated rounds and prints the
// medians, then the Redis ceiling they project at the highest level. The
// last row is the daprd pattern, the baseline of the ratio columns.
func (t *targetRun) runPairRows(rows []pairRow) {
	type key struct{ row, conc int }
	got := map[key][]loadResult{}
	for _, c := range lockCostLevels {
		for r := range *lockCostRounds {
			for j := range rows {
				i := (j + r) % len(rows)
				row := rows[i]
				res := t.cell(c, func(w int) func(context.Context) error { return row.newOp(c, w) }, row.procs...)
				got[key{i, c}] = append(got[key{i, c}], res)
				fmt.Fprintf(os.Stderr, "  lockcost c=%-3d round %d %-60s %8.0f pairs/s\n", c, r+1, trunc(row.name, 60), res.throughput)
			}
		}
	}
	med := func(rs []loadResult, f func(loadResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	fmt.Fprintf(t.out, "\n== lock pairs (AcquireLock+ReleaseLock, each worker its own key): medians of %d rotated rounds, %v warm-up + %v window per cell ==\n", *lockCostRounds, t.opts.warm, t.opts.window)
	tw := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "conc\trow\tpairs/s\tp50\tprocess CPU/pair\tRedis CPU/pair\tpairs/s vs daprd pattern\tRedis CPU vs daprd pattern\terrors\t")
	dapr := len(rows) - 1
	top := lockCostLevels[len(lockCostLevels)-1]
	names, topMeds := make([]string, len(rows)), make([]pairMedians, len(rows))
	for _, c := range lockCostLevels {
		dt := med(got[key{dapr, c}], func(r loadResult) float64 { return r.throughput })
		dr := med(got[key{dapr, c}], func(r loadResult) float64 { return r.cpu["redis"] })
		for i, row := range rows {
			rs := got[key{i, c}]
			tp := med(rs, func(r loadResult) float64 { return r.throughput })
			p50 := time.Duration(med(rs, func(r loadResult) float64 { return float64(r.p50) }))
			pc := med(rs, func(r loadResult) float64 { return r.cpu[row.proc] })
			rc := med(rs, func(r loadResult) float64 { return r.cpu["redis"] })
			var errs int64
			for _, r := range rs {
				errs += r.errs
			}
			vsCPU := "-"
			if rc > 0 && dr > 0 {
				vsCPU = fmt.Sprintf("%.2fx", rc/dr)
			}
			fmt.Fprintf(tw, "%d\t%s\t%.0f\t%s\t%s\t%s\t%.2fx\t%s\t%d\t\n", c, trunc(row.name, 60), tp, round(p50), us(pc), us(rc), tp/max(dt, 1), vsCPU, errs)
			if c == top {
				names[i], topMeds[i] = row.name, pairMedians{throughput: tp, redisCPU: rc}
			}
		}
	}
	tw.Flush()
	printRedisCeiling(t.out, top, names, topMeds)
}

// printCost prints one client's commandstats rows.
func printCost(tw io.Writer, name string, acq, rel opCost, err error) {
	if err != nil {
		fmt.Fprintf(tw, "%s\t-\t-\t-\terror: %v\t\n", name, err)
		return
	}
	fmt.Fprintf(tw, "%s\tacquire\t%.2f\t%.1fµs\t%s\t\n", name, commandTotal(acq.cmds), acq.usec, commandString(acq.cmds))
	fmt.Fprintf(tw, "%s\trelease\t%.2f\t%.1fµs\t%s\t\n", name, commandTotal(rel.cmds), rel.usec, commandString(rel.cmds))
	fmt.Fprintf(tw, "%s\tpair\t%.2f\t%.1fµs\t\t\n", name, commandTotal(acq.cmds)+commandTotal(rel.cmds), acq.usec+rel.usec)
}
