package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/linearize"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// topology is a Redis deployment the sidecars under test run on: the URL
// and --redis-mode a user would configure.
type topology struct {
	url, mode string
}

// args are the sidecar flags for tp in namespace ns, then extra.
func (tp topology) args(ns string, extra ...string) []string {
	return append([]string{"--redis-mode", tp.mode, "--namespace", ns}, extra...)
}

// sidecars starts n sidecars on tp in namespace ns.
func (tp topology) sidecars(t *testing.T, n int, ns string, extra ...string) []*testharness.Sidecar {
	t.Helper()
	return startSidecars(t, n, tp.url, tp.args(ns, extra...)...)
}

// TestTopologyCluster re-runs each service's concurrency test on a
// 3-master Redis Cluster: every script's keys share one hash tag, and the
// lock and idempotency wake-ups use sharded pub/sub on the key's node.
func TestTopologyCluster(t *testing.T) {
	cl := testharness.StartCluster(t, 3)
	runTopologySuite(t, topology{url: cl.URL(), mode: "cluster"})
}

// TestTopologySentinel re-runs each service's concurrency test on a
// Sentinel deployment (master, replica, 3 sentinels), then kills the master
// and checks that the sidecar finds the promoted replica by itself.
func TestTopologySentinel(t *testing.T) {
	s := testharness.StartSentinel(t)
	tp := topology{url: s.URL(), mode: "sentinel"}
	runTopologySuite(t, tp)

	t.Run("FollowsFailoverAfterMasterKilled", func(t *testing.T) {
		sc := tp.sidecars(t, 1, "follow", "--store-timeout", "300ms", "--health-interval", "100ms")[0]
		hist := linearize.NewHistory()
		defer linearize.Check(t, lockModel, hist)
		c := recordLocks(hist, lockClient(t, sc))
		ctx := ctxT(t, time.Minute)
		before, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k", Ttl: durationpb.New(time.Minute)})
		if err != nil || !before.GetAcquired() {
			t.Fatalf("before: %v %v", before, err)
		}
		// The replica must have the grant before the master dies, or the
		// failover loses it (see TestSentinelFailoverUnderLoad).
		if err := s.WaitReplicasSynced(ctx); err != nil {
			t.Fatal(err)
		}
		old := s.Master(t)
		waitReplicasHave(t, ctx, old, s.Nodes())
		old.Kill()
		nm := s.WaitNewMaster(t, old.Addr())
		t.Logf("master %s killed; sentinels promoted %s", old.Addr(), nm.Addr())
		waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_SERVING, 20*time.Second)
		var after *v1.AcquireLockResponse
		testkit.EventuallyNil(t, 20*time.Second, "the sidecar follows the failover", func() (err error) {
			after, err = c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "other", Ttl: durationpb.New(time.Minute)})
			return err
		})
		if !after.GetAcquired() {
			t.Fatalf("after failover: %v", after)
		}
		// The replicated grant survived: the lock is still held.
		r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k"})
		if err != nil || r.GetAcquired() || r.GetHolder().GetFencingToken() != before.GetLease().GetFencingToken() {
			t.Fatalf("replicated grant after failover: %v %v; want held with token %d", r, err, before.GetLease().GetFencingToken())
		}
	})
}

