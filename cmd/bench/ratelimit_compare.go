package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// The rate-limit comparison of issue 22: RateLimitService.Take and the
// sidecar's own ShouldRateLimit against envoyproxy/ratelimit's
// ShouldRateLimit (envoyrl.go), all on one fresh Redis, driven by the same
// lean load generator (load.go) with the same stubs, on one hot key and
// spread over rlKeys keys, at each level of -rl-levels. The cells run
// interleaved (every row at one level, then the next level, then the next
// round) and each figure is the median over -rl-rounds rounds, so a noisy
// moment of the shared machine moves one sample, not a whole row.
//
// Per cell: calls/s, p50/p99, the server's CPU per call (/proc), Redis's
// (INFO cpu) and the commands Redis ran per call (INFO commandstats, which
// counts the commands scripts run too; INFO itself is left out).

var (
	rlRounds = flag.Int("rl-rounds", 3, "ratelimit: interleaved rounds of every cell (figures are medians)")
	rlLevels = flag.String("rl-levels", "1,16,64", "ratelimit: concurrency levels")
	rlRun    = flag.String("rl-run", "", "ratelimit: only rows whose name and keys (\"<name> <keys>\") contain this (ratios only where both sides ran)")
	rlLease  = flag.Bool("rl-lease", true, "ratelimit: add a hot-key Take row with token leasing on (lease: {batch: 100}; docs/ratelimits.md)")
)

const (
	rlKeys     = 10000      // keys of the spread rows
	rlOpen     = 1000000000 // per second: every call is allowed, so every call is counted in Redis
	rlHeld     = 1000       // per second: the hot key is exhausted most of the time
	rlDomain   = "bench"
	rlBatch    = 100 // lease batch of the leased row
	envoyLabel = "envoyproxy/ratelimit"

	rlTakeName   = "Take fixed_window, sidecar"
	rlSRLName    = "ShouldRateLimit, sidecar"
	rlEnvoyName  = "ShouldRateLimit, " + envoyLabel
	rlTunedName  = "ShouldRateLimit, " + envoyLabel + " tuned"
	rlLeasedName = "Take fixed_window leased, sidecar"
)

// rlRow is one line of the comparison.
type rlRow struct {
	name   string // what is called, on which server
	keys   string // "hot", "10k", "hot, held"
	server string // whose CPU is the server's
	pid    int
	newOp  func(w int) func(context.Context) error
}

// rlSample is one cell's measurement.
type rlSample struct {
	res  loadResult
	cmds map[string]cmdStat // commands Redis ran in the window, by name
}

