package main

import (
	"context"
	"math/bits"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The lean load generator: conc workers, each calling its own op in a loop
// (one op is one RPC or one store call), over whatever connections the op
// closes over. A call's latency goes into the worker's own histogram (no
// allocation, no sharing); counting and CPU accounting cover the same
// measuring window, which starts after a warm-up.

// histBuckets covers 0 to ~2^40 ns (18 minutes) with 32 sub-buckets per
// power of two: at most ~3% error, like an HDR histogram with 1.5
// significant digits.
const histBuckets = 41*32 + 64

type hist [histBuckets]uint64

func histIndex(ns uint64) int {
	if ns < 64 {
		return int(ns)
	}
	e := bits.Len64(ns) - 6 // ns>>e is in [32, 64)
	i := e*32 + int(ns>>e)
	return min(i, histBuckets-1)
}

// histValue is the middle of bucket i, in ns.
func histValue(i int) uint64 {
	if i < 64 {
		return uint64(i)
	}
	e := i/32 - 1
	m := uint64(i - e*32)
	return m<<e + (uint64(1)<<e)/2
}

func (h *hist) add(d time.Duration) { h[histIndex(uint64(max(d, 0)))]++ }

func (h *hist) merge(o *hist) {
	for i, n := range o {
		h[i] += n
	}
}

// quantile returns the q-quantile (0..1) of the recorded values.
func (h *hist) quantile(q float64) time.Duration {
	var total uint64
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := uint64(q * float64(total-1))
	var seen uint64
	for i, n := range h {
		seen += n
		if seen > rank {
			return time.Duration(histValue(i))
		}
	}
	return 0
}

// worker is one load worker's state, padded so that workers do not share
// cache lines.
type worker struct {
	ops, errs int64
	firstErr  error
	h         hist
	_         [64]byte
}

// loadSpec is one cell: conc workers, each built by newOp.
type loadSpec struct {
	conc   int
	warm   time.Duration // before the window; connections, caches, JIT of the pools
	window time.Duration
	// newOp returns worker w's op; it is called before the load starts.
	newOp func(w int) func(ctx context.Context) error
	// procs are accounted over the window.
	procs []cpuSource
}

// loadResult is what one cell measured over its window.
type loadResult struct {
	conc       int
	ops, errs  int64
	firstErr   error
	elapsed    time.Duration
	throughput float64 // ops per second
	p50, p99   time.Duration
	// cpu is each process's CPU time per op over the window (by name), in µs.
	cpu map[string]float64
	// cpuUtil is each process's CPU use over the window, in cores.
	cpuUtil map[string]float64
}

// runLoad runs one cell.
func runLoad(ctx context.Context, s loadSpec) loadResult {
	ws := make([]*worker, s.conc)
	ops := make([]func(context.Context) error, s.conc)
	for w := range s.conc {
		ws[w] = &worker{}
		ops[w] = s.newOp(w)
	}
	var recording, stop atomic.Bool
	var wg sync.WaitGroup
	for w := range s.conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, op := ws[w], ops[w]
			for !stop.Load() {
				t0 := time.Now()
				err := op(ctx)
				d := time.Since(t0)
				if !recording.Load() {
					continue
				}
				st.ops++
				st.h.add(d)
				if err != nil {
					if st.errs == 0 {
						st.firstErr = err
					}
					st.errs++
				}
			}
		}()
	}
	time.Sleep(s.warm)
	before := snapshotCPU(s.procs)
	t0 := time.Now()
	recording.Store(true)
	time.Sleep(s.window)
	recording.Store(false)
	elapsed := time.Since(t0)
	after := snapshotCPU(s.procs)
	stop.Store(true)
	wg.Wait()

	r := loadResult{conc: s.conc, elapsed: elapsed, cpu: map[string]float64{}, cpuUtil: map[string]float64{}}
	var h hist
	for _, st := range ws {
		r.ops += st.ops
		r.errs += st.errs
		if r.firstErr == nil {
			r.firstErr = st.firstErr
		}
		h.merge(&st.h)
	}
	r.p50, r.p99 = h.quantile(0.50), h.quantile(0.99)
	r.throughput = float64(r.ops) / elapsed.Seconds()
	for i, p := range s.procs {
		used := after[i] - before[i]
		if before[i] < 0 || after[i] < 0 {
			continue
		}
		r.cpuUtil[p.name] = used.Seconds() / elapsed.Seconds()
		if r.ops > 0 {
			r.cpu[p.name] = float64(used.Microseconds()) / float64(r.ops)
		}
	}
	return r
}

// cpuSource reads one process's cumulative CPU time (user+system).
type cpuSource struct {
	name string
	read func() time.Duration // < 0 when unreadable
}

func snapshotCPU(ps []cpuSource) []time.Duration {
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		out[i] = p.read()
	}
	return out
}

// selfCPU is this process's CPU time (the load generator's), from getrusage.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
