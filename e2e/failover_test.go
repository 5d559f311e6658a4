package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// The master serving a lock changes while the sidecars run: a planned
// switchover (SENTINEL FAILOVER, the old master staying up until the
// sentinels repoint it), the master killed, or CLUSTER FAILOVER. Waiting
// must follow the new master: its wake-ups (release subscriptions) and its
// queue state (issue 26, section 2).

// masterChange is one way the master serving the key "k" of namespace ns
// changes; setup starts the topology and returns what the test needs.
type masterChange struct {
	name  string
	setup func(t *testing.T) changeRig
}

type changeRig struct {
	tp topology
	// subscribed reports whether a release channel is subscribed on the
	// master serving the lock keys; after change, on the new one.
	subscribed func(ctx context.Context) bool
	// synced waits until the replicas of the master serving the lock keys
	// have every write it made so far.
	synced func(t *testing.T, ctx context.Context)
	// change changes the master and returns once the new one serves.
	change func(t *testing.T)
}

var masterChanges = []masterChange{
	{"SentinelSwitchover", sentinelRig(switchover)},
	{"SentinelMasterKilled", sentinelRig(killMaster)},
	{"ClusterFailover", clusterFailoverRig},
}

func switchover(t *testing.T, s *testharness.Sentinel) { s.Switchover(t) }

func killMaster(t *testing.T, s *testharness.Sentinel) {
	old := s.Master(t)
	old.Kill()
	s.WaitNewMaster(t, old.Addr())
}

// clusterFailoverRig is a 3-master Cluster with a replica per master; its
// change is CLUSTER FAILOVER of the master serving the lock keys.
func clusterFailoverRig(t *testing.T) changeRig {
	cl := testharness.StartCluster(t, 3, testharness.WithClusterReplicas(1))
	// The slot of the lock keys: the one whose master has the
	// subscription (every key of "k" shares one hash tag).
	var slot atomic.Int64
	slot.Store(-1)
	return changeRig{
		tp: topology{url: cl.URL(), mode: "cluster"},
		subscribed: func(ctx context.Context) bool {
			if slot.Load() >= 0 {
				return shardChannels(ctx, cl.Owner(t, int(slot.Load())).Client(t)) > 0
			}
			for _, m := range cl.Masters() {
				chans, err := m.Client(t).PubSubShardChannels(ctx, "*").Result()
				if err == nil && len(chans) > 0 {
					slot.Store(int64(cl.KeySlot(t, chans[0])))
					return true
				}
			}
			return false
		},
		synced: func(t *testing.T, ctx context.Context) {
			owner := cl.Owner(t, int(slot.Load()))
			waitReplicasHave(t, ctx, owner, cl.ReplicasOf(t, owner))
		},
		change: func(t *testing.T) { cl.Failover(t, int(slot.Load())) },
	}
}

// sentinelRig is a Sentinel deployment whose master change is change.
func sentinelRig(change func(t *testing.T, s *testharness.Sentinel), opts ...testharness.SentinelOption) func(t *testing.T) changeRig {
	return func(t *testing.T) changeRig {
		s := testharness.StartSentinel(t, opts...)
		return changeRig{
			tp:         topology{url: s.URL(), mode: "sentinel"},
			subscribed: func(ctx context.Context) bool { return shardChannels(ctx, s.Master(t).Client(t)) > 0 },
			synced:     func(t *testing.T, ctx context.Context) { waitReplicasHave(t, ctx, s.Master(t), s.Nodes()) },
			change:     func(t *testing.T) { change(t, s) },
		}
	}
}

func shardChannels(ctx context.Context, c *redis.Client) int {
	chans, err := c.PubSubShardChannels(ctx, "*").Result()
	if err != nil {
		return 0
	}
	return len(chans)
}

// TestWaiterFollowsMasterChange: a caller waiting for a lock when the
// master changes is woken by the holder's release on the new master, not
// by the holder's expiry: its wait (30 s) is shorter than the holder's
// TTL (1 min), so a wake-up left on the old master makes it time out.
func TestWaiterFollowsMasterChange(t *testing.T) {
	for _, mc := range masterChanges {
		t.Run(mc.name, func(t *testing.T) {
			rig := mc.setup(t)
			sc := rig.tp.sidecars(t, 1, "follow", "--store-timeout", "300ms")[0]
			c := lockClient(t, sc)
			ctx := ctxT(t, 2*time.Minute)
			held, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k", Ttl: durationpb.New(time.Minute)})
			if err != nil || !held.GetAcquired() {
				t.Fatalf("holder: %v %v", held, err)
			}
			type result struct {
				r   *v1.AcquireLockResponse
				err error
			}
			done := make(chan result, 1)
			go func() {
				r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "k", Ttl: durationpb.New(time.Minute),
					WaitTimeout: durationpb.New(30 * time.Second)})
				done <- result{r, err}
			}()
			testkit.Eventually(t, 30*time.Second, "the waiter's release subscription", func() bool { return rig.subscribed(ctx) })
			// The grant must be on the replicas, or the change may lose it.
			rig.synced(t, ctx)
			changeStart := time.Now()
			rig.change(t)
			t.Logf("the change took %v", time.Since(changeStart).Round(time.Millisecond))
			// The wake-ups follow: the release channel is subscribed on the
			// new master (left on the old one, the waiter would hear no
			// release and wake only at its own deadline).
			testkit.Eventually(t, 30*time.Second, "the release subscription on the new master", func() bool { return rig.subscribed(ctx) })
			// The store may still be failing over: STORE_UNAVAILABLE is
			// retried, any other error is a failure.
			testkit.EventuallyNil(t, time.Minute, "the holder's release after the change", func() error {
				_, err := c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "k", LeaseId: held.GetLease().GetLeaseId()})
				if code, reason := reasonOf(err); err != nil && reason != "STORE_UNAVAILABLE" {
					t.Fatalf("release after the change: %v %s %v", code, reason, err)
				}
				return err
			})
			released := time.Now()
			res := <-done
			t.Logf("the waiter's answer came %v after the release", time.Since(released).Round(time.Millisecond))
			if res.err != nil || !res.r.GetAcquired() {
				t.Fatalf("waiter after the change: %v %v; want it granted on the release", res.r, res.err)
			}
		})
	}
}