// runRateLimit is the ratelimit group: it builds (or finds) envoyproxy/ratelimit,
// starts a fresh Redis, a sidecar and two envoyproxy/ratelimit servers on
// it, measures every row at every level in interleaved rounds, and prints
// the table, the commands per call, the hot-key ratios and the targets.
func (t *targetRun) runRateLimit() {
	tb := t.env.TB.(*benchTB)
	levels, err := parseLevels(*rlLevels)
	if err != nil {
		tb.Fatalf("bad -rl-levels: %v", err)
	}
	envoyBin := envoyRateLimitBin(tb)
	rd := testharness.StartRedis(tb)
	rdb := rd.Client(tb)

	dir, err := os.MkdirTemp("", "bench-ratelimit-compare-")
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	// The same limits for both servers: envoyproxy/ratelimit's YAML, which
	// the sidecar reads as is, and the sidecar's fixed-window limiters of
	// the same limit and window for Take.
	domainYAML := fmt.Sprintf(`domain: %s
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: %d}
  - key: held
    rate_limit: {unit: second, requests_per_unit: %d}
`, rlDomain, rlOpen, rlHeld)
	envoyFile, cfg := filepath.Join(dir, "bench.yaml"), filepath.Join(dir, "sidecar.yaml")
	sidecarYAML := fmt.Sprintf(`ratelimits:
  open: {algorithm: fixed_window, limit: %[1]d, window: 1s}
  held: {algorithm: fixed_window, limit: %[2]d, window: 1s}
  gcra: {algorithm: gcra, rate: %[1]d, burst: %[1]d}
`, rlOpen, rlHeld)
	if *rlLease {
		sidecarYAML += fmt.Sprintf("  leased: {algorithm: fixed_window, limit: %d, window: 1s, lease: {batch: %d}}\n", rlOpen, rlBatch)
	}
	sidecarYAML += fmt.Sprintf("envoy_ratelimit:\n  files: [%q]\n", envoyFile)
	for path, data := range map[string]string{envoyFile: domainYAML, cfg: sidecarYAML} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			tb.Fatalf("bench: %v", err)
		}
	}
	// Each server as deployed by default: the sidecar with info logs and
	// metrics served; envoyproxy/ratelimit with its defaults (no write
	// buffering, no local cache) and statsd off, and a second one with the
	// settings its README recommends for throughput: a 150µs pipeline
	// window and a local cache of over-limit keys.
	sc := testharness.StartSidecar(tb, t.env.Bin, "--config", cfg, "--redis-url", rd.URL(), "--metrics-listen", testharness.FreeAddr(tb))
	probe := descriptorRequest(rlDomain, "user", "probe")
	envoyDefault := startEnvoyRateLimit(tb, envoyBin, rd.Addr(), domainYAML, probe)
	envoyTuned := startEnvoyRateLimit(tb, envoyBin, rd.Addr(), domainYAML, probe,
		"REDIS_PIPELINE_WINDOW=150us", "LOCAL_CACHE_SIZE_IN_BYTES=1048576")
	scConns := dialN(tb, sc.Addr(), t.opts.conns)
	defConns := dialN(tb, envoyDefault.addr, t.opts.conns)
	tunedConns := dialN(tb, envoyTuned.addr, t.opts.conns)

	keyNames := make([]string, rlKeys)
	spreadReqs := make([]*rlsv3.RateLimitRequest, rlKeys)
	for i := range keyNames {
		keyNames[i] = "k" + strconv.Itoa(i)
		spreadReqs[i] = descriptorRequest(rlDomain, "user", keyNames[i])
	}
	hotReq, heldReq := descriptorRequest(rlDomain, "user", "hot"), descriptorRequest(rlDomain, "held", "hot")
	// take: worker w's Take on limiter, on "hot" or on the keys in turn
	// (each worker from its own offset); open limiters must allow.
	take := func(limiter string, spread bool) func(int) func(context.Context) error {
		return func(w int) func(context.Context) error {
			c := v1.NewRateLimitServiceClient(scConns[w%len(scConns)])
			req := &v1.TakeRequest{Limiter: limiter, Key: "hot"}
			i := w * 7919
			return func(ctx context.Context) error {
				if spread {
					i++
					req.Key = keyNames[i%rlKeys]
				}
				r, err := c.Take(ctx, req)
				if err == nil && limiter != "held" && !r.GetAllowed() {
					err = fmt.Errorf("take %s: refused", limiter)
				}
				return err
			}
		}
	}
	// should: worker w's ShouldRateLimit on conns, of the hot descriptor,
	// the spread ones in turn, or the held one.
	should := func(conns []*grpc.ClientConn, keys string) func(int) func(context.Context) error {
		return func(w int) func(context.Context) error {
			c := rlsv3.NewRateLimitServiceClient(conns[w%len(conns)])
			i := w * 7919
			return func(ctx context.Context) error {
				req := hotReq
				switch keys {
				case "10k":
					i++
					req = spreadReqs[i%rlKeys]
				case "hot, held":
					req = heldReq
				}
				r, err := c.ShouldRateLimit(ctx, req)
				if err == nil && keys != "hot, held" && r.GetOverallCode() != rlsv3.RateLimitResponse_OK {
					err = fmt.Errorf("should rate limit: %v", r.GetOverallCode())
				}
				return err
			}
		}
	}
	scPID := sc.PID()
	rows := []rlRow{
		{rlTakeName, "hot", "sidecar", scPID, take("open", false)},
		{rlSRLName, "hot", "sidecar", scPID, should(scConns, "hot")},
		{rlEnvoyName, "hot", "envoy", envoyDefault.pid, should(defConns, "hot")},
		{rlTunedName, "hot", "envoy", envoyTuned.pid, should(tunedConns, "hot")},
		{"Take gcra, sidecar", "hot", "sidecar", scPID, take("gcra", false)},
	}
	if *rlLease {
		rows = append(rows, rlRow{rlLeasedName, "hot", "sidecar", scPID, take("leased", false)})
	}
	rows = append(rows,
		rlRow{rlTakeName, "10k", "sidecar", scPID, take("open", true)},
		rlRow{rlSRLName, "10k", "sidecar", scPID, should(scConns, "10k")},
		rlRow{rlEnvoyName, "10k", "envoy", envoyDefault.pid, should(defConns, "10k")},
		rlRow{rlTunedName, "10k", "envoy", envoyTuned.pid, should(tunedConns, "10k")},
		rlRow{rlTakeName, "hot, held", "sidecar", scPID, take("held", false)},
		rlRow{rlSRLName, "hot, held", "sidecar", scPID, should(scConns, "hot, held")},
		rlRow{rlEnvoyName, "hot, held", "envoy", envoyDefault.pid, should(defConns, "hot, held")},
		rlRow{rlTunedName, "hot, held", "envoy", envoyTuned.pid, should(tunedConns, "hot, held")},
	)

	if *rlRun != "" {
		rows = slices.DeleteFunc(rows, func(r rlRow) bool { return !strings.Contains(r.name+" "+r.keys, *rlRun) })
	}
	version := strings.TrimPrefix(filepath.Base(envoyBin), "envoy-ratelimit-")
	fmt.Fprintf(t.out, "\n== rate limits (issue 22): the sidecar (pid %d) vs %s %s (pids %d default, %d tuned) on one Redis %s; %d interleaved rounds, %v window per cell, %d connections per server ==\n",
		scPID, envoyLabel, version, envoyDefault.pid, envoyTuned.pid, rd.Addr(), *rlRounds, t.opts.window, t.opts.conns)
	fmt.Fprintf(t.out, "limits: %d/s (every call allowed) on hot and 10k, %d/s on \"hot, held\"; fixed windows of 1s; leased: lease {batch: %d}; tuned: REDIS_PIPELINE_WINDOW=150us, LOCAL_CACHE_SIZE_IN_BYTES=1MiB\n",
		rlOpen, rlHeld, rlBatch)
	samples := make([][][]rlSample, len(rows)) // [row][level][round]
	for i := range samples {
		samples[i] = make([][]rlSample, len(levels))
	}
	ctx := context.Background()
	for round := range *rlRounds {
		for li, c := range levels {
			for ri, row := range rows {
				s := t.rlCell(ctx, rdb, row, c)
				samples[ri][li] = append(samples[ri][li], s)
				fmt.Fprintf(os.Stderr, "  round %d %-58s %-9s c=%-3d %8.0f/s\n", round+1, row.name, row.keys, c, s.res.throughput)
			}
		}
	}
	meds := make([][]rlMedian, len(rows))
	for ri := range rows {
		for li := range levels {
			meds[ri] = append(meds[ri], medianOf(samples[ri][li]))
		}
	}
	t.printRateLimit(rows, levels, samples, meds)
}

