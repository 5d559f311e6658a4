package redisx_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// receive fails the test unless sig is signalled within a generous bound.
func receive(t *testing.T, sig <-chan struct{}, what string) {
	t.Helper()
	select {
	case _, ok := <-sig:
		if !ok {
			t.Fatalf("%s: channel closed", what)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing received", what)
	}
}

// pubsubClients counts the connections Redis has in pub/sub mode.
func pubsubClients(t *testing.T, c redis.UniversalClient, addr string) int {
	t.Helper()
	node := redis.NewClient(&redis.Options{Addr: addr})
	defer node.Close()
	list, err := node.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " ssub=") && !strings.Contains(line, " ssub=0 ") {
			n++
		}
	}
	return n
}

// Watching thousands of channels costs one connection, every watcher gets
// its channel's messages and only those, and the connection is closed when
// the last watcher stops.
func TestWatchesShareOneConnection(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t)
	c, err := redisx.NewClient(r.URL(), redisx.Standalone, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ws := redisx.NewWatches(c, 2*time.Second)
	ctx := context.Background()

	const n = 3000
	sigs := make([]<-chan struct{}, n)
	stops := make([]func(), n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			sig, stop, err := ws.Watch(ctx, fmt.Sprintf("rs:{t/k%d}:done", i))
			sigs[i], stops[i] = sig, stop
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := ws.Connections(); got != 1 {
		t.Fatalf("Connections() = %d, want 1", got)
	}
	if got := pubsubClients(t, c, r.Addr()); got != 1 {
		t.Fatalf("Redis has %d subscribed connections, want 1", got)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		if err := c.SPublish(ctx, fmt.Sprintf("rs:{t/k%d}:done", i), "x").Err(); err != nil {
			t.Fatal(err)
		}
		receive(t, sigs[i], fmt.Sprintf("watcher %d", i))
	}
	select {
	case <-sigs[1]:
		t.Fatal("a watcher was signalled for another channel")
	default:
	}
	for _, stop := range stops {
		stop()
		stop() // idempotent
	}
	testkit.Eventually(t, 15*time.Second, "connection closed after the last stop", func() bool {
		return ws.Connections() == 0 && pubsubClients(t, c, r.Addr()) == 0
	})
}

// Watchers of one channel share its subscription; one stopping leaves the
// other subscribed, and a channel watched again after its unsubscription
// is confirmed again before Watch returns.
func TestWatchesChurn(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t)
	c, err := redisx.NewClient(r.URL(), redisx.Standalone, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ws := redisx.NewWatches(c, 2*time.Second)
	ctx := context.Background()
	const ch = "rs:{t/churn}:done"
	for round := range 200 {
		a, stopA, err := ws.Watch(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		b, stopB, err := ws.Watch(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		stopA()
		if err := c.SPublish(ctx, ch, "x").Err(); err != nil {
			t.Fatal(err)
		}
		receive(t, b, fmt.Sprintf("round %d", round))
		select {
		case <-a:
			t.Fatalf("round %d: a stopped watcher was signalled", round)
		default:
		}
		stopB()
	}
}

// A killed subscription connection is replaced: the watchers are signalled
// (messages may have been missed) and keep receiving.
func TestWatchesSurviveKilledConnection(t *testing.T) {
	t.Parallel()
	r := testharness.StartRedis(t)
	c, err := redisx.NewClient(r.URL(), redisx.Standalone, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ws := redisx.NewWatches(c, 2*time.Second)
	ctx := context.Background()
	sig, stop, err := ws.Watch(ctx, "rs:{t/kill}:done")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := c.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	receive(t, sig, "signal after the reconnection")
	testkit.Eventually(t, 15*time.Second, "subscribed again", func() bool { return pubsubClients(t, c, r.Addr()) == 1 })
	if err := c.SPublish(ctx, "rs:{t/kill}:done", "x").Err(); err != nil {
		t.Fatal(err)
	}
	receive(t, sig, "message after the reconnection")
}

// On Cluster, channels spread over every master cost one connection per
// master; when a slot moves to another master, Redis drops its channels and
// Watches subscribes them on the new owner, signalling once.
func TestClusterWatchesFollowSlot(t *testing.T) {
	t.Parallel()
	cl := testharness.StartCluster(t, 3)
	c, err := redisx.NewClient(cl.URL(), redisx.Cluster, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ws := redisx.NewWatches(c, 2*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var stops []func()
	defer func() {
		for _, s := range stops {
			s()
		}
	}()
	for i := range 300 {
		_, stop, err := ws.Watch(ctx, fmt.Sprintf("rs:{t/spread%d}:done", i))
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, stop)
	}
	if got := ws.Connections(); got != 3 {
		t.Fatalf("Connections() = %d, want 3 (one per master)", got)
	}
	for _, m := range cl.Masters() {
		if got := pubsubClients(t, c, m.Addr()); got != 1 {
			t.Fatalf("master %s has %d subscribed connections, want 1", m.Addr(), got)
		}
	}

	const ch = "rs:{t/sub}:done"
	sig, stop, err := ws.Watch(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	stops = append(stops, stop)
	subscribers := func() int64 {
		n, err := c.PubSubShardNumSub(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n[ch]
	}
	if err := c.SPublish(ctx, ch, "1").Err(); err != nil {
		t.Fatal(err)
	}
	receive(t, sig, "before the move")

	slot := cl.KeySlot(t, ch)
	from := cl.Owner(t, slot)
	to := cl.Masters()[0]
	if to == from {
		to = cl.Masters()[1]
	}
	if err := cl.MoveSlot(ctx, slot, to, 0); err != nil {
		t.Fatal(err)
	}
	receive(t, sig, "re-subscription after the move")
	testkit.Eventually(t, 15*time.Second, "subscribed on the new owner", func() bool { return subscribers() == 1 })
	if err := c.SPublish(ctx, ch, "2").Err(); err != nil {
		t.Fatal(err)
	}
	receive(t, sig, "after the move")
	if got := ws.Connections(); got != 3 {
		t.Fatalf("Connections() = %d after the move, want 3", got)
	}
}
