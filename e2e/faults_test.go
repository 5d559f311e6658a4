package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/linearize"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// ---- The checker: what every client believed it held ----

// grant is one lock grant as its client lived it: from the moment the
// grant arrived until the client decided to release it (or the lease's
// expiry, if earlier). Two grants of one key whose intervals overlap are a
// lock granted twice: two clients in the critical section at once.
type grant struct {
	holder   string
	token    uint64
	from, to time.Time
}

// grantLog records grants per key, with a fenced resource per key.
type grantLog struct {
	mu       sync.Mutex
	grants   map[string][]grant
	counters map[string]*fencedCounter
}

func newGrantLog() *grantLog {
	return &grantLog{grants: map[string][]grant{}, counters: map[string]*fencedCounter{}}
}

func (g *grantLog) counter(key string) *fencedCounter {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.counters[key] == nil {
		g.counters[key] = &fencedCounter{}
	}
	return g.counters[key]
}

func (g *grantLog) add(key string, gr grant) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.grants[key] = append(g.grants[key], gr)
}

// starts returns when each grant began (its answer arrived).
func (g *grantLog) starts() []time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []time.Time
	for _, gs := range g.grants {
		for _, gr := range gs {
			out = append(out, gr.from)
		}
	}
	return out
}

// doubleGrants returns how many grants overlapped an earlier one of the
// same key, and a few examples.
func (g *grantLog) doubleGrants() (int, []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	var ex []string
	for key, gs := range g.grants {
		gs = slices.Clone(gs)
		sort.Slice(gs, func(i, j int) bool { return gs[i].from.Before(gs[j].from) })
		var latest grant // the earlier grant that ends last
		for i, gr := range gs {
			if i > 0 && gr.from.Before(latest.to) {
				n++
				if len(ex) < 5 {
					ex = append(ex, fmt.Sprintf("%s: %s (token %d) from %s while %s (token %d) held it until %s",
						key, gr.holder, gr.token, gr.from.Format("15:04:05.000"), latest.holder, latest.token, latest.to.Format("15:04:05.000")))
				}
			}
			if i == 0 || gr.to.After(latest.to) {
				latest = gr
			}
		}
	}
	return n, ex
}

// fencing sums the fenced counters: duplicate tokens, stale tokens
// refused, and whether every key's value equals its accepted writes.
func (g *grantLog) fencing() (dupes, rejected, accepted int, consistent bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	consistent = true
	for _, c := range g.counters {
		c.mu.Lock()
		dupes += c.dupes
		rejected += c.rejected
		accepted += c.accepted
		consistent = consistent && c.value == c.accepted
		c.mu.Unlock()
	}
	return dupes, rejected, accepted, consistent
}

// lockLoad counts what lock workers saw.
type lockLoad struct {
	log                            *grantLog
	grants, contended, unavailable atomic.Int64
	releasesLost, lostBeforeExpiry atomic.Int64
	mu                             sync.Mutex
	unexpected                     []error
}

func (l *lockLoad) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.unexpected) < 20 {
		l.unexpected = append(l.unexpected, err)
	}
}

func (l *lockLoad) String() string {
	return fmt.Sprintf("grants %d, contended %d, UNAVAILABLE %d, releases LEASE_LOST %d (before the lease's expiry: %d)",
		l.grants.Load(), l.contended.Load(), l.unavailable.Load(), l.releasesLost.Load(), l.lostBeforeExpiry.Load())
}

