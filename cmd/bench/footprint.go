package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// Footprint targets: start time and idle RSS (6, 7), many HoldLock
// sessions (6), Redis memory per record and commands per release under
// contention (8).

// startSidecarTimed spawns bin with args on a fresh port and returns the
// time from exec to the first SERVING health answer (polled every 0.5 ms),
// and the process (killed by the caller).
func startSidecarTimed(bin string, args ...string) (time.Duration, *exec.Cmd, string, error) {
	addr, err := freeLoopback()
	if err != nil {
		return 0, nil, "", err
	}
	cmd := exec.Command(bin, append([]string{"--listen", addr}, args...)...)
	cmd.Stdout, cmd.Stderr = nil, nil
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, nil, "", err
	}
	deadline := t0.Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		time.Sleep(500 * time.Microsecond)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 0, nil, "", err
	}
	defer conn.Close()
	h := healthpb.NewHealthClient(conn)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return time.Since(t0), cmd, addr, nil
		}
		time.Sleep(500 * time.Microsecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return 0, nil, "", fmt.Errorf("not SERVING within 20s")
}

func freeLoopback() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// runStartup: start-to-SERVING (median of rounds) and idle RSS after a
// few calls, on the embedded store and on Redis; metrics served, as by
// default.
func (t *targetRun) runStartup() {
	type stores struct {
		name string
		args []string
	}
	var rows [][]string
	for _, s := range []stores{{"embedded store", nil}, {"Redis", []string{"--redis-url", t.env.RedisURL}}} {
		var times []time.Duration
		var rss, rssAfter int64 = -1, -1
		var anon, file int64 = -1, -1
		for round := range t.opts.startRounds {
			maddr, _ := freeLoopback()
			d, cmd, addr, err := startSidecarTimed(t.env.Bin, append([]string{"--metrics-listen", maddr}, s.args...)...)
			if err != nil {
				fmt.Fprintf(os.Stderr, "  start on %s: %v\n", s.name, err)
				continue
			}
			times = append(times, d)
			if round == 0 {
				time.Sleep(500 * time.Millisecond)
				rss = rssBytes(cmd.Process.Pid)
				// A few calls of each kind, then idle again.
				conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err == nil {
					lc, cc := v1.NewLockServiceClient(conn), v1.NewClockServiceClient(conn)
					op := lockOp(lc, "idle-rss")
					for range 200 {
						_ = op(context.Background())
						_, _ = cc.NextUlid(context.Background(), &v1.NextUlidRequest{Count: 10})
					}
					if resp, err := http.Get("http://" + maddr + "/metrics"); err == nil {
						resp.Body.Close()
					}
					conn.Close()
				}
				time.Sleep(time.Second)
				rssAfter = rssBytes(cmd.Process.Pid)
				anon, file = procStatus(cmd.Process.Pid, "RssAnon"), procStatus(cmd.Process.Pid, "RssFile")
			}
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if len(times) == 0 {
			continue
		}
		slices.Sort(times)
		med := times[len(times)/2]
		rows = append(rows, []string{s.name, ms(med), ms(times[0]), ms(times[len(times)-1]), mb(rss), mb(rssAfter), mb(anon), mb(file)})
		t.add(target{n: 7, what: "start to SERVING on the " + s.name, known: true, met: med <= 150*time.Millisecond,
			figure: fmt.Sprintf("%s (median of %d; min %s)", ms(med), len(times), ms(times[0])), bound: "150ms"})
		worst := max(rss, rssAfter)
		t.add(target{n: 6, what: "idle RSS on the " + s.name, known: worst > 0, met: worst <= 25<<20,
			figure: fmt.Sprintf("%s after start, %s after 400 calls", mb(rss), mb(rssAfter)), bound: "25MB"})
	}
	fmt.Fprintln(t.out, "\n== start to SERVING and idle RSS (fresh process; metrics endpoint on) ==")
	tw := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store\tstart median\tmin\tmax\tidle RSS\tRSS after 400 calls\tof which anon\tfile (binary pages)\t")
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	tw.Flush()
}

// runSessions opens opts.sessions HoldLock sessions over a few
// connections to a fresh sidecar on Redis, holds them for three TTLs and
// reports RSS, goroutines per session and whether every renewal came in
// time (target 6).
func (t *targetRun) runSessions() {
	n, ttl := t.opts.sessions, t.opts.sessionTTL
	tb := t.env.TB.(*benchTB)
	maddr := testharness.FreeAddr(tb)
	sc := testharness.StartSidecar(tb, t.env.Bin, "--redis-url", t.env.RedisURL, "--metrics-listen", maddr)
	conns := dialN(tb, sc.Addr(), t.opts.conns)
	// Settle, then the baseline.
	warm := lockOp(v1.NewLockServiceClient(conns[0]), "sessions-warm")
	_ = warm(context.Background())
	_ = warm(context.Background())
	time.Sleep(500 * time.Millisecond)
	g0, rss0 := goroutines(maddr), rssBytes(sc.PID())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type session struct {
		lastAlive atomic.Int64 // unix ns of the last acquired/renewed event
		maxGap    atomic.Int64
		renewals  atomic.Int64
	}
	sessions := make([]session, n)
	var opened, lost, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	run := t.seq.Add(1)
	cpu0 := procCPU(sc.PID())
	t0 := time.Now()
	runParallel(n, 256, func(i int) {
		c := v1.NewLockServiceClient(conns[i%len(conns)])
		st, err := c.HoldLock(ctx)
		if err == nil {
			err = st.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: &v1.HoldLockRequest_Acquire{
				Key: fmt.Sprintf("sess-%d-%d", run, i), Ttl: durationpb.New(ttl), Owner: "bench", MaxHold: durationpb.New(time.Hour)}}})
		}
		var r *v1.HoldLockResponse
		if err == nil {
			r, err = st.Recv()
		}
		if err == nil && r.GetAcquired() == nil {
			err = fmt.Errorf("first event %v", r)
		}
		if err != nil {
			if failed.Add(1) == 1 {
				firstErr.Store(err)
			}
			return
		}
		s := &sessions[i]
		s.lastAlive.Store(time.Now().UnixNano())
		opened.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				r, err := st.Recv()
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				switch {
				case r.GetRenewed() != nil:
					gap := now - s.lastAlive.Swap(now)
					if gap > s.maxGap.Load() {
						s.maxGap.Store(gap)
					}
					s.renewals.Add(1)
				case r.GetLost() != nil:
					lost.Add(1)
					return
				}
			}
		}()
	})
	openTime := time.Since(t0)
	hold := 3 * ttl
	time.Sleep(hold / 2)
	rss1, g1 := rssBytes(sc.PID()), goroutines(maddr)
	time.Sleep(hold - hold/2)
	cpu1 := procCPU(sc.PID())
	holdEnd := time.Now()
	var maxGap time.Duration
	var renewals int64
	for i := range sessions {
		s := &sessions[i]
		if s.lastAlive.Load() == 0 {
			continue
		}
		gap := max(time.Duration(s.maxGap.Load()), holdEnd.Sub(time.Unix(0, s.lastAlive.Load())))
		maxGap = max(maxGap, gap)
		renewals += s.renewals.Load()
	}
	cancel()
	wg.Wait()
	// The rest of the run should not share the cores with this sidecar.
	for _, c := range conns {
		c.Close()
	}
	sc.Kill()

	perSession := float64(g1-g0) / float64(max(opened.Load(), 1))
	fmt.Fprintf(t.out, "\n== %d HoldLock sessions (TTL %v, held %v) on a fresh sidecar on Redis, %d connections ==\n", n, ttl, hold, t.opts.conns)
	fmt.Fprintf(t.out, "opened %d in %s (%d failed%s); lost %d; renewals %d; longest time without acquire/renew event %s (TTL %v)\n",
		opened.Load(), ms(openTime), failed.Load(), errSuffix(firstErr.Load()), lost.Load(), renewals, ms(maxGap), ttl)
	fmt.Fprintf(t.out, "RSS %s -> %s; goroutines %d -> %d (%.2f per session); sidecar CPU %.2f cores over the open+hold\n",
		mb(rss0), mb(rss1), g0, g1, perSession, (cpu1-cpu0).Seconds()/time.Since(t0).Seconds())
	ok := opened.Load() == int64(n) && lost.Load() == 0 && maxGap < ttl
	t.add(target{n: 6, what: fmt.Sprintf("%d HoldLock sessions: RSS, renewals on time", n), known: rss1 > 0, met: ok && rss1 <= 200<<20,
		figure: fmt.Sprintf("%s RSS, %d/%d open, %d lost, longest gap %s (TTL %v)", mb(rss1), opened.Load(), n, lost.Load(), ms(maxGap), ttl), bound: "200MB, none lost, gap < TTL"})
	t.add(target{n: 6, what: "goroutines per HoldLock session", known: g1 > 0, met: perSession <= 2,
		figure: fmt.Sprintf("%.2f", perSession), bound: "2"})
}

