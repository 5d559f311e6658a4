package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
)

// The performance targets of issue 12, measured with the lean load
// generator (load.go) against baselines measured in the same run: the bare
// gRPC echo server, and the lock scripts sent by a naive go-redis client
// (one connection per worker, no pipelining). CPU per op comes from each
// process's own account (/proc/<pid>/stat; Redis also from INFO cpu).

// targetOpts are the -flags of the target groups.
type targetOpts struct {
	levels      []int         // concurrency levels of the lock scaling table
	conns       int           // gRPC connections the workers share
	warm        time.Duration // before each cell's window
	window      time.Duration // each cell's measuring window
	clockConc   int
	sessions    int
	sessionTTL  time.Duration
	waiters     int
	keyWaiters  int
	startRounds int
}

// target is one line of the verdict.
type target struct {
	n             int
	what          string
	figure, bound string
	met           bool
	known         bool // false: not measured
}

type targetRun struct {
	env     *Env
	opts    targetOpts
	out     io.Writer
	targets []target
	// seq makes keys unique across cells.
	seq atomic.Int64
}

func (t *targetRun) add(tg target) { t.targets = append(t.targets, tg) }

func (t *targetRun) printTargets() {
	if len(t.targets) == 0 {
		return
	}
	slices.SortStableFunc(t.targets, func(a, b target) int { return a.n - b.n })
	fmt.Fprintln(t.out, "\n== targets of issues 12 and 16 (same run, same machine) ==")
	for _, tg := range t.targets {
		verdict := "not met"
		switch {
		case !tg.known:
			verdict = "not measured"
		case tg.met:
			verdict = "met"
		}
		fmt.Fprintf(t.out, "target %d: %s: %s vs %s → %s\n", tg.n, tg.what, tg.figure, tg.bound, verdict)
	}
}

// dialN opens n separate connections (n TCP connections) to addr.
func dialN(tb *benchTB, addr string, n int) []*grpc.ClientConn {
	out := make([]*grpc.ClientConn, n)
	for i := range out {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			tb.Fatalf("bench: dial %s: %v", addr, err)
		}
		c.Connect()
		tb.Cleanup(func() { c.Close() })
		out[i] = c
	}
	return out
}

// lockOp alternates AcquireLock and ReleaseLock of key: one op is one RPC.
func lockOp(c v1.LockServiceClient, key string) func(context.Context) error {
	acq := &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(10 * time.Second), Owner: "bench"}
	rel := &v1.ReleaseLockRequest{Key: key}
	var lease string
	return func(ctx context.Context) error {
		if lease == "" {
			r, err := c.AcquireLock(ctx, acq)
			if err != nil {
				return err
			}
			if !r.GetAcquired() {
				return errors.New("not acquired")
			}
			lease = r.GetLease().GetLeaseId()
			return nil
		}
		rel.LeaseId, lease = lease, ""
		_, err := c.ReleaseLock(ctx, rel)
		return err
	}
}

// naiveLockOp is lockOp's scripts sent straight from a go-redis client.
func naiveLockOp(store *lock.RedisStore, svc *lock.Service, key string) func(context.Context) error {
	var lease string
	return func(ctx context.Context) error {
		if lease == "" {
			id, err := svc.NewLeaseID()
			if err != nil {
				return err
			}
			_, _, ok, err := store.TryAcquire(ctx, key, id, "bench", 10*time.Second)
			if err != nil {
				return err
			}
			if !ok {
				return errors.New("not acquired")
			}
			lease = id
			return nil
		}
		id := lease
		lease = ""
		return store.Release(ctx, key, id)
	}
}

// lockCells are the cells of the lock scaling table at one concurrency.
type lockCells struct {
	echo, redis, embedded, naive loadResult
}

