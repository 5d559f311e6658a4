// Command bench is the load generator behind `make bench`. It starts a real
// redis-server, the real sidecar binary twice (on that Redis and on the
// embedded store) and a bare gRPC server (the floor, which also serves the
// echo baseline) in a child process. It first measures the performance
// targets of issue 12 with a lean load generator (load.go, targets.go,
// footprint.go: throughput, latency and each process's CPU per op against
// the echo server and a naive Redis client, scaling, memory, sessions,
// start time), then drives each scenario row at several concurrencies and
// prints one table with throughput, p50/p99 latency and the ratios against
// the raw-Redis baseline and the gRPC floor measured in the same run, and
// finally one verdict line per target. -groups selects parts of the run.
//
// It is not a test: nothing here asserts a time.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// Env is what scenarios drive: connections to the sidecar on Redis and on
// the embedded store, a raw Redis client, and the floor server.
type Env struct {
	Redis    *redis.Client
	OnRedis  *grpc.ClientConn
	Embedded *grpc.ClientConn
	Floor    *grpc.ClientConn
	// TB owns what a scenario starts itself (e.g. a sidecar with its own
	// config file); it is cleaned up when the bench ends.
	TB testharness.TB

	// The processes behind the connections, for CPU and memory accounting.
	Bin             string // the sidecar binary
	RedisAddr       string
	RedisURL        string
	OnRedisSidecar  *testharness.Sidecar
	EmbeddedSidecar *testharness.Sidecar
	FloorAddr       string
	FloorPID        int
}

// Row is one measured line. Op is called repeatedly by each worker; i
// counts that worker's calls. Raw and Floor name the rows (same
// concurrency) this one is compared with.
type Row struct {
	Name  string
	Op    func(ctx context.Context, worker, i int) error
	Raw   string
	Floor string
	// Unit, when set, scales throughput: values per op (e.g. 1000 for a
	// block of 1000 clock values).
	PerOp int
	// Redis, when set, is the Redis whose commands and CPU per op each
	// cell of the row reports (Redis-wide deltas over the cell).
	Redis *redis.Client
	// PID, when set, is the server process whose CPU per op each cell of
	// the row reports (utime+stime over the cell).
	PID int
}

// groups are registered by the scenario files (lock.go, ...).
var groups []func(*Env) []Row

type result struct {
	row        Row
	conc       int
	ops        int64
	errs       int64
	firstErr   error
	elapsed    time.Duration
	p50, p99   time.Duration
	throughput float64
	redis      redisCost
	cpuPerOp   time.Duration // of row.PID; 0 when not measured
}

// benchGroups are the parts of the run -groups selects from.
var benchGroups = []string{"locks", "clock", "memory", "waiters", "keywaiters", "keywaiters-cluster", "sessions", "startup", "outbox-memory", "limits", "ratelimit", "lockcost", "rows"}