// lockWorker repeats acquire (with wait) -> fenced read-modify-write ->
// hold -> release -> a random pause below idle on key until stop is
// closed. UNAVAILABLE is expected in faults and retried; anything else
// unexpected is recorded.
func lockWorker(c v1.LockServiceClient, key, name string, ttl, wait, hold, idle time.Duration, l *lockLoad, stop <-chan struct{}) {
	res := l.log.counter(key)
	rng := rand.New(rand.NewPCG(uint64(len(name)), uint64(name[len(name)-1])))
	for i := 0; ; i++ {
		if idle > 0 && i > 0 {
			time.Sleep(time.Duration(rng.Int64N(int64(idle)))) // real time: the client's pause between rounds
		}
		select {
		case <-stop:
			return
		default:
		}
		holder := fmt.Sprintf("%s-r%d", name, i)
		ctx, cancel := context.WithTimeout(context.Background(), wait+10*time.Second)
		resp, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(ttl), WaitTimeout: durationpb.New(wait), Owner: holder})
		cancel()
		if code, _ := reasonOf(err); err != nil {
			if code == codes.Unavailable {
				l.unavailable.Add(1)
				time.Sleep(20 * time.Millisecond) // real time: back off while the store is unavailable
				continue
			}
			l.fail(fmt.Errorf("%s acquire: %w", holder, err))
			return
		}
		if !resp.GetAcquired() {
			l.contended.Add(1)
			continue
		}
		l.grants.Add(1)
		lease := resp.GetLease()
		from := time.Now()
		if v, err := res.read(holder, lease.GetFencingToken()); err == nil {
			time.Sleep(hold) // real time: simulated work under the lock
			_ = res.write(holder, lease.GetFencingToken(), v+1)
		}
		to := time.Now()
		exp := lease.GetExpireTime().AsTime()
		l.log.add(key, grant{holder: holder, token: lease.GetFencingToken(), from: from, to: minTime(to, exp)})
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		_, err = c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: lease.GetLeaseId()})
		cancel()
		returned := time.Now()
		switch code, reason := reasonOf(err); {
		case err == nil:
		case code == codes.FailedPrecondition && reason == "LEASE_LOST":
			l.releasesLost.Add(1)
			if returned.Before(exp) {
				// The store answered before the lease's expiry, and nobody
				// else can release it: the store forgot the grant.
				l.lostBeforeExpiry.Add(1)
			}
		case code == codes.Unavailable:
			l.unavailable.Add(1)
		default:
			l.fail(fmt.Errorf("%s release: %w", holder, err))
			return
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// ---- Resharding ----

// TestClusterReshardingUnderLoad moves the slots of the keys in use, back
// and forth between the masters of a 3-master cluster, while two sidecars
// serve locks, idempotency keys and a Lamport clock on them. The clients
// follow MOVED and ASK: no operation reports a success it did not get
// (fencing and grant intervals for locks, exactly once for idempotency,
// unique increasing values for the clock).
func TestClusterReshardingUnderLoad(t *testing.T) {
	cl := testharness.StartCluster(t, 3)
	tp := topology{url: cl.URL(), mode: "cluster"}
	const ns = "reshard"
	sidecars := tp.sidecars(t, 2, ns)
	lockKeys := []string{"acct/1", "acct/2", "acct/3", "acct/4"}
	slotOf := func(c redisx.Capability, key, suffix string) int {
		return redisx.Slot(redisx.Key(ns, c, key, suffix))
	}
	moving := map[int]bool{}
	for _, k := range lockKeys {
		moving[slotOf(redisx.Lock, k, "lock")] = true
	}
	clockSlot := slotOf(redisx.Clock, "reshard-clock", "lamport")
	moving[clockSlot] = true
	// Idempotency keys in the same slots as the lock keys, so that they
	// move too.
	idemKeys := keysInSlots("rs:{"+ns+"/"+string(redisx.Idempotency)+"/op-", "}:idem", moving, 2000)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	locks := &lockLoad{log: newGrantLog()}
	hist := newHistories()
	for i := range 12 {
		c := recordLocks(hist.locks, lockClient(t, sidecars[i%2]))
		key := lockKeys[i%len(lockKeys)]
		wg.Go(func() {
			lockWorker(c, key, fmt.Sprintf("w%d", i), 5*time.Second, 5*time.Second, 2*time.Millisecond, 0, locks, stop)
		})
	}

	// Idempotency: pairs of duplicates race on each key in turn.
	var book ledger
	var idemOps, idemUnavailable atomic.Int64
	var idemMu sync.Mutex
	var idemErrs []error
	results := map[string][]string{}
	var next atomic.Int64
	for p := range 4 {
		for d := range 2 {
			c := recordIdem(hist.idem, idemClient(t, sidecars[d]))
			wg.Go(func() {
				for i := p; ; i += 4 {
					select {
					case <-stop:
						return
					default:
					}
					if i >= len(idemKeys) {
						return
					}
					key := idemKeys[i]
					me := fmt.Sprintf("p%d-d%d", p, d)
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					res, err := resilience.Idempotent(ctx, c, key, "fp", func(context.Context) (resilience.Result, error) {
						time.Sleep(5 * time.Millisecond) // real time: simulated work, so that duplicates overlap
						book.append(key, me)
						return resilience.Result{Data: []byte(me)}, nil
					}, resilience.WithInProgressWait(5*time.Second), resilience.WithLeaseTTL(2*time.Second), resilience.WithUnavailableRetries(20))
					cancel()
					idemOps.Add(1)
					next.Add(1)
					idemMu.Lock()
					if err != nil {
						if code, _ := reasonOf(err); code == codes.Unavailable {
							idemUnavailable.Add(1)
						} else {
							idemErrs = append(idemErrs, fmt.Errorf("%s: %w", key, err))
						}
					} else {
						results[key] = append(results[key], string(res.Data))
					}
					idemMu.Unlock()
				}
			})
		}
	}

	// Clock: strictly increasing per caller, unique overall.
	var clockMu sync.Mutex
	var clockVals []uint64
	var clockErrs []error
	for i := range 4 {
		c := recordClock(hist.clocks, clockClient(t, sidecars[i%2]))
		wg.Go(func() {
			var last uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r, err := c.NextLamport(ctx, &v1.NextLamportRequest{Clock: "reshard-clock", Count: 3})
				cancel()
				clockMu.Lock()
				switch {
				case err != nil:
					if code, _ := reasonOf(err); code != codes.Unavailable {
						clockErrs = append(clockErrs, err)
					}
				case r.GetFirst() <= last:
					clockErrs = append(clockErrs, fmt.Errorf("caller %d: %d after %d", i, r.GetFirst(), last))
				default:
					last = r.GetLast()
					for v := r.GetFirst(); v <= r.GetLast(); v++ {
						clockVals = append(clockVals, v)
					}
				}
				clockMu.Unlock()
			}
		})
	}

	// The resharder: every slot in use goes to the next master, repeatedly,
	// with the migration held open 30ms each time (ASK window).
	ctx := ctxT(t, 2*time.Minute)
	masters := cl.Masters()
	slots := make([]int, 0, len(moving))
	for s := range moving {
		slots = append(slots, s)
	}
	slices.Sort(slots)
	moves := 0
	deadline := time.Now().Add(4 * time.Second)
	testkit.Eventually(t, 30*time.Second, "locks, idempotency and clock load under way before the first move", func() bool {
		clockMu.Lock()
		defer clockMu.Unlock()
		return locks.grants.Load() > 0 && idemOps.Load() > 0 && len(clockVals) > 0
	})
	for round := 0; time.Now().Before(deadline) || round < 2; round++ {
		for _, s := range slots {
			owner := cl.Owner(t, s)
			to := masters[(slices.Index(masters, owner)+1)%len(masters)]
			if err := cl.MoveSlot(ctx, s, to, 30*time.Millisecond); err != nil {
				t.Fatalf("move slot %d: %v", s, err)
			}
			moves++
		}
	}
	time.Sleep(300 * time.Millisecond) // real time: the load goes on after the last move
	close(stop)
	wg.Wait()
	hist.check(t)

	doubles, ex := locks.log.doubleGrants()
	dupes, rejected, accepted, consistent := locks.log.fencing()
	t.Logf("%d slot moves; locks: %v, double grants %d; idempotency: %d operations (%d UNAVAILABLE); clock: %d values",
		moves, locks, doubles, idemOps.Load(), idemUnavailable.Load(), len(clockVals))
	for _, err := range locks.unexpected {
		t.Error(err)
	}
	// Stale tokens refused are fencing doing its job (a holder stalled past
	// its TTL on a loaded machine); a duplicate token, a double grant or an
	// inconsistent counter is a lie.
	if doubles != 0 || dupes != 0 || !consistent || locks.lostBeforeExpiry.Load() != 0 {
		t.Fatalf("locks: %d double grants %v, %d duplicate and %d stale tokens, counters consistent %v, %d grants forgotten",
			doubles, ex, dupes, rejected, consistent, locks.lostBeforeExpiry.Load())
	}
	if locks.grants.Load() < 50 || accepted != int(locks.grants.Load()) {
		t.Fatalf("locks: %d grants, %d fenced writes accepted", locks.grants.Load(), accepted)
	}
	for _, err := range append(idemErrs, clockErrs...) {
		t.Error(err)
	}
	for key, got := range results {
		execs := book.of(key)
		if len(execs) != 1 {
			t.Errorf("%s executed %d times: %v", key, len(execs), execs)
			continue
		}
		for _, r := range got {
			if r != execs[0] {
				t.Errorf("%s: a caller got %q, the execution was %q", key, r, execs[0])
			}
		}
	}
	if len(results) < 20 {
		t.Errorf("only %d idempotency keys completed", len(results))
	}
	slices.Sort(clockVals)
	if len(slices.Compact(slices.Clone(clockVals))) != len(clockVals) {
		t.Error("a Lamport value was handed out twice")
	}
}

