package testharness

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// A failover promotes the replica; a failover client follows it by itself
// and sees the data written before (the replica was in sync).
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	s := StartSentinel(t)
	opt, err := redis.ParseFailoverURL(s.URL())
	if err != nil || opt.MasterName != SentinelMasterName || len(opt.SentinelAddrs) != 3 {
		t.Fatalf("ParseFailoverURL(%q) = %+v, %v", s.URL(), opt, err)
	}
	old := s.Master(t)
	if old != s.Nodes()[0] {
		t.Fatalf("initial master %s, want %s", old.Addr(), s.Nodes()[0].Addr())
	}
	c := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Set(ctx, "before", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Make sure the write reached the replica before failing over.
	if n, err := c.Do(ctx, "wait", 1, 2000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 = %d, %v", n, err)
	}

	nm := s.Failover(t)
	if nm == old || s.Master(t) != nm {
		t.Fatalf("master after failover: %s (old %s)", nm.Addr(), old.Addr())
	}
	testkit.EventuallyNil(t, 20*time.Second, "the client to follow the failover", func() error {
		return c.Set(ctx, "after", "1", 0).Err()
	})
	if v, err := c.Get(ctx, "before").Result(); err != nil || v != "1" {
		t.Fatalf("GET before = %q, %v", v, err)
	}
	if v, err := nm.Client(t).Get(ctx, "after").Result(); err != nil || v != "1" {
		t.Fatalf("the new master lacks the write made after the failover: %q, %v", v, err)
	}
	// The old master rejoins as a replica.
	if err := s.WaitReplicasSynced(ctx); err != nil {
		t.Fatal(err)
	}
}
