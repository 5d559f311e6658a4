package redisx_test

import (
	"context"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// A sharded subscription whose slot moves to another master is dropped by
// Redis; ShardedSub subscribes again on the new owner (signalling once, as
// messages may have been missed) and keeps delivering. Close ends it and
// closes C.
func TestClusterShardedSubFollowsSlot(t *testing.T) {
	t.Parallel()
	cl := testharness.StartCluster(t, 3)
	c, err := redisx.NewClient(cl.URL(), redisx.Cluster, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ch = "rs:{t/sub}:done"
	sub, err := redisx.SSubscribe(ctx, c, ch, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	receive := func(what string) {
		t.Helper()
		select {
		case _, ok := <-sub.C:
			if !ok {
				t.Fatalf("%s: C closed", what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: nothing received", what)
		}
	}
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
	receive("before the move")

	slot := cl.KeySlot(t, ch)
	from := cl.Owner(t, slot)
	to := cl.Masters()[0]
	if to == from {
		to = cl.Masters()[1]
	}
	if err := cl.MoveSlot(ctx, slot, to, 0); err != nil {
		t.Fatal(err)
	}
	receive("re-subscription after the move")
	for deadline := time.Now().Add(10 * time.Second); subscribers() != 1; {
		if time.Now().After(deadline) {
			t.Fatal("not subscribed on the new owner")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.SPublish(ctx, ch, "2").Err(); err != nil {
		t.Fatal(err)
	}
	receive("after the move")

	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	for range sub.C { // drains and ends: C is closed
	}
	for deadline := time.Now().Add(10 * time.Second); subscribers() != 0; {
		if time.Now().After(deadline) {
			t.Fatal("still subscribed after Close")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