// keysInSlots returns the first n names "op-<i>" for which the store key
// prefix+"<i>"+suffix hashes to one of slots. It tries millions of
// candidates, so it is not instrumented by the race detector.
//
//go:norace
func keysInSlots(prefix, suffix string, slots map[int]bool, n int) []string {
	var out []string
	buf := []byte(prefix)
	for i := 0; len(out) < n; i++ {
		b := strconv.AppendInt(buf[:len(prefix)], int64(i), 10)
		b = append(b, suffix...)
		if slots[redisx.Slot(string(b))] {
			out = append(out, "op-"+strconv.Itoa(i))
		}
		buf = b
	}
	return out
}

// ---- Failover ----

// TestSentinelFailoverUnderLoad fails the master over (SENTINEL FAILOVER)
// while two sidecars grant locks, on a deployment whose replica lags by
// 50 ms (its replication goes through a delaying proxy). Without
// --redis-wait-replicas the failover may forget grants made just before it
// (Kleppmann's critique of Redis locks): the test reports how many, and how
// many clients held a lock at the same time, without asserting zero. With
// --redis-wait-replicas 1 a grant is only reported once the replica has
// it: no grant is forgotten and no lock is held twice.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	for _, wait := range []int{0, 1} {
		t.Run(fmt.Sprintf("WaitReplicas%d", wait), func(t *testing.T) {
			s := testharness.StartSentinel(t, testharness.WithReplicationProxy())
			s.ReplicationProxy().SetLatency(50 * time.Millisecond)
			tp := topology{url: s.URL(), mode: "sentinel"}
			extra := []string{"--store-timeout", "1s"}
			if wait > 0 {
				extra = append(extra, "--redis-wait-replicas", fmt.Sprint(wait), "--redis-wait-timeout", "500ms")
			}
			sidecars := tp.sidecars(t, 2, "failover", extra...)
			locks := &lockLoad{log: newGrantLog()}
			hist := linearize.NewHistory()
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for i := range 16 {
				c := recordLocks(hist, lockClient(t, sidecars[i%2]))
				key := fmt.Sprintf("res/%d", i%8)
				wg.Go(func() {
					lockWorker(c, key, fmt.Sprintf("w%d", i), 3*time.Second, 3*time.Second, 100*time.Millisecond, 300*time.Millisecond, locks, stop)
				})
			}
			time.Sleep(1500 * time.Millisecond) // real time: grants are made on the old master for 1.5 s before the failover
			before := locks.grants.Load()
			old := s.Master(t)
			nm := s.Failover(t)
			// Load goes on until both sidecars grant on the new master.
			for _, sc := range sidecars {
				c := lockClient(t, sc)
				testkit.EventuallyNil(t, 30*time.Second, fmt.Sprintf("sidecar %s grants after the failover", sc.Addr()), func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "probe-" + sc.Addr(), Ttl: durationpb.New(time.Second)})
					if err == nil && !r.GetAcquired() {
						err = fmt.Errorf("not acquired: %v", r)
					}
					return err
				})
			}
			time.Sleep(1500 * time.Millisecond) // real time: the load goes on for 1.5 s on the new master
			close(stop)
			wg.Wait()

			doubles, ex := locks.log.doubleGrants()
			dupes, _, _, consistent := locks.log.fencing()
			t.Logf("failover %s -> %s with --redis-wait-replicas %d: %v (%d before the failover); double grants by the checker: %d %v; grants forgotten by the failover: %d",
				old.Addr(), nm.Addr(), wait, locks, before, doubles, ex, locks.lostBeforeExpiry.Load())
			for _, err := range locks.unexpected {
				t.Error(err)
			}
			if dupes != 0 || !consistent {
				t.Errorf("fencing: %d duplicate tokens, counters consistent %v", dupes, consistent)
			}
			if wait > 0 && (doubles != 0 || locks.lostBeforeExpiry.Load() != 0) {
				t.Errorf("with --redis-wait-replicas %d: %d double grants, %d forgotten grants; want none", wait, doubles, locks.lostBeforeExpiry.Load())
			}
			if wait > 0 {
				linearize.Check(t, lockModel, hist)
			} else {
				// Grants forgotten by the failover are expected here:
				// reported (with the calls that show them), not asserted.
				t.Logf("linearize, not asserted without --redis-wait-replicas: lock history %s", linearize.Verify(lockModel, hist, linearize.DefaultTimeout))
			}
		})
	}
}

