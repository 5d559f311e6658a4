package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// lockCostLevels are the concurrencies of the lockcost pair table.
var lockCostLevels = []int{1, 16, 64}

// lockProfile, when positive, is how long the lockcost group profiles a
// sidecar's CPU under the c=64 pair load (through --debug-listen).
var lockProfile = flag.Duration("lock-profile", 0, "lockcost: CPU-profile a sidecar (started with --debug-listen) this long under the c=64 lock pair load; 0: no profile")

// lockCostCompare is another sidecar binary to measure in the same run
// (e.g. a build of the commit before a change).
var lockCostCompare = flag.String("lockcost-compare", "", "lockcost: another sidecar binary, started on the same Redis and measured in the same rounds")

// lockCostRounds is how many rotated rounds each pair cell runs.
var lockCostRounds = flag.Int("lockcost-rounds", 3, "lockcost: rounds per cell (rows rotated each round; medians reported)")

// lockProfileFile keeps the profile there (it is deleted otherwise).
var lockProfileFile = flag.String("lock-profile-file", "", "lockcost: where to keep the -lock-profile CPU profile (go tool pprof BINARY FILE); empty: a temporary file, deleted")

func init() {
	flag.Func("lockcost-levels", "lockcost: comma-separated concurrencies of the pair table (default 1,16,64)", func(s string) error {
		l, err := parseLevels(s)
		if err == nil {
			lockCostLevels = l
		}
		return err
	})
}

// profileLockPairs starts a sidecar on the bench's Redis with
// --debug-listen, as deployed otherwise (info logs, metrics served), runs
// the c=64 pair load on it, takes a CPU profile of the real binary over
// -lock-profile and prints its top functions (go tool pprof -top).
func (t *targetRun) profileLockPairs(run int64) {
	env, tb := t.env, t.env.TB.(*benchTB)
	debug := testharness.FreeAddr(tb)
	sc := testharness.StartSidecar(tb, env.Bin, "--redis-url", env.RedisURL, "--metrics-listen", testharness.FreeAddr(tb), "--debug-listen", debug)
	conns := dialN(tb, sc.Addr(), t.opts.conns)
	dir, err := os.MkdirTemp("", "bench-profile-")
	if err != nil {
		fmt.Fprintf(t.out, "lock profile: %v\n", err)
		return
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "cpu.pprof")
	if *lockProfileFile != "" {
		file = *lockProfileFile
	}

	got := make(chan error, 1)
	go func() {
		time.Sleep(t.opts.warm + 500*time.Millisecond) // real time: the load is warm and steady
		got <- fetchProfile(debug, *lockProfile, file)
	}()
	spec := loadSpec{conc: 64, warm: t.opts.warm, window: *lockProfile + time.Second, newOp: func(w int) func(context.Context) error {
		return sidecarPair(v1.NewLockServiceClient(conns[w%len(conns)]), fmt.Sprintf("prof-%d-%d", run, w))
	}}
	r := runLoad(context.Background(), spec)
	if err := <-got; err != nil {
		fmt.Fprintf(t.out, "lock profile: %v\n", err)
		return
	}
	fmt.Fprintf(t.out, "\n== CPU profile of the sidecar on Redis, %v under the c=64 lock pair load (%.0f pairs/s), via --debug-listen ==\n", *lockProfile, r.throughput)
	cmd := exec.Command("go", "tool", "pprof", "-top", "-nodecount=20", env.Bin, file)
	cmd.Stdout, cmd.Stderr = t.out, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(t.out, "go tool pprof: %v\n", err)
	}
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=100000", env.Bin, file).Output()
	if err != nil {
		fmt.Fprintf(t.out, "go tool pprof: %v\n", err)
		return
	}
	fmt.Fprintln(t.out, "shares (cumulative, of the samples above):")
	for _, p := range profileParts {
		fmt.Fprintf(t.out, "  %-52s %s\n", p.what, cumShare(string(out), p.fn))
	}
}

// profileParts are the functions whose cumulative share the lock profile
// reports, as issue 24's profile did.
var profileParts = []struct{ what, fn string }{
	{"handlers (server edge interceptor and below)", "internal/server.(*unaryEdge).intercept"},
	{"lock store calls (RedisStore.acquire)", "internal/lock.(*RedisStore).acquire"},
	{"lock store calls (RedisStore.Release)", "internal/lock.(*RedisStore).Release"},
	{"gRPC read (HandleStreams)", "transport.(*http2Server).HandleStreams"},
	{"gRPC write (loopyWriter)", "transport.(*loopyWriter).run"},
	{"Redis pipeline flusher", "internal/redisx.(*pipeQueue).flush"},
	{"explicit yields (runtime.Gosched; gRPC's writer yields too)", "runtime.gosched_m"},
	{"scheduler (runtime.schedule)", "runtime.schedule"},
	{"runtime lock contention (runtime.lock2)", "runtime.lock2"},
	{"allocation (runtime.mallocgc)", "runtime.mallocgc"},
	{"GC workers (runtime.gcBgMarkWorker)", "runtime.gcBgMarkWorker"},
}

// cumShare finds fn's cum% in a `pprof -top -cum` listing.
func cumShare(top, fn string) string {
	for _, line := range strings.Split(top, "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && strings.HasSuffix(f[5], fn) {
			return f[4]
		}
	}
	return "0%"
}

// fetchProfile saves the CPU profile of d served at debug into file.
func fetchProfile(debug string, d time.Duration, file string) error {
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", debug, max(int(d.Seconds()), 1))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return f.Close()
}