// rlCell measures one row at concurrency c.
func (t *targetRun) rlCell(ctx context.Context, rdb *redis.Client, row rlRow, c int) rlSample {
	var snaps []map[string]cmdStat
	// A source that records the command counts next to the CPU snapshots
	// (before and after the window) and reports no CPU of its own.
	cmds := cpuSource{name: "commands", read: func() time.Duration {
		snaps = append(snaps, redisCommandStats(ctx, rdb))
		return -1
	}}
	res := runLoad(ctx, loadSpec{conc: c, warm: t.opts.warm, window: t.opts.window, newOp: row.newOp,
		procs: []cpuSource{pidCPU("server", row.pid), redisCPU(rdb), {name: "client", read: selfCPU}, cmds}})
	s := rlSample{res: res, cmds: map[string]cmdStat{}}
	if len(snaps) == 2 {
		for name, st := range snaps[1] {
			d := cmdStat{calls: st.calls - snaps[0][name].calls, usec: st.usec - snaps[0][name].usec}
			if d.calls > 0 && name != "info" {
				s.cmds[name] = d
			}
		}
	}
	return s
}

// rlMedian is the median of each figure over a cell's rounds.
type rlMedian struct {
	throughput         float64
	p50, p99           time.Duration
	server, redis, gen float64 // CPU per call, µs
	cmdsPerOp          float64
	errs               int64
	firstErr           error
}