func errSuffix(v any) string {
	if e, ok := v.(error); ok {
		return ", first: " + trunc(e.Error(), 80)
	}
	return ""
}

// goroutines reads go_goroutines from the sidecar's /metrics.
func goroutines(metricsAddr string) int {
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int(f)
		}
	}
	return -1
}

// runMemory: MEMORY USAGE of the keys one lock and one completed
// idempotency record leave in Redis (target 8).
func (t *targetRun) runMemory() {
	ctx := context.Background()
	rdb := t.env.Redis
	conn := t.env.OnRedis
	run := t.seq.Add(1)
	const n = 100
	usage := func(pattern string) (bytes int64, keys int) {
		iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			b, err := rdb.MemoryUsage(ctx, iter.Val(), 0).Result()
			if err == nil {
				bytes += b
				keys++
			}
		}
		return bytes, keys
	}
	lc := v1.NewLockServiceClient(conn)
	var leases []string
	for i := range n {
		r, err := lc.AcquireLock(ctx, &v1.AcquireLockRequest{Key: fmt.Sprintf("memlock-%d-%d", run, i), Ttl: durationpb.New(time.Hour), Owner: "bench-owner"})
		if err != nil || !r.GetAcquired() {
			fmt.Fprintf(os.Stderr, "  memory: acquire: %v\n", err)
			return
		}
		leases = append(leases, r.GetLease().GetLeaseId())
	}
	held, heldKeys := usage(fmt.Sprintf("*memlock-%d-*", run))
	for i, l := range leases {
		_, _ = lc.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: fmt.Sprintf("memlock-%d-%d", run, i), LeaseId: l})
	}
	released, releasedKeys := usage(fmt.Sprintf("*memlock-%d-*", run))

	ic := v1.NewIdempotencyServiceClient(conn)
	result := &v1.IdempotencyResult{Data: make([]byte, 64), Metadata: map[string]string{"status": "201"}}
	for i := range n {
		key := fmt.Sprintf("memidem-%d-%d", run, i)
		r, err := ic.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "sha256:bench", Retention: durationpb.New(time.Hour)})
		if err == nil {
			_, err = ic.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: key, LeaseId: r.GetLeaseId(), Result: result})
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "  memory: idempotency: %v\n", err)
			return
		}
	}
	idem, idemKeys := usage(fmt.Sprintf("*memidem-%d-*", run))
	fmt.Fprintln(t.out, "\n== Redis memory (MEMORY USAGE, summed over the keys of each record; 100 records) ==")
	fmt.Fprintf(t.out, "held lock (idle): %d B per lock in %.1f keys\n", held/n, float64(heldKeys)/n)
	fmt.Fprintf(t.out, "released lock (fencing counter left): %d B per lock in %.1f keys\n", released/n, float64(releasedKeys)/n)
	fmt.Fprintf(t.out, "completed idempotency record (64 B result, 1 metadata pair): %d B in %.1f keys\n", idem/n, float64(idemKeys)/n)
	t.add(target{n: 8, what: "Redis memory per idle lock / completed idempotency record", known: held > 0 && idem > 0, met: true,
		figure: fmt.Sprintf("%d B / %d B", held/n, idem/n), bound: "reported"})
}

