// Command bench is the load generator behind `make bench`. It starts a real
// redis-server, the real sidecar binary twice (on that Redis and on the
// embedded store) and a bare gRPC server (the floor), drives each scenario
// at several concurrencies, and prints one table with throughput, p50/p99
// latency and the ratios against the raw-Redis baseline and the gRPC floor
// measured in the same run.
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
}

func main() {
	if os.Getenv("BENCH_FLOOR_ADDR") != "" {
		serveFloor(os.Getenv("BENCH_FLOOR_ADDR"))
		return
	}
	dur := flag.Duration("duration", 2*time.Second, "measuring time per row and concurrency")
	concs := flag.String("concurrency", "1,16,64", "comma-separated worker counts")
	filter := flag.String("run", "", "only rows whose name contains this")
	flag.Parse()
	var levels []int
	for _, s := range strings.Split(*concs, ",") {
		var n int
		if _, err := fmt.Sscan(s, &n); err != nil || n < 1 {
			log.Fatalf("bad -concurrency %q", *concs)
		}
		levels = append(levels, n)
	}

	tb := &benchTB{}
	defer tb.cleanup()
	rd := testharness.StartRedis(tb)
	bin := testharness.BuildSidecar(tb)
	onRedis := testharness.StartSidecar(tb, bin, "--redis-url", rd.URL(), "--log-level", "error")
	embedded := testharness.StartSidecar(tb, bin, "--log-level", "error")
	floorAddr := testharness.FreeAddr(tb)
	startFloor(tb, floorAddr)

	env := &Env{
		Redis:    rd.Client(tb),
		OnRedis:  onRedis.Conn(tb),
		Embedded: embedded.Conn(tb),
		Floor:    dial(tb, floorAddr),
		TB:       tb,
	}
	var rows []Row
	for _, g := range groups {
		rows = append(rows, g(env)...)
	}
	fmt.Printf("bench: %d cores, %v per cell, redis-server %s, sidecar %s\n\n", numCPU(), *dur, rd.Addr(), bin)
	var results []result
	for _, row := range rows {
		if *filter != "" && !strings.Contains(row.Name, *filter) {
			continue
		}
		for _, c := range levels {
			r := measure(row, c, *dur)
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
	lat := make([][]time.Duration, conc)
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
				lat[w] = append(lat[w], time.Since(t0))
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
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	r := result{row: row, conc: conc, ops: ops.Load(), errs: errs.Load(), elapsed: elapsed}
	if e, ok := firstErr.Load().(error); ok {
		r.firstErr = e
	}
	if len(all) > 0 {
		r.p50 = all[len(all)/2]
		r.p99 = all[len(all)*99/100]
	}
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
	fmt.Fprintln(tw, "scenario\tconc\tthroughput/s\tp50\tp99\tp50 vs raw\tp50 vs floor\terrors\t")
	for _, r := range results {
		errs := fmt.Sprint(r.errs)
		if r.firstErr != nil {
			errs += " (" + trunc(r.firstErr.Error(), 40) + ")"
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t\n", r.row.Name, r.conc, r.throughput,
			round(r.p50), round(r.p99), ratio(r, r.row.Raw), ratio(r, r.row.Floor), errs)
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
// health service, the cheapest unary call there is.
func serveFloor(addr string) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	log.Fatal(s.Serve(lis))
}

// startFloor runs the floor server in its own process, like the sidecar.
func startFloor(tb *benchTB, addr string) {
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
			return
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