func medianOf(ss []rlSample) rlMedian {
	med := func(f func(rlSample) float64) float64 {
		v := make([]float64, 0, len(ss))
		for _, s := range ss {
			v = append(v, f(s))
		}
		sort.Float64s(v)
		if len(v) == 0 {
			return 0
		}
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	m := rlMedian{
		throughput: med(func(s rlSample) float64 { return s.res.throughput }),
		p50:        time.Duration(med(func(s rlSample) float64 { return float64(s.res.p50) })),
		p99:        time.Duration(med(func(s rlSample) float64 { return float64(s.res.p99) })),
		server:     med(func(s rlSample) float64 { return s.res.cpu["server"] }),
		redis:      med(func(s rlSample) float64 { return s.res.cpu["redis"] }),
		gen:        med(func(s rlSample) float64 { return s.res.cpu["client"] }),
		cmdsPerOp: med(func(s rlSample) float64 {
			var n int64
			for _, d := range s.cmds {
				n += d.calls
			}
			return float64(n) / float64(max(s.res.ops, 1))
		}),
	}
	for _, s := range ss {
		m.errs += s.res.errs
		if m.firstErr == nil {
			m.firstErr = s.res.firstErr
		}
	}
	return m
}

func (t *targetRun) printRateLimit(rows []rlRow, levels []int, samples [][][]rlSample, meds [][]rlMedian) {
	tw := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "row\tkeys\tconc\tcalls/s\tp50\tp99\tserver CPU/call\tRedis CPU/call\tRedis cmds/call\tclient CPU/call\terrors\t")
	for ri, row := range rows {
		for li, c := range levels {
			m := meds[ri][li]
			errs := fmt.Sprint(m.errs)
			if m.firstErr != nil {
				errs += " (" + trunc(m.firstErr.Error(), 40) + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%s\t%s\t%.1fµs\t%.1fµs\t%.2f\t%.1fµs\t%s\t\n", row.name, row.keys, c, m.throughput,
				round(m.p50), round(m.p99), m.server, m.redis, m.cmdsPerOp, m.gen, errs)
		}
	}
	tw.Flush()
	fmt.Fprintln(t.out, "\nRedis commands per call by command, and (in brackets) Redis's µs inside them per call, from INFO commandstats over all rounds and levels of the row; a script's µs include the commands it runs, which are listed too:")
	for ri, row := range rows {
		total, ops := map[string]cmdStat{}, int64(0)
		for li := range levels {
			for _, s := range samples[ri][li] {
				ops += s.res.ops
				for name, d := range s.cmds {
					total[name] = cmdStat{calls: total[name].calls + d.calls, usec: total[name].usec + d.usec}
				}
			}
		}
		names := make([]string, 0, len(total))
		for name := range total {
			names = append(names, name)
		}
		slices.SortFunc(names, func(a, b string) int { return int(total[b].usec - total[a].usec) })
		var parts []string
		for _, name := range names {
			st := total[name]
			if per := float64(st.calls) / float64(max(ops, 1)); per >= 0.005 {
				parts = append(parts, fmt.Sprintf("%s %.2f (%.1fµs)", name, per, float64(st.usec)/float64(max(ops, 1))))
			}
		}
		fmt.Fprintf(t.out, "  %-58s %-9s %s\n", row.name, row.keys, strings.Join(parts, ", "))
	}

	// The goal's ratios: each sidecar row of the hot key (allowed, and
	// held) against envoyproxy/ratelimit's row of the same keys, default
	// and tuned; the verdicts for Take (and leased Take) against the
	// default settings.
	find := func(name, keys string) int {
		return slices.IndexFunc(rows, func(r rlRow) bool { return r.name == name && r.keys == keys })
	}
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	fmt.Fprintf(t.out, "\n== hot key: the sidecar / %s, medians (goal: calls/s >= 1.5x, Redis CPU/call <= 0.7x) ==\n", envoyLabel)
	tw = tabwriter.NewWriter(t.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "sidecar row\tkeys\tvs")
	for _, c := range levels {
		fmt.Fprintf(tw, "\tc=%d calls/s\tc=%d Redis CPU", c, c)
	}
	fmt.Fprintln(tw, "\t")
	for ri, row := range rows {
		if row.server != "sidecar" || !strings.HasPrefix(row.keys, "hot") {
			continue
		}
		for _, base := range []struct{ name, label string }{{rlEnvoyName, "default"}, {rlTunedName, "tuned"}} {
			bi := find(base.name, row.keys)
			if bi < 0 {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s", row.name, row.keys, base.label)
			for li := range levels {
				a, b := meds[ri][li], meds[bi][li]
				fmt.Fprintf(tw, "\t%s\t%s", ratio(a.throughput, b.throughput), ratio(a.redis, b.redis))
			}
			fmt.Fprintln(tw, "\t")
		}
	}
	tw.Flush()
	def := find(rlEnvoyName, "hot")
	for _, name := range []string{rlTakeName, rlLeasedName} {
		ti := find(name, "hot")
		if ti < 0 || def < 0 {
			continue
		}
		for li, c := range levels {
			a, b := meds[ti][li], meds[def][li]
			t.add(target{n: 22, what: fmt.Sprintf("%s: calls/s vs %s ShouldRateLimit (default settings), hot key, c=%d", name, envoyLabel, c),
				known: b.throughput > 0, met: a.throughput >= 1.5*b.throughput,
				figure: fmt.Sprintf("%.0f/s (ratio %s)", a.throughput, ratio(a.throughput, b.throughput)),
				bound:  fmt.Sprintf(">= 1.5 × %.0f/s = %.0f/s", b.throughput, 1.5*b.throughput)})
			t.add(target{n: 22, what: fmt.Sprintf("%s: Redis CPU per call vs %s ShouldRateLimit (default settings), hot key, c=%d", name, envoyLabel, c),
				known: b.redis > 0, met: a.redis <= 0.7*b.redis,
				figure: fmt.Sprintf("%.1fµs (ratio %s)", a.redis, ratio(a.redis, b.redis)),
				bound:  fmt.Sprintf("<= 0.7 × %.1fµs = %.1fµs", b.redis, 0.7*b.redis)})
		}
	}
}
