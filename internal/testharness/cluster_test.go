package testharness

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// A 3-master cluster serves every slot; a slot moved while a client keeps
// incrementing a key in it loses no increment (the client follows ASK and
// MOVED); the URL is what ParseClusterURL reads.
func TestClusterMoveSlotUnderLoad(t *testing.T) {
	t.Parallel()
	cl := StartCluster(t, 3)
	if len(cl.Masters()) != 3 || len(cl.Replicas()) != 0 {
		t.Fatalf("masters %d replicas %d", len(cl.Masters()), len(cl.Replicas()))
	}
	opt, err := redis.ParseClusterURL(cl.URL())
	if err != nil || len(opt.Addrs) != 3 {
		t.Fatalf("ParseClusterURL(%q) = %v, %v", cl.URL(), opt, err)
	}
	c := cl.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.Ping(ctx).Err() }); err != nil {
		t.Fatal(err)
	}

	const key = "{moving}:n"
	slot := cl.KeySlot(t, key)
	from := cl.Owner(t, slot)
	var to *Redis
	for _, m := range cl.Masters() {
		if m != from {
			to = m
			break
		}
	}
	// Other keys of the slot, so the migration moves several batches.
	for i := range 250 {
		if err := c.Set(ctx, fmt.Sprintf("{moving}:filler-%d", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}

	var incs atomic.Int64
	stop := make(chan struct{})
	exited := make(chan struct{})
	var wg sync.WaitGroup
	var loadErr error
	wg.Go(func() {
		defer close(exited)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.Incr(ctx, key).Err(); err != nil {
				loadErr = err
				return
			}
			incs.Add(1)
		}
	})
	// loaded waits until the load made n more increments (or ended on an
	// error, reported below).
	loaded := func(what string, n int64) {
		t.Helper()
		target := incs.Load() + n
		testkit.Eventually(t, time.Minute, what, func() bool {
			select {
			case <-exited:
				return true
			default:
				return incs.Load() >= target
			}
		})
	}
	loaded("load before the move", 20)
	if err := cl.MoveSlot(ctx, slot, to, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := cl.MoveSlot(ctx, slot, to, 0); err != nil { // already there: no-op
		t.Fatal(err)
	}
	loaded("load after the move", 20)
	close(stop)
	wg.Wait()
	if loadErr != nil {
		t.Fatalf("INCR during the move: %v", loadErr)
	}
	if got := cl.Owner(t, slot); got != to {
		t.Fatalf("slot %d owned by %s after the move, want %s", slot, got.Addr(), to.Addr())
	}
	n, err := c.Get(ctx, key).Int64()
	if err != nil || n != incs.Load() {
		t.Fatalf("counter = %d, %v; want %d increments", n, err, incs.Load())
	}
	keys, err := to.Client(t).DBSize(ctx).Result()
	if err != nil || keys < 251 {
		t.Fatalf("target holds %d keys, %v; want the slot's 251", keys, err)
	}
}

// With replicas, every master has one in sync and WAIT on a master's
// connection counts it.
func TestClusterWithReplicas(t *testing.T) {
	t.Parallel()
	cl := StartCluster(t, 3, WithClusterReplicas(1))
	if len(cl.Nodes()) != 6 {
		t.Fatalf("%d nodes", len(cl.Nodes()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := cl.Client(t)
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		info, err := m.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "connected_slaves:1") {
			return errors.New(m.Options().Addr + ": " + info)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.MasterForKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	pipe := m.Pipeline()
	pipe.Set(ctx, "k", "v", 0)
	wait := pipe.Do(ctx, "wait", 1, 2000)
	if _, err := pipe.Exec(ctx); err != nil || wait.Val() != int64(1) {
		t.Fatalf("SET then WAIT 1: %v, %v", wait.Val(), err)
	}
}

func TestClusterURLForm(t *testing.T) {
	t.Parallel()
	c := &Cluster{masters: []*Redis{{addr: "127.0.0.1:1"}, {addr: "127.0.0.1:2"}, {addr: "127.0.0.1:3"}}}
	want := "redis://127.0.0.1:1?addr=127.0.0.1:2&addr=127.0.0.1:3"
	if c.URL() != want {
		t.Fatalf("URL = %q, want %q", c.URL(), want)
	}
	if _, err := url.Parse(c.URL()); err != nil {
		t.Fatal(err)
	}
}