// ---- Redis paused, store latency, sidecar killed ----

// call is one RPC of a fault test: when it started, how long it took, and
// its gRPC code.
type call struct {
	op     string
	start  time.Time
	took   time.Duration
	code   codes.Code
	reason string
	ok     bool // a success that claims something (a grant, a start, a value)
}

type callLog struct {
	mu    sync.Mutex
	calls []call
	// hist, when set, records the lock, idempotency and Lamport calls
	// for the linearizability checks.
	hist *histories
}

func (l *callLog) add(c call) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, c)
}

func (l *callLog) snapshot() []call {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

// mixedOp runs one random operation of the lock, idempotency or clock
// service through conn with the given deadline and records it. Keys are
// drawn so that contention happens (acquired=false, IN_PROGRESS are fine).
func mixedOp(conn *grpc.ClientConn, rng *rand.Rand, worker, i int, ttl, deadline time.Duration, log *callLog) call {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	var err error
	var op string
	var claimed bool
	locks, idem, clk := v1.NewLockServiceClient(conn), v1.NewIdempotencyServiceClient(conn), v1.NewClockServiceClient(conn)
	if log != nil && log.hist != nil { // the worker is the history's client
		locks = &recordedLocks{LockServiceClient: locks, h: log.hist.locks, client: worker}
		idem = &recordedIdem{IdempotencyServiceClient: idem, h: log.hist.idem, client: worker}
		clk = &recordedClock{ClockServiceClient: clk, h: log.hist.clocks, client: worker}
	}
	switch n := rng.IntN(10); {
	case n < 4:
		op = "lock"
		key := fmt.Sprintf("k%d", rng.IntN(50))
		var r *v1.AcquireLockResponse
		r, err = locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(ttl)})
		if err == nil && r.GetAcquired() {
			claimed = true
			_, err = locks.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: r.GetLease().GetLeaseId()})
		}
	case n < 5:
		op = "lock-wait"
		key := fmt.Sprintf("w%d", rng.IntN(20))
		var r *v1.AcquireLockResponse
		r, err = locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(ttl), WaitTimeout: durationpb.New(200 * time.Millisecond)})
		if err == nil && r.GetAcquired() {
			claimed = true
			time.Sleep(time.Millisecond) // real time: simulated work under the lock
			_, err = locks.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: r.GetLease().GetLeaseId()})
		}
	case n < 7:
		op = "idempotency"
		key := fmt.Sprintf("op-%d-%d", worker, i)
		var r *v1.CheckOrRecordIdempotencyResponse
		r, err = idem.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: key, Fingerprint: "fp", LeaseTtl: durationpb.New(time.Second)})
		if err == nil && r.GetOutcome() == v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
			claimed = true
			_, err = idem.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: key, LeaseId: r.GetLeaseId(),
				Result: &v1.IdempotencyResult{Data: []byte("done")}})
		}
	case n < 9:
		op = "lamport"
		var r *v1.NextLamportResponse
		r, err = clk.NextLamport(ctx, &v1.NextLamportRequest{Clock: fmt.Sprintf("c%d", rng.IntN(5)), Count: 1})
		claimed = err == nil && r.GetFirst() > 0
	default:
		op = "read"
		_, err = locks.GetLock(ctx, &v1.GetLockRequest{Key: fmt.Sprintf("k%d", rng.IntN(50))})
		if err == nil {
			_, err = clk.NextUlid(ctx, &v1.NextUlidRequest{Count: 2})
		}
	}
	c := call{op: op, start: start, took: time.Since(start), code: codes.OK, ok: claimed}
	if err != nil {
		c.code, c.reason = reasonOf(err)
		c.ok = false
	}
	if log != nil {
		log.add(c)
	}
	return c
}

