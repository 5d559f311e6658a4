package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// keyWaiterRate is how many waiters arrive per second.
const keyWaiterRate = 2000

// keyWaitTimeout is the waiters' wait_timeout.
const keyWaitTimeout = 5 * time.Minute

// runKeyWaiters measures waiting on many distinct keys at once (issue 16,
// section 2): on a fresh Redis (or 3-master Cluster) and a fresh sidecar,
// n keys are held, one caller waits on each, and then every holder
// releases. It reports the Redis connections of the sidecar while all
// wait, the sidecar's memory per waiter, and how many waiters were
// granted.
func (t *targetRun) runKeyWaiters(cluster bool) {
	n := t.opts.keyWaiters
	tb := t.env.TB.(*benchTB)
	var (
		url   string
		args  []string
		nodes []*redis.Client
		label = "Redis"
	)
	if cluster {
		cl := testharness.StartCluster(tb, 3)
		url, label = cl.URL(), "3-master Cluster"
		args = []string{"--redis-mode", "cluster"}
		for _, m := range cl.Masters() {
			nodes = append(nodes, m.Client(tb))
		}
	} else {
		rd := testharness.StartRedis(tb, testharness.WithRedisArgs("--maxclients", "20000"))
		url = rd.URL()
		nodes = []*redis.Client{rd.Client(tb)}
	}
	// Clients of the sidecar: every connection but the ones counting.
	sidecarClients := func() int {
		total := 0
		for _, c := range nodes {
			v, _ := strconv.Atoi(redisInfo(context.Background(), c, "clients")["connected_clients"])
			total += v - 1
		}
		return total
	}
	// Release channels subscribed: one per key waited on.
	subscribed := func() int {
		total := 0
		for _, c := range nodes {
			v, _ := strconv.Atoi(redisInfo(context.Background(), c, "stats")["pubsubshard_channels"])
			total += v
		}
		return total
	}
	maddr := testharness.FreeAddr(tb)
	// Every waiter is admitted: max_waiters (default 10 000) raised to n.
	sc := testharness.StartSidecar(tb, t.env.Bin, append(args, "--redis-url", url, "--metrics-listen", maddr, "--max-waiters", strconv.Itoa(max(n, 1)))...)
	defer sc.Kill()
	conns := dialN(tb, sc.Addr(), 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := func(i int) string { return fmt.Sprintf("kw-%d", i) }

	leases := make([]string, n)
	var holdErrs atomic.Int64
	runParallel(n, 256, func(i int) {
		r, err := v1.NewLockServiceClient(conns[i%len(conns)]).AcquireLock(ctx,
			&v1.AcquireLockRequest{Key: key(i), Ttl: durationpb.New(2 * keyWaitTimeout), Owner: "holder"})
		if err != nil || !r.GetAcquired() {
			holdErrs.Add(1)
			return
		}
		leases[i] = r.GetLease().GetLeaseId()
	})
	time.Sleep(time.Second)
	rss0, g0, clients0 := rssBytes(sc.PID()), goroutines(maddr), sidecarClients()

	var granted, failed, maxClients atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	t0 := time.Now()
	// Waiters arrive at keyWaiterRate per second, as in issue 16.
	tick := time.NewTicker(time.Second / keyWaiterRate * 10)
	defer tick.Stop()
	for i := range n {
		if i%10 == 0 {
			<-tick.C
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := v1.NewLockServiceClient(conns[i%len(conns)])
			r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key(i), Ttl: durationpb.New(time.Minute),
				WaitTimeout: durationpb.New(keyWaitTimeout), Owner: "waiter"})
			if err != nil || !r.GetAcquired() {
				if failed.Add(1) == 1 {
					firstErr.Store(fmt.Errorf("waiter: %v (acquired %v)", err, r.GetAcquired()))
				}
				return
			}
			granted.Add(1)
			_, _ = c.ReleaseLock(context.Background(), &v1.ReleaseLockRequest{Key: key(i), LeaseId: r.GetLease().GetLeaseId()})
		}()
	}
	// Every waiter is in once its key's release channel is subscribed.
	for time.Since(t0) < keyWaitTimeout/2 && subscribed() < n && failed.Load() == 0 {
		time.Sleep(500 * time.Millisecond)
		maxClients.Store(max(maxClients.Load(), int64(sidecarClients())))
	}
	allIn := time.Since(t0)
	time.Sleep(time.Second)
	rss1, g1, clients1 := rssBytes(sc.PID()), goroutines(maddr), sidecarClients()
	maxClients.Store(max(maxClients.Load(), int64(clients1)))

	// Every holder releases; each waiter is granted and releases too.
	t1 := time.Now()
	runParallel(n, 256, func(i int) {
		if leases[i] == "" {
			return
		}
		_, _ = v1.NewLockServiceClient(conns[i%len(conns)]).ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key(i), LeaseId: leases[i]})
		if i%1000 == 0 {
			maxClients.Store(max(maxClients.Load(), int64(sidecarClients())))
		}
	})
	wg.Wait()
	handOver := time.Since(t1)
	for _, c := range conns {
		c.Close()
	}

	perWaiter := float64(rss1-rss0) / float64(n)
	fmt.Fprintf(t.out, "\n== %d waiters on %d distinct keys (arriving at %d/s), one sidecar on %s ==\n", n, n, keyWaiterRate, label)
	fmt.Fprintf(t.out, "holders: %d failed; all waiting after %s; sidecar's Redis connections %d before, %d while all wait, at most %d seen\n",
		holdErrs.Load(), ms(allIn), clients0, clients1, maxClients.Load())
	fmt.Fprintf(t.out, "sidecar RSS %s -> %s (%.1f KB per waiter); goroutines %d -> %d (%.2f per waiter)\n",
		mb(rss0), mb(rss1), perWaiter/1024, g0, g1, float64(g1-g0)/float64(n))
	fmt.Fprintf(t.out, "after every holder released: %d granted, %d failed%s, in %s\n",
		granted.Load(), failed.Load(), errSuffix(firstErr.Load()), ms(handOver))
	what := fmt.Sprintf("%d waiters on distinct keys, %s", n, label)
	t.add(target{n: 16, what: what + ": sidecar's Redis connections", known: true, met: maxClients.Load() <= 32,
		figure: strconv.FormatInt(maxClients.Load(), 10), bound: "32"})
	t.add(target{n: 16, what: what + ": granted after release", known: true, met: granted.Load() == int64(n) && failed.Load() == 0,
		figure: fmt.Sprintf("%d/%d", granted.Load(), n), bound: "all"})
	t.add(target{n: 16, what: what + ": sidecar memory per waiter", known: rss1 > 0, met: perWaiter <= 16*1024,
		figure: fmt.Sprintf("%.1f KB", perWaiter/1024), bound: "16 KB"})
	if failed.Load() > 0 {
		fmt.Fprintln(os.Stderr, "  keywaiters:", firstErr.Load())
	}
}