// waitReplicasHave waits until every node of nodes other than master has
// applied master's replication stream up to where it is now: each replica
// then has every write the master made so far. A replication link that is
// up (WaitReplicasSynced) does not say that much: the link is asynchronous.
func waitReplicasHave(t *testing.T, ctx context.Context, master *testharness.Redis, nodes []*testharness.Redis) {
	t.Helper()
	info, err := master.Client(t).Info(ctx, "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	want, ok := infoInt(info, "master_repl_offset")
	if !ok {
		t.Fatalf("no master_repl_offset in the master's INFO replication: %q", info)
	}
	for _, r := range nodes {
		if r == master {
			continue
		}
		rc := r.Client(t)
		testkit.EventuallyNil(t, 20*time.Second, fmt.Sprintf("replica %s at the master's offset %d", r.Addr(), want), func() error {
			info, err := rc.Info(ctx, "replication").Result()
			if err != nil {
				return err
			}
			if got, ok := infoInt(info, "slave_repl_offset"); !ok || got < want {
				return fmt.Errorf("replica at %d (found %v)", got, ok)
			}
			return nil
		})
	}
}

// infoInt reads the integer field name of an INFO reply.
func infoInt(info, name string) (int64, bool) {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// runTopologySuite runs, on tp, the concurrency tests of the lock
// (mutual exclusion, fencing), idempotency (exactly once), clock (Lamport
// uniqueness) and breaker (shared half-open) services. Each subtest uses
// its own namespace.
func runTopologySuite(t *testing.T, tp topology) {
	t.Run("LockMutualExclusion", func(t *testing.T) {
		sidecars := tp.sidecars(t, 3, "lockx")
		const clientsPer, rounds = 18, 8 // as TestLockMutualExclusionAcrossSidecars
		r := runContention(t, sidecars, clientsPer, rounds, 30*time.Second, 0, 0)
		res := r.res
		if res.dupes != 0 || res.rejected != 0 || r.overlaps != 0 || r.releasesLost != 0 {
			t.Fatalf("exclusion violated: duplicate tokens %d, stale tokens %d, overlapping holders %d, lost releases %d",
				res.dupes, res.rejected, r.overlaps, r.releasesLost)
		}
		if want := 3 * clientsPer * rounds; res.value != want || res.accepted != want {
			t.Fatalf("counter = %d after %d accepted writes; want %d (lost updates)", res.value, res.accepted, want)
		}
	})

	t.Run("LockFencing", func(t *testing.T) {
		sidecars := tp.sidecars(t, 3, "lockf")
		r := runContention(t, sidecars, 10, 6, 150*time.Millisecond, 3, 450*time.Millisecond)
		res := r.res
		t.Logf("accepted %d, stale refused %d, releases that found the lease lost %d", res.accepted, res.rejected, r.releasesLost)
		if res.dupes != 0 {
			t.Fatalf("%d duplicate fencing tokens", res.dupes)
		}
		if res.value != res.accepted {
			t.Fatalf("counter %d != accepted writes %d: a stale write got through", res.value, res.accepted)
		}
		if res.rejected == 0 || r.releasesLost == 0 {
			t.Fatalf("no holder outlived its lease (refused %d, lost %d): the scenario did not happen", res.rejected, r.releasesLost)
		}
	})

	t.Run("IdempotencyExactlyOnce", func(t *testing.T) {
		runIdempotencyExactlyOnce(t, tp.sidecars(t, 3, "idem"))
	})

	t.Run("ClockLamportUnique", func(t *testing.T) {
		runLamportUnique(t, tp.sidecars(t, 3, "clock"), func() *testharness.Sidecar { return tp.sidecars(t, 1, "clock")[0] })
	})

	t.Run("BreakerSharedHalfOpen", func(t *testing.T) {
		cfg := brkConfig(t, "breakers:\n  fleet: {scope: shared, consecutive_failures: 3, open_duration: 1s, half_open_max_calls: 2}\n")
		runBreakerSharedHalfOpen(t, brkSidecars(t, 3, tp.url, cfg, tp.args("brk")...))
	})
}

// runIdempotencyExactlyOnce is TestIdempotencyExactlyOnceAcrossSidecars on
// the given sidecars: 120 concurrent duplicates of each of 3 keys, one of
// whose first execution fails; each operation runs exactly once and every
// caller ends with its result.
func runIdempotencyExactlyOnce(t *testing.T, sidecars []*testharness.Sidecar) {
	t.Helper()
	clients := make([]v1.IdempotencyServiceClient, len(sidecars))
	for i, s := range sidecars {
		clients[i] = idemClient(t, s)
	}
	ctx := ctxT(t, 3*time.Minute)
	const callers = 120
	keys := []string{"orders/1/charge", "orders/2/charge", "orders/3/flaky"}
	var book ledger
	var failedOnce sync.Once
	errFlaky := errors.New("upstream said 503")
	hist := linearize.NewHistory()
	type outcome struct {
		key, result string
		err         error
	}
	out := make(chan outcome, callers*len(keys))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, key := range keys {
		for i := range callers {
			wg.Go(func() {
				c := recordIdem(hist, clients[i%len(clients)])
				me := fmt.Sprintf("caller-%d", i)
				op := func(ctx context.Context) (resilience.Result, error) {
					time.Sleep(30 * time.Millisecond) // real time: the operation takes a while, so that duplicates overlap
					if strings.HasSuffix(key, "flaky") {
						failed := false
						failedOnce.Do(func() { failed = true })
						if failed {
							return resilience.Result{}, errFlaky
						}
					}
					book.append(key, me)
					return resilience.Result{Data: []byte(me)}, nil
				}
				<-start
				for {
					res, err := resilience.Idempotent(ctx, c, key, "fp:"+key, op, resilience.WithInProgressWait(2*time.Second))
					if errors.Is(err, errFlaky) {
						continue
					}
					out <- outcome{key: key, result: string(res.Data), err: err}
					return
				}
			})
		}
	}
	close(start)
	wg.Wait()
	close(out)
	linearize.Check(t, idemModel, hist)
	results := map[string]map[string]int{}
	for o := range out {
		if o.err != nil {
			t.Fatalf("%s: %v", o.key, o.err)
		}
		if results[o.key] == nil {
			results[o.key] = map[string]int{}
		}
		results[o.key][o.result]++
	}
	for _, key := range keys {
		execs := book.of(key)
		if len(execs) != 1 {
			t.Fatalf("%s executed %d times: %v", key, len(execs), execs)
		}
		if len(results[key]) != 1 || results[key][execs[0]] != callers {
			t.Fatalf("%s: callers ended with %v; want all %d with %q", key, results[key], callers, execs[0])
		}
	}
}

// runLamportUnique is TestClockLamportUniqueAcrossSidecars on the given
// sidecars: 64 callers mixing NextLamport and ObserveLamport get unique,
// per-caller increasing, non-overlapping values; after every sidecar is
// killed, a fresh one (from fresh) continues above them.
func runLamportUnique(t *testing.T, sidecars []*testharness.Sidecar, fresh func() *testharness.Sidecar) {
	t.Helper()
	ctx := ctxT(t, 3*time.Minute)
	const callers, ops = 64, 60
	counts := []uint32{1, 1, 2, 7, 100, 1000}
	hist := linearize.NewHistory()
	defer linearize.Check(t, lamportModel, hist)
	var seen atomic.Uint64
	blocks := make([][]lamportBlock, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			client := recordClock(hist, clockClient(t, sidecars[c%len(sidecars)]))
			rng := rand.New(rand.NewPCG(uint64(c), 2))
			var last uint64
			for range ops {
				var b lamportBlock
				if rng.IntN(3) < 2 {
					n := counts[rng.IntN(len(counts))]
					r, err := client.NextLamport(ctx, &v1.NextLamportRequest{Clock: "orders", Count: n})
					if err != nil || r.GetLast()-r.GetFirst()+1 != uint64(n) {
						t.Errorf("caller %d: NextLamport(%d) = %v, %v", c, n, r, err)
						return
					}
					b = lamportBlock{r.GetFirst(), r.GetLast(), c}
				} else {
					ts := last + uint64(rng.IntN(50))
					if rng.IntN(2) == 0 {
						ts = seen.Load()
					}
					r, err := client.ObserveLamport(ctx, &v1.ObserveLamportRequest{Clock: "orders", Timestamp: ts})
					if err != nil || r.GetTimestamp() <= ts {
						t.Errorf("caller %d: ObserveLamport(%d) = %v, %v", c, ts, r, err)
						return
					}
					b = lamportBlock{r.GetTimestamp(), r.GetTimestamp(), c}
				}
				if b.first <= last {
					t.Errorf("caller %d: %d..%d after %d: not strictly increasing", c, b.first, b.last, last)
					return
				}
				last = b.last
				for {
					s := seen.Load()
					if s >= last || seen.CompareAndSwap(s, last) {
						break
					}
				}
				blocks[c] = append(blocks[c], b)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	all := slices.Concat(blocks...)
	slices.SortFunc(all, func(a, b lamportBlock) int { return cmp.Compare(a.first, b.first) })
	for i := 1; i < len(all); i++ {
		if all[i].first <= all[i-1].last {
			t.Fatalf("blocks overlap: %d..%d (caller %d) and %d..%d (caller %d)",
				all[i-1].first, all[i-1].last, all[i-1].caller, all[i].first, all[i].last, all[i].caller)
		}
	}
	top := all[len(all)-1].last
	for _, s := range sidecars {
		s.Kill()
	}
	r, err := recordClock(hist, clockClient(t, fresh())).NextLamport(ctx, &v1.NextLamportRequest{Clock: "orders"})
	if err != nil || r.GetFirst() != top+1 {
		t.Fatalf("after every sidecar restarted: %v, %v; want %d", r, err, top+1)
	}
}

// runBreakerSharedHalfOpen is the core of TestBreakerSharedAcrossSidecars
// on the given sidecars (whose config declares the shared breaker "fleet":
// 3 consecutive failures, open 1s, 2 half-open probes): failures reported
// to one sidecar open it for all, and of 30 concurrent asks across the
// sidecars exactly 2 are admitted as probes.
func runBreakerSharedHalfOpen(t *testing.T, sc []v1.BreakerServiceClient) {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	for range 3 {
		brkFail(t, ctx, sc[0], "fleet")
	}
	for i, other := range sc[1:] {
		if r := brkAllow(t, ctx, other, "fleet"); r.GetAllowed() || r.GetState() != v1.BreakerState_BREAKER_STATE_OPEN {
			t.Fatalf("sidecar %d after 3 failures on sidecar 0: %v; want refused, open", i+1, r)
		}
	}
	brkWaitState(t, ctx, sc[len(sc)-1], "fleet", v1.BreakerState_BREAKER_STATE_HALF_OPEN)
	var admitted atomic.Int32
	var wg sync.WaitGroup
	for _, cl := range sc {
		for range 10 {
			wg.Go(func() {
				r, err := cl.AllowCall(ctx, &v1.AllowCallRequest{Breaker: "fleet"})
				if err != nil {
					t.Error(err)
					return
				}
				if r.GetAllowed() {
					admitted.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if n := admitted.Load(); n != 2 {
		t.Fatalf("%d probes admitted across %d sidecars, want half_open_max_calls = 2", n, len(sc))
	}
}

// TestClusterWaiterWokenAfterSlotMoved: a waiter subscribed (SSUBSCRIBE) on
// the node of its lock's slot, the slot moves to another master (Redis
// then drops the subscription with a sunsubscribe), and the holder
// releases: the waiter is still woken by the release, long before the
// holder's TTL would have let it in.
func TestClusterWaiterWokenAfterSlotMoved(t *testing.T) {
	cl := testharness.StartCluster(t, 3)
	tp := topology{url: cl.URL(), mode: "cluster"}
	sidecars := tp.sidecars(t, 2, "move")
	hist := linearize.NewHistory()
	defer linearize.Check(t, lockModel, hist)
	a, b := recordLocks(hist, lockClient(t, sidecars[0])), recordLocks(hist, lockClient(t, sidecars[1]))
	ctx := ctxT(t, time.Minute)
	const key = "moving-lock"
	held, err := a.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(time.Hour), Owner: "a"})
	if err != nil || !held.GetAcquired() {
		t.Fatalf("acquire: %v %v", held, err)
	}
	got := make(chan *v1.AcquireLockResponse, 1)
	go func() {
		r, err := b.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(time.Hour), WaitTimeout: durationpb.New(20 * time.Second), Owner: "b"})
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	rdb := cl.Client(t)
	ch := redisx.Key("move", redisx.Lock, key, "lock:released")
	waitSubscribed := func() {
		t.Helper()
		testkit.EventuallyNil(t, 20*time.Second, "the waiter subscribed to "+ch, func() error {
			n, err := rdb.PubSubShardNumSub(ctx, ch).Result()
			if err == nil && n[ch] == 0 {
				err = fmt.Errorf("subscribers %v", n)
			}
			return err
		})
	}
	waitSubscribed()
	slot := cl.KeySlot(t, ch)
	from := cl.Owner(t, slot)
	var to *testharness.Redis
	for _, m := range cl.Masters() {
		if m != from {
			to = m
			break
		}
	}
	if err := cl.MoveSlot(ctx, slot, to, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("slot %d moved from %s to %s", slot, from.Addr(), to.Addr())
	waitSubscribed() // on the new owner
	if _, err := a.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: held.GetLease().GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if !r.GetAcquired() {
		t.Fatalf("waiter not woken by the release after the slot moved: %v", r)
	}
}