// sidecarFootprint reads the sidecar's goroutines, heap in use and
// resident memory from its /metrics.
type footprint struct{ goroutines, heapMiB, rssMiB float64 }

func sidecarFootprint(t *testing.T, metrics string) footprint {
	t.Helper()
	return footprint{
		goroutines: metricValue(t, metrics, "go_goroutines"),
		heapMiB:    metricValue(t, metrics, "go_memstats_heap_inuse_bytes") / (1 << 20),
		rssMiB:     metricValue(t, metrics, "process_resident_memory_bytes") / (1 << 20),
	}
}

func (f footprint) String() string {
	return fmt.Sprintf("%.0f goroutines, heap %.1f MiB, RSS %.1f MiB", f.goroutines, f.heapMiB, f.rssMiB)
}

// waitFootprint polls until the sidecar is back within the bounds of
// base (goroutines +slack, heap +heapSlack MiB) and returns what it saw.
// Between polls it makes a few hundred cheap calls through conn: an idle
// Go process does not collect garbage, so the heap in use only comes down
// once something allocates enough to start a GC cycle.
func waitFootprint(t *testing.T, metrics string, conn *grpc.ClientConn, base footprint, slack, heapSlack float64) footprint {
	t.Helper()
	clk := v1.NewClockServiceClient(conn)
	var f footprint
	testkit.EventuallyNil(t, 30*time.Second, fmt.Sprintf("sidecar back to its baseline (%v)", base), func() error {
		f = sidecarFootprint(t, metrics)
		if f.goroutines <= base.goroutines+slack && f.heapMiB <= base.heapMiB+heapSlack {
			return nil
		}
		for range 300 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, _ = clk.NextUlid(ctx, &v1.NextUlidRequest{Count: 100})
			cancel()
		}
		return fmt.Errorf("footprint %v", f)
	})
	return f
}

// dialN opens n connections to the sidecar, closed at the end of the test.
func dialN(t *testing.T, addr string, n int) []*grpc.ClientConn {
	t.Helper()
	out := make([]*grpc.ClientConn, n)
	for i := range out {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		out[i] = c
	}
	return out
}

// TestFaultRedisPausedUnderLoad freezes Redis (SIGSTOP) for 5 s while 40
// clients run mixed operations: every call made while it is frozen fails
// UNAVAILABLE/STORE_UNAVAILABLE within the store timeout (no call hangs
// past its deadline, none succeeds), every client succeeds again after
// SIGCONT, and the sidecar's goroutines and heap return to their baseline.
func TestFaultRedisPausedUnderLoad(t *testing.T) {
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	metrics := testharness.FreeAddr(t)
	const storeTimeout = 500 * time.Millisecond
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL(), "--metrics-listen", metrics,
		"--store-timeout", storeTimeout.String(), "--health-interval", "200ms")
	conns := dialN(t, sc.Addr(), 4)

	const workers, deadline = 40, 3 * time.Second
	run := func(stop <-chan struct{}, log *callLog, lastOK []atomic.Int64) {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), 7))
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					c := mixedOp(conns[w%len(conns)], rng, w, i, 10*time.Second, deadline, log)
					if c.code == codes.OK && lastOK != nil {
						lastOK[w].Store(time.Now().UnixNano())
					}
					if c.code != codes.OK {
						time.Sleep(10 * time.Millisecond) // real time: back off while Redis is frozen
					}
				}
			})
		}
		wg.Wait()
	}

	// Warm up, then measure the baseline at rest. Both phases are
	// recorded for the linearizability checks, which start from fresh keys.
	hist := newHistories()
	stop := make(chan struct{})
	time.AfterFunc(time.Second, func() { close(stop) })
	run(stop, &callLog{hist: &hist}, nil)
	time.Sleep(time.Second) // real time: the sidecar rests a second before its baseline is read
	base := sidecarFootprint(t, metrics)

	log := &callLog{hist: &hist}
	lastOK := make([]atomic.Int64, workers)
	stop = make(chan struct{})
	done := make(chan struct{})
	go func() { run(stop, log, lastOK); close(done) }()
	time.Sleep(time.Second) // real time: a second of load before Redis is frozen
	pausedAt := time.Now()
	rd.Pause()
	waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_NOT_SERVING, 5*time.Second)
	time.Sleep(5*time.Second - time.Since(pausedAt)) // real time: Redis stays frozen for 5 s
	during := sidecarFootprint(t, metrics)
	resumedAt := time.Now()
	rd.Resume()
	// Every client succeeds again.
	testkit.EventuallyNil(t, 20*time.Second, "every client succeeds again after SIGCONT", func() error {
		for w := range workers {
			if lastOK[w].Load() < resumedAt.UnixNano() {
				return fmt.Errorf("client %d has not succeeded since SIGCONT", w)
			}
		}
		return nil
	})
	allBack := time.Since(resumedAt)
	time.Sleep(500 * time.Millisecond) // real time: the load goes on for half a second after the recovery
	close(stop)
	<-done
	waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_SERVING, 10*time.Second)
	// Calls made while Redis was frozen have unknown outcomes: they may
	// have run when it woke up.
	hist.check(t)

	// Calls made entirely while Redis was frozen: UNAVAILABLE within the
	// store timeout (plus slack for a loaded machine), never a success.
	// No call at all outlived its deadline.
	const slack = 1500 * time.Millisecond // a loaded CI machine
	var frozen, slow, hung, falseOK, wrongReason int
	var maxFrozen time.Duration
	byCode := map[codes.Code]int{}
	calls := log.snapshot()
	for _, c := range calls {
		end := c.start.Add(c.took)
		if c.took > deadline+slack {
			hung++
		}
		if c.start.After(pausedAt.Add(10*time.Millisecond)) && end.Before(resumedAt) {
			frozen++
			byCode[c.code]++
			maxFrozen = max(maxFrozen, c.took)
			if c.code == codes.OK && c.ok {
				falseOK++
			}
			if c.took > storeTimeout+slack {
				slow++
			}
			if c.code == codes.Unavailable && c.reason != "STORE_UNAVAILABLE" {
				wrongReason++
			}
		}
	}
	after := waitFootprint(t, metrics, conns[0], base, 5, 16)
	t.Logf("%d calls; %d while Redis was frozen, by code %v, slowest %v (store timeout %v); all %d clients succeeded again %v after SIGCONT",
		len(calls), frozen, byCode, maxFrozen, storeTimeout, workers, allBack.Round(time.Millisecond))
	t.Logf("sidecar: baseline %v; frozen %v; after %v", base, during, after)
	if frozen == 0 {
		t.Fatal("no call was made while Redis was frozen")
	}
	if falseOK != 0 || hung != 0 || slow != 0 || wrongReason != 0 || byCode[codes.Unavailable] != frozen-byCode[codes.OK] {
		t.Fatalf("while frozen: %d successes that claimed something, %d calls past their deadline, %d slower than the store timeout, %d without STORE_UNAVAILABLE, codes %v",
			falseOK, hung, slow, wrongReason, byCode)
	}
}