// TestGrantRateAfterMasterChange: 30 clients on 3 sidecars contend for 5
// locks (TTL 2 s, each grant released at once) while the master changes.
// Within 5 s of the first grant after the change, the grant rate is back
// to at least half its rate before (0.9-1.1 in quiet runs). It logs the
// time from the start of the change to the first grant and the longest
// time without one (docs/topologies.md).
func TestGrantRateAfterMasterChange(t *testing.T) {
	for _, mc := range masterChanges {
		t.Run(mc.name, func(t *testing.T) {
			rig := mc.setup(t)
			scs := rig.tp.sidecars(t, 3, "rate", "--store-timeout", "300ms")
			ctx := ctxT(t, 2*time.Minute)
			var (
				mu     sync.Mutex
				grants []time.Time
			)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for i := range 30 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := lockClient(t, scs[i%3])
					key := fmt.Sprintf("k%d", i%5)
					for {
						select {
						case <-stop:
							return
						default:
						}
						cctx, cancel := context.WithTimeout(ctx, 6*time.Second)
						r, err := c.AcquireLock(cctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(2 * time.Second),
							WaitTimeout: durationpb.New(5 * time.Second)})
						cancel()
						if err != nil {
							time.Sleep(20 * time.Millisecond) // real time: the store is failing over
							continue
						}
						if !r.GetAcquired() {
							continue
						}
						mu.Lock()
						grants = append(grants, time.Now())
						mu.Unlock()
						_, _ = c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: r.GetLease().GetLeaseId()})
					}
				}()
			}
			count := func(from, to time.Time) int {
				mu.Lock()
				defer mu.Unlock()
				n := 0
				for _, g := range grants {
					if !g.Before(from) && g.Before(to) {
						n++
					}
				}
				return n
			}
			const window = time.Second
			testkit.Eventually(t, 30*time.Second, "a release subscription", func() bool { return rig.subscribed(ctx) })
			time.Sleep(4 * window) // real time: the rate before the change is measured over it
			rig.synced(t, ctx)
			changeStart := time.Now()
			var before []int
			for w := changeStart.Add(-4 * window); w.Before(changeStart); w = w.Add(window) {
				before = append(before, count(w, w.Add(window)))
			}
			rig.change(t)
			changed := time.Now()
			var first time.Time
			testkit.Eventually(t, 30*time.Second, "a grant after the change", func() bool {
				mu.Lock()
				defer mu.Unlock()
				for _, g := range grants {
					if g.After(changed) && (first.IsZero() || g.Before(first)) {
						first = g
					}
				}
				return !first.IsZero()
			})
			time.Sleep(5*time.Second + window) // real time: the rate after the change is measured over it
			close(stop)
			wg.Wait()
			// The longest time without a grant around the change.
			mu.Lock()
			slices.SortFunc(grants, time.Time.Compare)
			var gap time.Duration
			for i := 1; i < len(grants); i++ {
				if grants[i].After(changeStart) && grants[i-1].Before(first) {
					gap = max(gap, grants[i].Sub(grants[i-1]))
				}
			}
			mu.Unlock()
			slices.Sort(before)
			pre := before[len(before)/2]
			best := 0
			for w := first; w.Add(window).Before(first.Add(5*time.Second + window)); w = w.Add(window / 4) {
				best = max(best, count(w, w.Add(window)))
			}
			t.Logf("%s: the change took %v; no grant for %v around it; first grant on the new master %v after its start; grants per %v: %d before (median of %v), at best %d within 5 s of that grant",
				mc.name, changed.Sub(changeStart).Round(time.Millisecond), gap.Round(time.Millisecond),
				first.Sub(changeStart).Round(time.Millisecond), window, pre, before, best)
			// Quiet runs read 0.9-1.1 (docs/topologies.md); wake-ups left on the
			// old master read under 0.01. The bound sits between, well clear of
			// the noise of a loaded machine, where 0.8 was seen to fail.
			if float64(best) < 0.5*float64(pre) {
				t.Fatalf("grant rate after the change: at best %d per %v within 5 s of the first grant, below 0.5 x %d before", best, window, pre)
			}
		})
	}
}