func (t *targetRun) cell(conc int, newOp func(w int) func(context.Context) error, procs ...cpuSource) loadResult {
	procs = append(procs, cpuSource{name: "loadgen", read: selfCPU})
	r := runLoad(context.Background(), loadSpec{conc: conc, warm: t.opts.warm, window: t.opts.window, newOp: newOp, procs: procs})
	if r.errs > 0 {
		fmt.Fprintf(os.Stderr, "  (%d errors, first: %v)\n", r.errs, r.firstErr)
	}
	return r
}

// runLocks measures the echo baseline, the lock pair through both
// sidecars, and the naive client, at every level; targets 1-4 and the
// scaling table (target 8).
func (t *targetRun) runLocks() {
	env, tb := t.env, t.env.TB.(*benchTB)
	echoConns := dialN(tb, env.FloorAddr, t.opts.conns)
	redisConns := dialN(tb, env.OnRedisSidecar.Addr(), t.opts.conns)
	memConns := dialN(tb, env.EmbeddedSidecar.Addr(), t.opts.conns)
	echoCPU := pidCPU("echo", env.FloorPID)
	sidecarRedis := pidCPU("sidecar", env.OnRedisSidecar.PID())
	sidecarMem := pidCPU("sidecar", env.EmbeddedSidecar.PID())
	rcpu := redisCPU(env.Redis)

	cells := map[int]*lockCells{}
	for _, c := range t.opts.levels {
		lc := &lockCells{}
		cells[c] = lc
		run := t.seq.Add(1)
		progress := func(name string, r loadResult) {
			fmt.Fprintf(os.Stderr, "  %-34s c=%-4d %9.0f ops/s  p50 %-7s p99 %-7s cpu/op %s\n", name, c, r.throughput, round(r.p50), round(r.p99), cpuString(r))
		}
		lc.echo = t.cell(c, func(w int) func(context.Context) error { return echoOp(echoConns[w%len(echoConns)]) }, echoCPU)
		progress("echo (bare gRPC)", lc.echo)
		lc.redis = t.cell(c, func(w int) func(context.Context) error {
			return lockOp(v1.NewLockServiceClient(redisConns[w%len(redisConns)]), fmt.Sprintf("perf-%d-%d", run, w))
		}, sidecarRedis, rcpu)
		progress("lock op: sidecar on Redis", lc.redis)
		lc.embedded = t.cell(c, func(w int) func(context.Context) error {
			return lockOp(v1.NewLockServiceClient(memConns[w%len(memConns)]), fmt.Sprintf("perf-%d-%d", run, w))
		}, sidecarMem)
		progress("lock op: sidecar on embedded", lc.embedded)
		// The naive client: plain go-redis, a connection per worker.
		rdb := redis.NewClient(&redis.Options{Addr: env.RedisAddr, PoolSize: c, MinIdleConns: min(c, 64), DisableIdentity: true})
		store := lock.NewRedisStore(rdb, "bench-naive", 5*time.Second)
		svc := lock.NewService(store, nil, nil)
		lc.naive = t.cell(c, func(w int) func(context.Context) error {
			return naiveLockOp(store, svc, fmt.Sprintf("naive-%d-%d", run, w))
		}, rcpu)
		progress("lock op: naive go-redis", lc.naive)
		_ = rdb.Close()
	}

	// The scaling table.
	fmt.Fprintln(t.out, "\n== lock ops (AcquireLock or ReleaseLock, alternating per worker key) vs the bare gRPC echo server ==")
	fmt.Fprintf(t.out, "lean load generator: workers over %d connections, %v warm-up + %v window per cell; CPU/op = process CPU over the window / ops\n", t.opts.conns, t.opts.warm, t.opts.window)
	tw := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "conc\techo/s\techo p50\techo p99\techo CPU/call\tRedis-sidecar op/s\tp50\tp99\tsidecar CPU/op\tRedis CPU/op\tembedded op/s\tp50\tp99\tsidecar CPU/op\tnaive op/s\tp50\tRedis CPU/op\tops vs echo\t")
	for _, c := range t.opts.levels {
		lc := cells[c]
		fmt.Fprintf(tw, "%d\t%.0f\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%.0f\t%s\t%s\t%.2fx\t\n", c,
			lc.echo.throughput, round(lc.echo.p50), round(lc.echo.p99), us(lc.echo.cpu["echo"]),
			lc.redis.throughput, round(lc.redis.p50), round(lc.redis.p99), us(lc.redis.cpu["sidecar"]), us(lc.redis.cpu["redis"]),
			lc.embedded.throughput, round(lc.embedded.p50), round(lc.embedded.p99), us(lc.embedded.cpu["sidecar"]),
			lc.naive.throughput, round(lc.naive.p50), us(lc.naive.cpu["redis"]),
			lc.redis.throughput/max(lc.echo.throughput, 1))
	}
	tw.Flush()
	fmt.Fprintln(t.out, "load generator CPU/op (this process), for reference:")
	for _, c := range t.opts.levels {
		lc := cells[c]
		fmt.Fprintf(t.out, "  c=%d: echo %s, Redis sidecar %s, embedded %s, naive %s\n", c,
			us(lc.echo.cpu["loadgen"]), us(lc.redis.cpu["loadgen"]), us(lc.embedded.cpu["loadgen"]), us(lc.naive.cpu["loadgen"]))
	}
	for _, c := range t.opts.levels {
		lc := cells[c]
		for name, r := range map[string]loadResult{"echo": lc.echo, "Redis sidecar": lc.redis, "embedded sidecar": lc.embedded, "naive": lc.naive} {
			if r.errs > 0 {
				fmt.Fprintf(t.out, "  c=%d %s: %d errors (first: %v)\n", c, name, r.errs, r.firstErr)
			}
		}
	}

	hi, lo := cells[64], cells[1]
	if hi != nil {
		e, s := hi.echo.cpu["echo"], hi.redis.cpu["sidecar"]
		t.add(target{n: 1, what: "sidecar CPU per lock op on Redis, c=64", known: e > 0 && s > 0, met: s <= 1.25*e,
			figure: us(s), bound: fmt.Sprintf("1.25 × echo CPU/call %s = %s (embedded store: %s; ratio %.2fx)", us(e), us(1.25*e), us(hi.embedded.cpu["sidecar"]), s/e)})
		rs, rn := hi.redis.cpu["redis"], hi.naive.cpu["redis"]
		t.add(target{n: 2, what: "Redis CPU per lock op through the sidecar, c=64", known: rs > 0 && rn > 0, met: rs <= 0.5*rn,
			figure: us(rs), bound: fmt.Sprintf("0.5 × naive go-redis %s = %s (ratio %.2fx)", us(rn), us(0.5*rn), rs/rn)})
		t.add(target{n: 3, what: "lock ops/s (AcquireLock+ReleaseLock) on Redis, c=64", known: hi.echo.throughput > 0, met: hi.redis.throughput >= 0.8*hi.echo.throughput,
			figure: fmt.Sprintf("%.0f/s", hi.redis.throughput), bound: fmt.Sprintf("0.8 × echo %.0f/s = %.0f/s (ratio %.2fx)", hi.echo.throughput, 0.8*hi.echo.throughput, hi.redis.throughput/hi.echo.throughput)})
	} else {
		t.add(target{n: 1, what: "needs concurrency 64 in -levels"})
	}
	if lo != nil {
		bound := lo.echo.p50 + lo.naive.p50 + 50*time.Microsecond
		t.add(target{n: 4, what: "lock op p50 on Redis, c=1", known: lo.echo.p50 > 0, met: lo.redis.p50 <= bound,
			figure: round(lo.redis.p50), bound: fmt.Sprintf("echo p50 %s + raw script p50 %s + 50µs = %s", round(lo.echo.p50), round(lo.naive.p50), round(bound))})
	}
	t.add(target{n: 8, what: "scaling table (throughput, p99, CPU/op at each concurrency)", known: true, met: true, figure: fmt.Sprintf("%d levels above", len(t.opts.levels)), bound: "reported"})
}