// TestFaultStoreLatency puts a delaying TCP proxy between the sidecar and
// Redis: with latency well inside the store timeout every call succeeds;
// with latency beyond it calls fail UNAVAILABLE within the timeout (plus
// slack) and claim nothing; without latency they succeed again.
func TestFaultStoreLatency(t *testing.T) {
	rd := testharness.StartRedis(t)
	px := testharness.StartProxy(t, rd.Addr())
	bin := testharness.BuildSidecar(t)
	const storeTimeout = 300 * time.Millisecond
	sc := testharness.StartSidecar(t, bin, "--redis-url", "redis://"+px.Addr()+"/0", "--store-timeout", storeTimeout.String())
	conn := sc.Conn(t)
	phase := func(latency time.Duration, n int) map[codes.Code]int {
		px.SetLatency(latency)
		codesSeen := map[codes.Code]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), uint64(latency)))
				for i := range n {
					c := mixedOp(conn, rng, w, int(latency/time.Millisecond)*1000+i, 10*time.Second, 5*time.Second, nil)
					mu.Lock()
					codesSeen[c.code]++
					if c.code != codes.OK && c.took > storeTimeout+time.Second {
						t.Errorf("latency %v: %s failed after %v, store timeout %v", latency, c.op, c.took, storeTimeout)
					}
					if c.code != codes.OK && c.code != codes.Unavailable {
						t.Errorf("latency %v: %s: %v", latency, c.op, c.code)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return codesSeen
	}
	slow := phase(20*time.Millisecond, 10)
	cut := phase(time.Second, 3)
	px.SetLatency(0)
	waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING, 20*time.Second)
	back := phase(0, 10)
	t.Logf("codes with 20ms latency %v, with 1s %v, after %v", slow, cut, back)
	if slow[codes.OK] != 80 || cut[codes.OK] != 0 || back[codes.OK] != 80 {
		t.Fatalf("want all OK, none OK, all OK; got %v, %v, %v", slow, cut, back)
	}
}