func main() {
	if os.Getenv("BENCH_FLOOR_ADDR") != "" {
		serveFloor(os.Getenv("BENCH_FLOOR_ADDR"))
		return
	}
	dur := flag.Duration("duration", time.Second, "rows: measuring time per row and concurrency")
	concs := flag.String("concurrency", "1,16,64", "rows: comma-separated worker counts")
	filter := flag.String("run", "", "rows: only rows whose name contains this")
	sel := flag.String("groups", "all", "comma-separated parts to run: "+strings.Join(benchGroups, ", ")+" (or all)")
	var to targetOpts
	levels := flag.String("levels", "1,4,16,64,256,1024", "locks: concurrency levels of the scaling table (targets use 1 and 64)")
	flag.IntVar(&to.conns, "conns", 4, "gRPC connections the lean load generator's workers share")
	flag.DurationVar(&to.warm, "warm", 500*time.Millisecond, "targets: warm-up before each cell's window")
	flag.DurationVar(&to.window, "window", 2*time.Second, "targets: measuring window of each cell")
	flag.IntVar(&to.clockConc, "clock-concurrency", 8, "clock: workers of the NextLamport/NextUlid cells")
	flag.IntVar(&to.sessions, "sessions", 10000, "sessions: concurrent HoldLock sessions")
	flag.DurationVar(&to.sessionTTL, "session-ttl", 6*time.Second, "sessions: their TTL (held for 3 TTLs)")
	flag.IntVar(&to.waiters, "waiters", 1000, "waiters: clients waiting on one key")
	flag.IntVar(&to.keyWaiters, "key-waiters", 100000, "keywaiters: callers waiting, each on its own key")
	flag.IntVar(&to.startRounds, "start-rounds", 5, "startup: starts per store (median reported)")
	flag.Parse()
	rowLevels, err := parseLevels(*concs)
	if err != nil {
		log.Fatalf("bad -concurrency: %v", err)
	}
	if to.levels, err = parseLevels(*levels); err != nil {
		log.Fatalf("bad -levels: %v", err)
	}
	on := map[string]bool{}
	for _, g := range strings.Split(*sel, ",") {
		g = strings.TrimSpace(g)
		if g == "all" {
			for _, x := range benchGroups {
				on[x] = true
			}
			continue
		}
		if !slices.Contains(benchGroups, g) {
			log.Fatalf("bad -groups: %q is none of %s", g, strings.Join(benchGroups, ", "))
		}
		on[g] = true
	}

	tb := &benchTB{}
	defer tb.cleanup()
	rd := testharness.StartRedis(tb)
	bin := testharness.BuildSidecar(tb)
	// Both sidecars run as deployed by default (info logs, metrics served).
	onRedis := testharness.StartSidecar(tb, bin, "--redis-url", rd.URL(), "--metrics-listen", testharness.FreeAddr(tb))
	embedded := testharness.StartSidecar(tb, bin, "--metrics-listen", testharness.FreeAddr(tb))
	floorAddr := testharness.FreeAddr(tb)
	floorPID := startFloor(tb, floorAddr)

	env := &Env{
		Redis:           rd.Client(tb),
		OnRedis:         onRedis.Conn(tb),
		Embedded:        embedded.Conn(tb),
		Floor:           dial(tb, floorAddr),
		TB:              tb,
		Bin:             bin,
		RedisAddr:       rd.Addr(),
		RedisURL:        rd.URL(),
		OnRedisSidecar:  onRedis,
		EmbeddedSidecar: embedded,
		FloorAddr:       floorAddr,
		FloorPID:        floorPID,
	}
	start := time.Now()
	fmt.Printf("bench: %d cores, redis-server %s (pid %d), sidecar %s (pids %d on Redis, %d embedded), echo/floor pid %d\n",
		numCPU(), rd.Addr(), redisPID(env.Redis), bin, onRedis.PID(), embedded.PID(), floorPID)
	tr := &targetRun{env: env, opts: to, out: os.Stdout}
	for _, g := range []struct {
		name string
		run  func()
	}{
		{"locks", tr.runLocks}, {"clock", tr.runClock}, {"memory", tr.runMemory}, {"waiters", tr.runWaiters},
		{"keywaiters", func() { tr.runKeyWaiters(false) }}, {"keywaiters-cluster", func() { tr.runKeyWaiters(true) }},
		{"startup", tr.runStartup}, {"sessions", tr.runSessions}, {"outbox-memory", func() { runOutboxMemory(env) }},
		{"limits", tr.runLimits}, {"ratelimit", tr.runRateLimit}, {"lockcost", tr.runLockCost},
	} {
		if on[g.name] {
			fmt.Fprintf(os.Stderr, "bench: %s (%s)\n", g.name, time.Since(start).Round(time.Second))
			g.run()
		}
	}
	if on["rows"] {
		fmt.Fprintf(os.Stderr, "bench: rows (%s)\n", time.Since(start).Round(time.Second))
		runRows(env, rowLevels, *dur, *filter)
	}
	tr.printTargets()
	fmt.Printf("\nbench: done in %s\n", time.Since(start).Round(time.Second))
}

func parseLevels(s string) ([]int, error) {
	var levels []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil || n < 1 {
			return nil, fmt.Errorf("%q", s)
		}
		levels = append(levels, n)
	}
	return levels, nil
}

// runRows measures every scenario row (the groups registry) at each level
// and prints their table.
func runRows(env *Env, levels []int, d time.Duration, filter string) {
	var rows []Row
	for _, g := range groups {
		rows = append(rows, g(env)...)
	}
	fmt.Printf("\n== scenario rows: %v per cell, one connection per sidecar ==\n", d)
	var results []result
	for _, row := range rows {
		if filter != "" && !strings.Contains(row.Name, filter) {
			continue
		}
		for _, c := range levels {
			r := measure(row, c, d)
			results = append(results, r)
			fmt.Fprintf(os.Stderr, "  %-52s c=%-3d %10.0f/s\n", row.Name, c, r.throughput)
		}
	}
	printTable(results)
}