// runClock: NextLamport and NextUlid blocks of 1000 (target 5).
func (t *targetRun) runClock() {
	env, tb := t.env, t.env.TB.(*benchTB)
	redisConns := dialN(tb, env.OnRedisSidecar.Addr(), t.opts.conns)
	memConns := dialN(tb, env.EmbeddedSidecar.Addr(), t.opts.conns)
	const n = 1000
	lamport := func(conns []*grpc.ClientConn) func(w int) func(context.Context) error {
		return func(w int) func(context.Context) error {
			c := v1.NewClockServiceClient(conns[w%len(conns)])
			req := &v1.NextLamportRequest{Clock: "bench-perf", Count: n}
			return func(ctx context.Context) error {
				r, err := c.NextLamport(ctx, req)
				if err == nil && r.GetLast()-r.GetFirst()+1 != n {
					err = fmt.Errorf("block %d..%d", r.GetFirst(), r.GetLast())
				}
				return err
			}
		}
	}
	ulids := func(w int) func(context.Context) error {
		c := v1.NewClockServiceClient(redisConns[w%len(redisConns)])
		req := &v1.NextUlidRequest{Count: n}
		return func(ctx context.Context) error {
			r, err := c.NextUlid(ctx, req, leanULIDs())
			if err == nil && len(r.GetUlids()) != n {
				err = fmt.Errorf("%d ULIDs", len(r.GetUlids()))
			}
			return err
		}
	}
	side := pidCPU("sidecar", env.OnRedisSidecar.PID())
	c := t.opts.clockConc
	lr := t.cell(c, lamport(redisConns), side)
	lm := t.cell(c, lamport(memConns), pidCPU("sidecar", env.EmbeddedSidecar.PID()))
	ul := t.cell(c, ulids, side)
	fmt.Fprintf(t.out, "\n== clock blocks of %d, c=%d ==\n", n, c)
	tw := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "call\tcalls/s\tvalues/s\tp50\tp99\tsidecar CPU/call\tload generator CPU/call\t")
	for _, x := range []struct {
		name string
		r    loadResult
	}{{"NextLamport, sidecar on Redis", lr}, {"NextLamport, embedded store", lm}, {"NextUlid", ul}} {
		fmt.Fprintf(tw, "%s\t%.0f\t%.2fM\t%s\t%s\t%s\t%s\t\n", x.name, x.r.throughput, x.r.throughput*n/1e6, round(x.r.p50), round(x.r.p99), us(x.r.cpu["sidecar"]), us(x.r.cpu["loadgen"]))
	}
	tw.Flush()
	fmt.Fprintln(t.out, "NextUlid responses are decoded by the generator with a lean full decoder (ulidcodec.go); generic decoding costs the client ~3x the sidecar's encoding.")
	lv := lr.throughput * n
	t.add(target{n: 5, what: "NextLamport count=1000 on Redis", known: lv > 0, met: lv >= 5e6,
		figure: fmt.Sprintf("%.2fM values/s (embedded store %.2fM/s)", lv/1e6, lm.throughput*n/1e6), bound: "5M/s"})
	uv := ul.throughput * n
	t.add(target{n: 5, what: "NextUlid count=1000", known: uv > 0, met: uv >= 2e6, figure: fmt.Sprintf("%.2fM ULIDs/s", uv/1e6), bound: "2M/s"})
}

func us(v float64) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fµs", v)
}

func cpuString(r loadResult) string {
	names := make([]string, 0, len(r.cpu))
	for k := range r.cpu {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		fmt.Fprintf(&b, "%s %s (%.2f cores) ", k, us(r.cpu[k]), r.cpuUtil[k])
	}
	return b.String()
}

// runParallel runs f(i) for i in [0, n) with at most par at once.
func runParallel(n, par int, f func(i int)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, par)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(i)
		}()
	}
	wg.Wait()
}