// TestFaultSidecarKilledUnderLoad kills one of three sidecars while clients
// of all three contend for locks: the dead sidecar's clients fail, the
// locks it granted lapse at their TTL, the others carry on, and no lock is
// held twice.
func TestFaultSidecarKilledUnderLoad(t *testing.T) {
	rd := testharness.StartRedis(t)
	sidecars := startSidecars(t, 3, rd.URL(), "--namespace", "kill")
	locks := &lockLoad{log: newGrantLog()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var deadClientErrs atomic.Int64
	hist := linearize.NewHistory()
	for i := range 12 {
		sc := sidecars[i%3]
		c := recordLocks(hist, lockClient(t, sc))
		key := fmt.Sprintf("job/%d", i%3)
		if i%3 == 0 {
			// The victim's clients: stop at their first error.
			wg.Go(func() {
				l := &lockLoad{log: locks.log}
				lockWorker(c, key, fmt.Sprintf("victim%d", i), 700*time.Millisecond, 2*time.Second, 20*time.Millisecond, 0, l, stop)
				locks.grants.Add(l.grants.Load())
				deadClientErrs.Add(int64(len(l.unexpected)) + l.unavailable.Load())
			})
			continue
		}
		wg.Go(func() {
			lockWorker(c, key, fmt.Sprintf("w%d", i), 700*time.Millisecond, 2*time.Second, 2*time.Millisecond, 0, locks, stop)
		})
	}
	time.Sleep(time.Second) // real time: a second of load on all three sidecars before the kill
	before := locks.grants.Load()
	sidecars[0].Kill()
	time.Sleep(2 * time.Second) // real time: the survivors go on past the victims' 700 ms TTL, so their locks lapse
	close(stop)
	wg.Wait()
	// The victims' calls after the kill are of unknown outcome.
	linearize.Check(t, lockModel, hist)
	doubles, ex := locks.log.doubleGrants()
	dupes, rejected, _, consistent := locks.log.fencing()
	t.Logf("locks: %v (%d before the kill); victim clients saw %d errors; double grants %d", locks, before, deadClientErrs.Load(), doubles)
	for _, err := range locks.unexpected {
		t.Error(err)
	}
	if doubles != 0 || dupes != 0 || !consistent {
		t.Fatalf("%d double grants %v, %d duplicate and %d stale tokens, consistent %v", doubles, ex, dupes, rejected, consistent)
	}
	if locks.grants.Load() <= before {
		t.Fatal("no grant after the kill: the survivors stalled")
	}
}

// TestFaultWaitReplicasReplicaPaused runs a sidecar with
// --redis-wait-replicas 1, then all, on a master with one replica, and
// freezes the replica (still online to the master): grants, renewals,
// idempotency starts and completions, saga starts and completions fail
// UNAVAILABLE/REPLICATION_SHORTFALL instead of succeeding unreplicated; the
// grant and the start the master made anyway are given back at once (the
// TTLs are an hour), and a completion can be repeated once the replica is
// back.
func TestFaultWaitReplicasReplicaPaused(t *testing.T) {
	for _, wait := range []string{"1", "all"} {
		t.Run("wait-"+wait, func(t *testing.T) { runReplicaPaused(t, wait) })
	}
}

func runReplicaPaused(t *testing.T, wait string) {
	master := testharness.StartRedis(t, testharness.WithRedisArgs("--repl-diskless-sync-delay", "0"))
	host, port, _ := strings.Cut(master.Addr(), ":")
	replica := testharness.StartRedis(t, testharness.WithRedisArgs("--replicaof", host, port))
	ctx := ctxT(t, time.Minute)
	rc := replica.Client(t)
	testkit.EventuallyNil(t, 20*time.Second, "replica in sync", func() error {
		info, err := rc.Info(ctx, "replication").Result()
		if err == nil && !strings.Contains(info, "master_link_status:up") {
			err = fmt.Errorf("replication: %q", info)
		}
		return err
	})
	sc := startSidecars(t, 1, master.URL(), "--redis-wait-replicas", wait, "--redis-wait-timeout", "2s", "--store-timeout", "4s")[0]
	locks, idem, sagas := lockClient(t, sc), idemClient(t, sc), v1.NewSagaServiceClient(sc.Conn(t))
	unavailable := func(what string, err error) {
		t.Helper()
		if code, reason := reasonOf(err); code != codes.Unavailable || reason != "REPLICATION_SHORTFALL" {
			t.Fatalf("%s with the replica frozen: %v; want UNAVAILABLE/REPLICATION_SHORTFALL", what, err)
		}
	}

	held, err := locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "renewed", Ttl: durationpb.New(time.Hour)})
	if err != nil || !held.GetAcquired() {
		t.Fatalf("grant acknowledged by the replica: %v %v", held, err)
	}
	started, err := idem.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "completed", Fingerprint: "fp"})
	if err != nil || started.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED {
		t.Fatalf("start acknowledged by the replica: %v %v", started, err)
	}

	if _, err := sagas.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "completed", Name: "n", Timeout: durationpb.New(time.Hour)}); err != nil {
		t.Fatalf("saga start acknowledged by the replica: %v", err)
	}

	replica.Pause()
	r, err := locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k", Ttl: durationpb.New(time.Hour)})
	unavailable("grant", err)
	if r.GetAcquired() {
		t.Fatal("granted without the replica")
	}
	_, err = locks.RenewLock(ctx, &v1.RenewLockRequest{Key: "renewed", LeaseId: held.GetLease().GetLeaseId(), Ttl: durationpb.New(time.Hour)})
	unavailable("renewal", err)
	_, err = idem.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "new", Fingerprint: "fp", LeaseTtl: durationpb.New(time.Hour)})
	unavailable("start", err)
	_, err = idem.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "completed", LeaseId: started.GetLeaseId(),
		Result: &v1.IdempotencyResult{Data: []byte("ok")}})
	unavailable("completion", err)
	_, err = sagas.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "new", Name: "n", Timeout: durationpb.New(time.Hour)})
	unavailable("saga start", err)
	_, err = sagas.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: "completed"})
	unavailable("saga completion", err)
	// Reads do not wait.
	if _, err := locks.GetLock(ctx, &v1.GetLockRequest{Key: "k"}); err != nil {
		t.Fatalf("read with the replica frozen: %v", err)
	}
	replica.Resume()

	// The refused grant and start were given back: no hour-long wait.
	if r, err := locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k", Ttl: durationpb.New(time.Hour)}); err != nil || !r.GetAcquired() {
		t.Fatalf("lock after the refused grant: %v %v; want it free", r, err)
	}
	if r, err := idem.CheckOrRecordIdempotency(ctx, &v1.CheckOrRecordIdempotencyRequest{Key: "new", Fingerprint: "fp"}); err != nil ||
		r.GetOutcome() != v1.CheckOrRecordIdempotencyResponse_OUTCOME_STARTED || r.GetAttempt() != 1 {
		t.Fatalf("key after the refused start: %v %v; want STARTED, attempt 1", r, err)
	}
	if _, err := idem.CompleteIdempotency(ctx, &v1.CompleteIdempotencyRequest{Key: "completed", LeaseId: started.GetLeaseId(),
		Result: &v1.IdempotencyResult{Data: []byte("ok")}}); err != nil {
		t.Fatalf("repeated completion: %v", err)
	}
	if _, err := locks.RenewLock(ctx, &v1.RenewLockRequest{Key: "renewed", LeaseId: held.GetLease().GetLeaseId(), Ttl: durationpb.New(time.Hour)}); err != nil {
		t.Fatalf("renewal after the replica is back: %v", err)
	}
	// Saga writes are idempotent: sent again, they are confirmed.
	if _, err := sagas.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "new", Name: "n", Timeout: durationpb.New(time.Hour)}); err != nil {
		t.Fatalf("saga start sent again: %v", err)
	}
	if r, err := sagas.CompleteSaga(ctx, &v1.CompleteSagaRequest{SagaId: "completed"}); err != nil || r.GetSaga().GetState() != v1.SagaState_SAGA_STATE_COMPLETED {
		t.Fatalf("saga completion sent again: %v %v", r, err)
	}
}