func measure(row Row, conc int, d time.Duration) result {
	ctx := context.Background()
	// Warm up connections and script caches.
	for w := range conc {
		_ = row.Op(ctx, w, -1)
	}
	var ops, errs atomic.Int64
	var firstErr atomic.Value
	lat := make([]hist, conc)
	cost := startRedisCost(row.Redis)
	var cpu0 time.Duration
	if row.PID != 0 {
		cpu0 = procCPU(row.PID)
	}
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				t0 := time.Now()
				err := row.Op(ctx, w, i)
				lat[w].add(time.Since(t0))
				ops.Add(1)
				if err != nil {
					if errs.Add(1) == 1 {
						firstErr.Store(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	rc := cost(ops.Load())
	var all hist
	for i := range lat {
		all.merge(&lat[i])
	}
	r := result{row: row, conc: conc, ops: ops.Load(), errs: errs.Load(), elapsed: elapsed, redis: rc}
	if row.PID != 0 && r.ops > 0 {
		r.cpuPerOp = (procCPU(row.PID) - cpu0) / time.Duration(r.ops)
	}
	if e, ok := firstErr.Load().(error); ok {
		r.firstErr = e
	}
	r.p50, r.p99 = all.quantile(0.50), all.quantile(0.99)
	per := max(row.PerOp, 1)
	r.throughput = float64(r.ops*int64(per)) / elapsed.Seconds()
	return r
}

func printTable(results []result) {
	byKey := map[string]result{}
	for _, r := range results {
		byKey[fmt.Sprintf("%s/%d", r.row.Name, r.conc)] = r
	}
	ratio := func(r result, other string) string {
		o, ok := byKey[fmt.Sprintf("%s/%d", other, r.conc)]
		if other == "" || !ok || o.p50 == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", float64(r.p50)/float64(o.p50))
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tconc\tthroughput/s\tp50\tp99\tp50 vs raw\tp50 vs floor\tRedis cmds/op\tRedis CPU/op\tserver CPU/op\terrors\t")
	for _, r := range results {
		errs := fmt.Sprint(r.errs)
		if r.firstErr != nil {
			errs += " (" + trunc(r.firstErr.Error(), 40) + ")"
		}
		cmds, cpu := r.redis.columns()
		serverCPU := "-"
		if r.cpuPerOp > 0 {
			serverCPU = round(r.cpuPerOp)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.row.Name, r.conc, r.throughput,
			round(r.p50), round(r.p99), ratio(r, r.row.Raw), ratio(r, r.row.Floor), cmds, cpu, serverCPU, errs)
	}
	tw.Flush()
	fmt.Println("\np50 vs raw/floor: this row's median latency divided by the named baseline row's at the same concurrency.")
}

func round(d time.Duration) string {
	switch {
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// serveFloor is the child process mode: a bare gRPC server with only the
// health service, the cheapest unary call there is, and the echo service
// (the targets' baseline).
func serveFloor(addr string) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	s.RegisterService(&echoDesc, struct{}{})
	log.Fatal(s.Serve(lis))
}

// startFloor runs the floor server in its own process, like the sidecar.
func startFloor(tb *benchTB, addr string) (pid int) {
	self, err := os.Executable()
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	p, err := os.StartProcess(self, []string{self}, &os.ProcAttr{
		Env:   append(os.Environ(), "BENCH_FLOOR_ADDR="+addr),
		Files: []*os.File{nil, os.Stderr, os.Stderr},
	})
	if err != nil {
		tb.Fatalf("bench: start floor: %v", err)
	}
	tb.Cleanup(func() { _ = p.Kill(); _, _ = p.Wait() })
	conn := dial(tb, addr)
	h := healthpb.NewHealthClient(conn)
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil {
			return p.Pid
		}
		if i > 100 {
			tb.Fatalf("bench: floor server not answering: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dial(tb *benchTB, addr string) *grpc.ClientConn {
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("bench: dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// benchTB adapts the test harness to a program.
type benchTB struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (b *benchTB) Helper() {}
func (b *benchTB) Cleanup(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cleanups = append(b.cleanups, f)
}
func (b *benchTB) Fatalf(format string, args ...any) {
	b.failed = true
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	b.cleanup()
	os.Exit(1)
}
func (b *benchTB) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (b *benchTB) Failed() bool                    { return b.failed }
func (b *benchTB) cleanup() {
	b.mu.Lock()
	fs := b.cleanups
	b.cleanups = nil
	b.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
