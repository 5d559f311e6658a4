package redisx_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// A script runs at most once per call. go-redis's cluster client re-sends
// every command of a pipeline whose first command failed with TRYAGAIN,
// scripts that already ran included; through redisx.NewClient it does not,
// so a counting script in that pipeline counts once. (This is how a lock
// release ran twice during a resharding and reported LEASE_LOST for a lock
// it had released.)
func TestClusterPipelineRunsEachScriptOnce(t *testing.T) {
	t.Parallel()
	cl := testharness.StartCluster(t, 3)
	c, err := redisx.NewClient(cl.URL(), redisx.Cluster, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Two tags on the same master: one whose slot migrates, one whose
	// slot stays.
	moving := "{mig}"
	owner := cl.Owner(t, cl.KeySlot(t, moving))
	staying := ""
	for i := 0; staying == ""; i++ {
		tag := fmt.Sprintf("{stay%d}", i)
		if cl.KeySlot(t, tag) != cl.KeySlot(t, moving) && cl.Owner(t, cl.KeySlot(t, tag)) == owner {
			staying = tag
		}
	}
	if err := c.Set(ctx, moving+"a", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var target *testharness.Redis
	for _, m := range cl.Masters() {
		if m != owner {
			target = m
			break
		}
	}
	id := func(r *testharness.Redis) string {
		t.Helper()
		v, err := r.Client(t).Do(ctx, "cluster", "myid").Text()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	slot := cl.KeySlot(t, moving)
	if err := target.Client(t).Do(ctx, "cluster", "setslot", slot, "importing", id(owner)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := owner.Client(t).Do(ctx, "cluster", "setslot", slot, "migrating", id(target)).Err(); err != nil {
		t.Fatal(err)
	}

	// On the owner: {mig}a exists and {mig}b does not, so a script on both
	// gets TRYAGAIN; the counting script on the staying slot runs.
	split := redis.NewScript(`return 1`)
	count := redis.NewScript(`return redis.call('INCR', KEYS[1])`)
	for _, s := range []*redis.Script{split, count} {
		if err := s.Load(ctx, c).Err(); err != nil {
			t.Fatal(err)
		}
	}
	pipe := c.Pipeline()
	first := split.EvalSha(ctx, pipe, []string{moving + "a", moving + "b"})
	counted := count.EvalSha(ctx, pipe, []string{staying + "n"})
	_, _ = pipe.Exec(ctx)
	if !redis.HasErrorPrefix(first.Err(), "TRYAGAIN") {
		t.Fatalf("the split script: %v, want TRYAGAIN (the test's premise)", first.Err())
	}
	if err := counted.Err(); err != nil {
		t.Fatalf("the counting script: %v", err)
	}
	n, err := c.Get(ctx, staying+"n").Int()
	if err != nil || n != 1 {
		t.Fatalf("the counting script ran %d times (%v), want once", n, err)
	}
}
