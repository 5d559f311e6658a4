package e2e

import (
	"fmt"
	"strconv"
	"strings"
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

// Issue 16, section 2: waiting does not cost a Redis connection per key.
// Thousands of callers, each waiting on its own key through one sidecar,
// share a bounded number of Redis connections (one subscription
// connection per master for all their wake-ups), and each is granted its
// key when the holder releases it.
func TestWaitersOnDistinctKeysShareConnections(t *testing.T) {
	const waiters = 2000
	bin := testharness.BuildSidecar(t)
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) (args []string, masters []*redis.Client)
	}{
		{"redis", func(t *testing.T) ([]string, []*redis.Client) {
			rd := testharness.StartRedis(t)
			return []string{"--redis-url", rd.URL()}, []*redis.Client{rd.Client(t)}
		}},
		{"cluster", func(t *testing.T) ([]string, []*redis.Client) {
			cl := testharness.StartCluster(t, 3)
			var ms []*redis.Client
			for _, m := range cl.Masters() {
				ms = append(ms, m.Client(t))
			}
			return []string{"--redis-mode", "cluster", "--redis-url", cl.URL()}, ms
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, masters := tc.start(t)
			// What is measured is connections, not latency: 2 000
			// acquires arrive at once, and on a loaded machine a store call
			// may take longer than the default 1 s, which would refuse a
			// waiter UNAVAILABLE before it waits.
			sc := testharness.StartSidecar(t, bin, append(args, "--store-timeout", "10s")...)
			ctx := ctxT(t, 5*time.Minute)
			// Every connection to the masters but the test's own.
			sidecarConns := func() (conns, channels int) {
				for _, m := range masters {
					info, err := m.Info(ctx, "clients").Result()
					if err != nil {
						t.Fatal(err)
					}
					for _, line := range strings.Split(info, "\r\n") {
						if v, ok := strings.CutPrefix(line, "connected_clients:"); ok {
							n, _ := strconv.Atoi(v)
							conns += n - 1
						}
					}
					chs, err := m.PubSubShardChannels(ctx, "*").Result()
					if err != nil {
						t.Fatal(err)
					}
					channels += len(chs)
				}
				return conns, channels
			}
			c := lockClient(t, sc)
			conns := []v1.LockServiceClient{c}
			key := func(i int) string { return fmt.Sprintf("kw-%d", i) }
			leases := make([]string, waiters)
			for i := range waiters {
				r, err := conns[i%len(conns)].AcquireLock(ctx, &v1.AcquireLockRequest{Key: key(i), Ttl: durationpb.New(10 * time.Minute)})
				if err != nil || !r.GetAcquired() {
					t.Fatalf("holder %d: %v %v", i, r, err)
				}
				leases[i] = r.GetLease().GetLeaseId()
			}

			var granted atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, waiters)
			for i := range waiters {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := conns[i%len(conns)].AcquireLock(ctx, &v1.AcquireLockRequest{Key: key(i),
						Ttl: durationpb.New(time.Minute), WaitTimeout: durationpb.New(4 * time.Minute)})
					if err != nil || !r.GetAcquired() {
						errs <- fmt.Errorf("waiter %d: acquired %v, %v", i, r.GetAcquired(), err)
						return
					}
					granted.Add(1)
				}()
			}
			// All wait once each key's release channel is subscribed.
			maxConns := 0
			testkit.EventuallyNil(t, 3*time.Minute, "every release channel subscribed", func() error {
				n, channels := sidecarConns()
				maxConns = max(maxConns, n)
				if channels != waiters {
					return fmt.Errorf("%d of %d release channels subscribed", channels, waiters)
				}
				return nil
			})
			if maxConns > 32 {
				t.Fatalf("the sidecar used %d Redis connections for %d waiters on distinct keys, want at most 32", maxConns, waiters)
			}
			for i := range waiters {
				if _, err := conns[i%len(conns)].ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key(i), LeaseId: leases[i]}); err != nil {
					t.Fatalf("release %d: %v", i, err)
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if granted.Load() != waiters {
				t.Fatalf("%d of %d waiters granted", granted.Load(), waiters)
			}
			t.Logf("%d waiters on distinct keys: at most %d Redis connections from the sidecar, all granted after release", waiters, maxConns)
		})
	}
}