// runWaiters: opts.waiters clients wait on one key while the lock passes
// from one to the next (each releases as soon as it has it and queues
// again); Redis commands per release from INFO commandstats (target 8).
func (t *targetRun) runWaiters() {
	tb := t.env.TB.(*benchTB)
	conns := dialN(tb, t.env.OnRedisSidecar.Addr(), t.opts.conns)
	run := t.seq.Add(1)
	key := fmt.Sprintf("waiters-%d", run)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	holder := v1.NewLockServiceClient(conns[0])
	first, err := holder.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(30 * time.Second)})
	if err != nil || !first.GetAcquired() {
		fmt.Fprintf(os.Stderr, "  waiters: first acquire: %v\n", err)
		return
	}
	var measuring atomic.Bool
	var releases, errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for i := range t.opts.waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := v1.NewLockServiceClient(conns[i%len(conns)])
			req := &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(30 * time.Second), WaitTimeout: durationpb.New(time.Minute)}
			for ctx.Err() == nil {
				r, err := c.AcquireLock(ctx, req)
				if err != nil || !r.GetAcquired() {
					if ctx.Err() == nil {
						if errs.Add(1) == 1 {
							firstErr.Store(fmt.Errorf("acquire: %v (acquired %v)", err, r.GetAcquired()))
						}
						time.Sleep(10 * time.Millisecond)
					}
					continue
				}
				_, err = c.ReleaseLock(context.Background(), &v1.ReleaseLockRequest{Key: key, LeaseId: r.GetLease().GetLeaseId()})
				if err == nil && measuring.Load() {
					releases.Add(1)
				}
			}
		}()
	}
	time.Sleep(2 * time.Second) // everyone waiting
	_, _ = holder.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: first.GetLease().GetLeaseId()})
	time.Sleep(time.Second) // the hand-over is running
	before := redisCommandStats(ctx, t.env.Redis)
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(t.opts.window)
	measuring.Store(false)
	elapsed := time.Since(t0)
	after := redisCommandStats(ctx, t.env.Redis)
	cancel()
	wg.Wait()

	var total int64
	type kv struct {
		name string
		n    int64
	}
	var per []kv
	for name, st := range after {
		d := st.calls - before[name].calls
		if name == "info" || d <= 0 {
			continue
		}
		total += d
		per = append(per, kv{name, d})
	}
	slices.SortFunc(per, func(a, b kv) int { return int(b.n - a.n) })
	rel := releases.Load()
	fmt.Fprintf(t.out, "\n== %d waiters on one key (each releases at once and queues again), %v window ==\n", t.opts.waiters, t.opts.window)
	if rel == 0 {
		fmt.Fprintf(t.out, "no release completed in the window (%d errors%s)\n", errs.Load(), errSuffix(firstErr.Load()))
		t.add(target{n: 8, what: "Redis commands per release with 1000 waiters", figure: "no release in the window"})
		return
	}
	var parts []string
	for _, p := range per {
		parts = append(parts, fmt.Sprintf("%s %.1f", p.name, float64(p.n)/float64(rel)))
	}
	fmt.Fprintf(t.out, "%d hand-overs (%.0f/s), %d errors%s; Redis commands per release (acquire included): %.1f = %s\n",
		rel, float64(rel)/elapsed.Seconds(), errs.Load(), errSuffix(firstErr.Load()), float64(total)/float64(rel), strings.Join(parts, ", "))
	t.add(target{n: 8, what: fmt.Sprintf("Redis commands per release with %d waiters", t.opts.waiters), known: true, met: true,
		figure: fmt.Sprintf("%.1f (%.0f hand-overs/s)", float64(total)/float64(rel), float64(rel)/elapsed.Seconds()), bound: "reported"})
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.0fms", float64(d)/1e6)
}

func mb(b int64) string {
	if b < 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fMB", float64(b)/(1<<20))
}