// ---- Scale ----

// TestFaultThousandClients runs 1 000 concurrent clients (over 20
// connections) against one sidecar for 10 s of mixed load: lock try and
// wait, idempotency start and complete, Lamport clocks, reads. The only
// outcomes other than success are contention (acquired=false, the answer
// of a busy lock); afterwards the sidecar's goroutines and heap come back
// down. The figures are logged. Leases last a minute and the store timeout
// is 10 s: with 1 000 closed-loop clients in a race-instrumented process on
// a busy 2-core machine, one call can queue for seconds before the sidecar
// sees it, and an expired lease or a timed-out store call would then be
// the right answer, not a fault of the sidecar.
func TestFaultThousandClients(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s of load")
	}
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	metrics := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL(), "--metrics-listen", metrics,
		// The store timeout bounds one Redis call. On a shared 2-core CI
		// machine running other packages' tests beside this load, CPU
		// starvation alone has exceeded 3 s: that is the machine, not what
		// this test is about (Redis answers in well under a millisecond).
		"--store-timeout", "10s")
	conns := dialN(t, sc.Addr(), 20)
	for _, c := range conns { // connect before measuring
		if _, err := v1.NewClockServiceClient(c).NowHlc(ctxT(t, 10*time.Second), &v1.NowHlcRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // real time: the sidecar rests after the connections are made, before its baseline is read
	base := sidecarFootprint(t, metrics)

	const clients, duration = 1000, 10 * time.Second
	var ops, claims atomic.Int64
	var mu sync.Mutex
	errs := map[string]int{}
	peak := base
	stop := make(chan struct{})
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1000))
			<-start
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c := mixedOp(conns[w%len(conns)], rng, w, i, time.Minute, time.Minute, nil)
				ops.Add(1)
				if c.ok {
					claims.Add(1)
				}
				if c.code != codes.OK {
					mu.Lock()
					errs[c.op+":"+c.code.String()]++
					mu.Unlock()
				}
			}
		})
	}
	began := time.Now()
	close(start)
	sample := time.NewTicker(time.Second)
	for time.Since(began) < duration {
		<-sample.C
		f := sidecarFootprint(t, metrics)
		peak = footprint{max(peak.goroutines, f.goroutines), max(peak.heapMiB, f.heapMiB), max(peak.rssMiB, f.rssMiB)}
	}
	sample.Stop()
	close(stop)
	wg.Wait()
	elapsed := time.Since(began)
	after := waitFootprint(t, metrics, conns[0], base, 10, 16)
	t.Logf("%d clients, %v: %d operations (%.0f/s), %d that claimed something (a grant, a start, a value), errors %v",
		clients, elapsed.Round(time.Millisecond), ops.Load(), float64(ops.Load())/elapsed.Seconds(), claims.Load(), errs)
	t.Logf("sidecar: baseline %v; peak %v; after %v", base, peak, after)
	if len(errs) != 0 {
		t.Fatalf("errors other than contention: %v", errs)
	}
	if ops.Load() < clients {
		t.Fatalf("only %d operations", ops.Load())
	}
}
