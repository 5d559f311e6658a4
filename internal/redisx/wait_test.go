package redisx_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// incrScript writes when ARGV[1] is "w" and returns the new value, else
// reads and returns -1.
var incrScript = redisx.NewScript("test.incr", `
if ARGV[1] == 'w' then return redis.call('INCR', KEYS[1]) end
return -1
`)

func wroteReply(v any) bool { n, _ := v.(int64); return n >= 0 }

func TestRedisRunWaitStandaloneWithReplica(t *testing.T) {
	t.Parallel()
	master := testharness.StartRedis(t, testharness.WithRedisArgs("--repl-diskless-sync-delay", "0"))
	host, port, _ := net.SplitHostPort(master.Addr())
	replica := testharness.StartRedis(t, testharness.WithRedisArgs("--replicaof", host, port))
	c, err := redisx.NewClient(master.URL(), redisx.Standalone, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	keys := []string{"rs:{t/k}:n"}
	// The replica attaches asynchronously.
	testkit.EventuallyNil(t, 20*time.Second, "the replica to attach", func() error {
		n, err := c.Do(ctx, "wait", 1, 100).Int()
		if err == nil && n != 1 {
			err = fmt.Errorf("WAIT 1 = %d", n)
		}
		return err
	})

	// Generous: success returns as soon as the replica acknowledges; a loaded
	// machine can take a while to schedule the replica.
	one := redisx.Wait{Replicas: 1, Timeout: 5 * time.Second}
	v, err := redisx.RunWait(ctx, c, incrScript, one, wroteReply, keys, "w")
	if err != nil || v != int64(1) {
		t.Fatalf("write with WAIT 1 = %v, %v", v, err)
	}
	if got, err := replica.Client(t).Get(ctx, keys[0]).Result(); err != nil || got != "1" {
		t.Fatalf("replica has %q, %v after WAIT said it acknowledged", got, err)
	}

	// The script cache is empty (as after a restart or failover): EVAL.
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := redisx.RunWait(ctx, c, incrScript, one, wroteReply, keys, "w"); err != nil || v != int64(2) {
		t.Fatalf("after SCRIPT FLUSH = %v, %v", v, err)
	}

	// More replicas than exist: the write is made but reported as failed.
	v, err = redisx.RunWait(ctx, c, incrScript, redisx.Wait{Replicas: 2, Timeout: 100 * time.Millisecond}, wroteReply, keys, "w")
	if !errors.Is(err, redisx.ErrNotReplicated) || v != int64(3) {
		t.Fatalf("WAIT 2 with one replica = %v, %v; want the reply and ErrNotReplicated", v, err)
	}
	if cerr := redisx.Classify(ctx, err); !errors.Is(cerr, store.ErrUnavailable) || !strings.Contains(cerr.Error(), "1 of 2 replicas") {
		t.Fatalf("Classify = %v; want store.ErrUnavailable naming the shortfall", cerr)
	}

	// A frozen replica does not acknowledge.
	replica.Pause()
	start := time.Now()
	_, err = redisx.RunWait(ctx, c, incrScript, redisx.Wait{Replicas: 1, Timeout: 300 * time.Millisecond}, wroteReply, keys, "w")
	if !errors.Is(err, redisx.ErrNotReplicated) {
		t.Fatalf("with the replica paused: %v; want ErrNotReplicated", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("WAIT with a 300ms timeout took %v", el)
	}
	// A reply that wrote nothing is not held to the replicas.
	if v, err := redisx.RunWait(ctx, c, incrScript, redisx.Wait{Replicas: 1, Timeout: 300 * time.Millisecond}, wroteReply, keys, "r"); err != nil || v != int64(-1) {
		t.Fatalf("read with the replica paused = %v, %v", v, err)
	}
	replica.Resume()

	// Without replicas requested, RunWait is Script.Run.
	if v, err := redisx.RunWait(ctx, c, incrScript, redisx.Wait{}, wroteReply, keys, "w"); err != nil || v != int64(5) {
		t.Fatalf("no wait = %v, %v", v, err)
	}
}

// On Cluster the WAIT goes to the master of the key's slot, right after the
// script on the same connection, also while the slot is being migrated
// (ASK) and after it moved (MOVED).
func TestClusterRunWaitFollowsTheSlot(t *testing.T) {
	t.Parallel()
	cl := testharness.StartCluster(t, 3, testharness.WithClusterReplicas(1))
	c, err := redisx.NewClient(cl.URL(), redisx.Cluster, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	one := redisx.Wait{Replicas: 1, Timeout: time.Second}
	run := func(key string) int64 {
		t.Helper()
		v, err := redisx.RunWait(ctx, c, incrScript, one, wroteReply, []string{key}, "w")
		if err != nil {
			t.Fatalf("RunWait(%s): %v", key, err)
		}
		return v.(int64)
	}
	for _, k := range []string{"rs:{a}:n", "rs:{b}:n", "rs:{c}:n", "rs:{d}:n"} {
		run(k)
	}

	const key = "rs:{moving}:n"
	run(key)
	slot := cl.KeySlot(t, key)
	from := cl.Owner(t, slot)
	var to *testharness.Redis
	for _, m := range cl.Masters() {
		if m != from {
			to = m
		}
	}
	done := make(chan error, 1)
	go func() { done <- cl.MoveSlot(ctx, slot, to, 300*time.Millisecond) }()
	n := int64(1)
	for moving := true; moving; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			moving = false
		default:
		}
		n++
		if got := run(key); got != n {
			t.Fatalf("INCR during the move = %d, want %d", got, n)
		}
	}
	n++
	if got := run(key); got != n {
		t.Fatalf("INCR after the move = %d, want %d", got, n)
	}
	if v, err := to.Client(t).Get(ctx, key).Int64(); err != nil || v != n {
		t.Fatalf("new owner holds %d, %v; want %d", v, err, n)
	}
}

// With All, every replica the master reports online must acknowledge, at
// least Min of them: a paused replica (still online to the master) holds
// the write back, a killed one stops counting, and too few online refuse.
func TestRedisRunWaitAll(t *testing.T) {
	t.Parallel()
	master := testharness.StartRedis(t, testharness.WithRedisArgs("--repl-diskless-sync-delay", "0"))
	host, port, _ := net.SplitHostPort(master.Addr())
	var replicas []*testharness.Redis
	for range 2 {
		replicas = append(replicas, testharness.StartRedis(t, testharness.WithRedisArgs("--replicaof", host, port)))
	}
	c, err := redisx.NewClient(master.URL(), redisx.Standalone, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	keys := []string{"rs:{t/all}:n"}
	testkit.EventuallyNil(t, 20*time.Second, "both replicas to attach", func() error {
		n, err := c.Do(ctx, "wait", 2, 100).Int()
		if err == nil && n != 2 {
			err = fmt.Errorf("WAIT 2 = %d", n)
		}
		return err
	})
	all := redisx.Wait{All: true, Timeout: 3 * time.Second}
	if v, err := redisx.RunWait(ctx, c, incrScript, all, wroteReply, keys, "w"); err != nil || v != int64(1) {
		t.Fatalf("write with WAIT all = %v, %v", v, err)
	}
	for _, r := range replicas {
		if got, err := r.Client(t).Get(ctx, keys[0]).Result(); err != nil || got != "1" {
			t.Fatalf("replica %s has %q, %v after WAIT all", r.Addr(), got, err)
		}
	}
	if _, err := redisx.RunWait(ctx, c, incrScript, redisx.Wait{All: true, Min: 3, Timeout: time.Second}, wroteReply, keys, "w"); !errors.Is(err, redisx.ErrNotReplicated) ||
		!strings.Contains(err.Error(), "2 replicas online, 3 required") {
		t.Fatalf("Min 3 with two replicas: %v; want ErrNotReplicated naming the shortfall", err)
	}

	// A paused replica is still online to the master but acknowledges nothing.
	replicas[1].Pause()
	short := redisx.Wait{All: true, Timeout: 200 * time.Millisecond}
	if _, err := redisx.RunWait(ctx, c, incrScript, short, wroteReply, keys, "w"); !errors.Is(err, redisx.ErrNotReplicated) ||
		!strings.Contains(err.Error(), "1 of 2 replicas") {
		t.Fatalf("with a replica paused: %v; want ErrNotReplicated, 1 of 2", err)
	}
	// Killed, it leaves the master's list: the other one is all there is.
	replicas[1].Kill()
	testkit.EventuallyNil(t, 20*time.Second, "the write to need one replica", func() error {
		_, err := redisx.RunWait(ctx, c, incrScript, all, wroteReply, keys, "w")
		return err
	})
	if _, err := redisx.RunWait(ctx, c, incrScript, redisx.Wait{All: true, Min: 2, Timeout: 200 * time.Millisecond}, wroteReply, keys, "w"); !errors.Is(err, redisx.ErrNotReplicated) {
		t.Fatalf("Min 2 with one replica online: %v; want ErrNotReplicated", err)
	}

	// A replica that comes online is waited for from the call that sees it.
	third := testharness.StartRedis(t, testharness.WithRedisArgs("--replicaof", host, port))
	testkit.EventuallyNil(t, 20*time.Second, "the new replica to count", func() error {
		v, err := redisx.RunWait(ctx, c, incrScript, redisx.Wait{All: true, Min: 2, Timeout: 3 * time.Second}, wroteReply, keys, "w")
		if err != nil {
			return err
		}
		got, err := third.Client(t).Get(ctx, keys[0]).Int64()
		if err == nil && got != v.(int64) {
			err = fmt.Errorf("new replica has %d after WAIT all acknowledged %v", got, v)
		}
		return err
	})
}

// The Sentinel fence confirms the master every sentinel names, refuses
// another node, refuses while a failover is in progress, passes over a
// sentinel that is not running and fails on one that does not answer.
func TestSentinelFence(t *testing.T) {
	t.Parallel()
	s := testharness.StartSentinel(t)
	fence, err := redisx.NewSentinelFence(s.URL(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fence.Close() })
	ctx := context.Background()
	master := s.Master(t).Addr()
	if err := fence.Confirm(ctx, master); err != nil {
		t.Fatalf("Confirm(master %s): %v", master, err)
	}
	if err := fence.Confirm(ctx, "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "not 127.0.0.1:1") {
		t.Fatalf("Confirm(another node) = %v; want the sentinels' master named", err)
	}

	// Concurrent calls share rounds and all get the answer.
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Go(func() { errs <- fence.Confirm(ctx, master) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Confirm: %v", err)
		}
	}

	// From SENTINEL FAILOVER until every sentinel names the new master,
	// nothing on the old one is confirmed.
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.SentinelAddrs()[0]})
	t.Cleanup(func() { sc.Close() })
	testkit.EventuallyNil(t, 30*time.Second, "SENTINEL FAILOVER to be accepted", func() error { return sc.Failover(ctx, testharness.SentinelMasterName).Err() })
	seen := false
	testkit.Eventually(t, 30*time.Second, "the old master to be refused while failing over", func() bool {
		err := fence.Confirm(ctx, master)
		seen = seen || err != nil && strings.Contains(err.Error(), "failing over")
		return seen
	})
	nm := s.WaitNewMaster(t, master)
	testkit.EventuallyNil(t, 30*time.Second, "the new master to be confirmed", func() error { return fence.Confirm(ctx, nm.Addr()) })
	if err := fence.Confirm(ctx, master); err == nil {
		t.Fatal("the old master confirmed after the failover")
	}

	// A sentinel that does not answer fails the round; one that is gone
	// (connection refused) cannot fail over and is passed over.
	s.PauseSentinel(t, 2)
	if err := fence.Confirm(ctx, nm.Addr()); err == nil {
		t.Fatal("confirmed with a sentinel not answering")
	}
	s.KillSentinel(t, 2)
	if err := fence.Confirm(ctx, nm.Addr()); err != nil {
		t.Fatalf("with a sentinel gone: %v", err)
	}
}
