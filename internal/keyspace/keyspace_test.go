package keyspace_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/clock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// snapshot is every key of the database: its DUMP and its PTTL.
func snapshot(t *testing.T, rdb redis.UniversalClient) map[string][2]string {
	t.Helper()
	ctx := context.Background()
	out := map[string][2]string{}
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		d, err := rdb.Dump(ctx, k).Result()
		if err != nil {
			t.Fatalf("DUMP %q: %v", k, err)
		}
		ttl, err := rdb.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatalf("PTTL %q: %v", k, err)
		}
		exp := "persistent"
		if ttl >= 0 {
			exp = "expires"
		}
		out[k] = [2]string{d, exp}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLockKeyCannotAddressSaga is issue 16's reproduction: AcquireLock on
// the lock key "saga-shard-13}:saga:h:v" wrote the lock's fields into the
// hash of saga "v}:lock" (in shard 13) and gave it the lock's expiry. Now
// the saga, and every key that existed before, is untouched.
func TestLockKeyCannotAddressSaga(t *testing.T) {
	rdb := testharness.StartRedis(t).Client(t)
	ctx := context.Background()
	const ns, victim = "default", "v}:lock"
	h := fnv.New32a()
	_, _ = h.Write([]byte(victim))
	crafted := fmt.Sprintf("saga-shard-%02d}:saga:h:v", h.Sum32()%saga.Shards)
	if crafted != "saga-shard-13}:saga:h:v" {
		t.Logf("saga %q is in another shard now; crafted key %q", victim, crafted)
	}

	sagas := saga.NewRedisStore(rdb, ns, 2*time.Second)
	if _, _, err := sagas.Start(ctx, saga.NewSaga{ID: victim, Name: "victim", Timeout: time.Hour},
		saga.Params{Lease: time.Minute, Retention: time.Hour}); err != nil {
		t.Fatal(err)
	}
	before, err := sagas.Get(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	keysBefore := snapshot(t, rdb)

	locks := lock.NewRedisStore(rdb, ns, 2*time.Second)
	if _, _, ok, err := locks.TryAcquire(ctx, crafted, "lease-1", "attacker", time.Hour); err != nil || !ok {
		t.Fatalf("TryAcquire(%q) = %v, %v", crafted, ok, err)
	}

	after, err := sagas.Get(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Errorf("saga changed by AcquireLock:\nbefore %+v\nafter  %+v", before, after)
	}
	keysAfter := snapshot(t, rdb)
	for k, v := range keysBefore {
		if a := keysAfter[k]; a != v {
			t.Errorf("key %q changed by AcquireLock: value changed %v, %s -> %s", k, a[0] != v[0], v[1], a[1])
		}
	}
	for k := range keysAfter {
		if _, ok := keysBefore[k]; ok {
			continue
		}
		if gns, c, id, ok := redisx.ParseTag(k); !ok || gns != ns || c != redisx.Lock || id != crafted {
			t.Errorf("AcquireLock(%q) made key %q outside its record", crafted, k)
		}
	}
	info, err := locks.Get(ctx, crafted)
	if err != nil || !info.Held || info.Holder.Owner != "attacker" {
		t.Errorf("lock %q: %+v, %v", crafted, info, err)
	}
}

// TestStoresKeepToTheirRecords drives every Redis store with the same
// random names (braces, separators, escapes, unicode, raw bytes, the
// issue's exploit) and checks that each (capability, name) holds exactly
// what was written under it, and that every key in Redis belongs to one
// of the records written, by its hash tag.
func TestStoresKeepToTheirRecords(t *testing.T) {
	rdb := testharness.StartRedis(t).Client(t)
	ctx := context.Background()
	const ns = "prop"
	const to = 2 * time.Second

	rng := rand.New(rand.NewSource(16))
	pieces := []string{"{", "}", ":", "/", "%", "%7B", "%7D", "%2F", "a", "b", "lock", "idem", "ev", "b:permits",
		"saga-shard-13", "saga-shard-13}", ":saga:h:", "shard-", "}:lock", "rs:{", "prop/", "é", "日本", "\x00", "\xff", " ", "*"}
	seen := map[string]bool{}
	names := []string{"saga-shard-13}:saga:h:v", "v}:lock", "x", "breaker/x", "lock/x", "x}:b", "x%7D", "x}", "prop/lock/x"}
	for _, n := range names {
		seen[n] = true
	}
	for len(names) < 80 {
		var b strings.Builder
		for n := 1 + rng.Intn(5); n > 0; n-- {
			b.WriteString(pieces[rng.Intn(len(pieces))])
		}
		if n := b.String(); !seen[n] && !strings.HasSuffix(n, events.DeadSuffix) {
			seen[n] = true
			names = append(names, n)
		}
	}

	locks := lock.NewRedisStore(rdb, ns, to)
	idem := idempotency.NewRedisStore(rdb, ns, to)
	brk := breaker.NewRedisStore(rdb, ns, to)
	clk := clock.NewRedisStore(rdb, ns, to)
	sagas := saga.NewRedisStore(rdb, ns, to)
	evs := events.NewRedisStore(rdb, ns, to)

	type rec struct {
		c  redisx.Capability
		id string
	}
	records := map[rec]bool{}
	for i, n := range names {
		tag := fmt.Sprint(i)
		if _, _, ok, err := locks.TryAcquire(ctx, n, "lease-"+tag, "owner-"+tag, time.Hour); err != nil || !ok {
			t.Fatalf("lock %q: %v %v", n, ok, err)
		}
		if _, err := idem.CheckOrRecord(ctx, n, "lease-"+tag, idempotency.Options{Fingerprint: "fp-" + tag, LeaseTTL: time.Minute, Retention: time.Hour}); err != nil {
			t.Fatalf("idempotency %q: %v", n, err)
		}
		if _, err := brk.Allow(ctx, n, breaker.DefaultPolicy(), breaker.AllowArgs{Reporter: breaker.Reporter{byte(i)}, Nonce: breaker.Nonce{byte(i)}, TTL: time.Minute}); err != nil {
			t.Fatalf("breaker %q: %v", n, err)
		}
		if _, err := clk.Next(ctx, n, uint64(i+1)); err != nil {
			t.Fatalf("clock %q: %v", n, err)
		}
		if _, _, err := sagas.Start(ctx, saga.NewSaga{ID: n, Name: "saga-" + tag, Timeout: time.Hour}, saga.Params{Lease: time.Minute, Retention: time.Hour}); err != nil {
			t.Fatalf("saga %q: %v", n, err)
		}
		// Topic n gets 1-3 events, deduplicated by keys made of the other
		// names, read by a group named like another record.
		for j := 0; j <= i%3; j++ {
			m := events.Message{Topic: n, Key: "k", Payload: []byte(tag), IdempotencyKey: names[(i+j+1)%len(names)]}
			for range 2 {
				if _, err := evs.Publish(ctx, m, events.PublishOptions{MaxLen: 100, DedupRetention: time.Hour}); err != nil {
					t.Fatalf("publish %q: %v", n, err)
				}
			}
		}
		group := names[(i+7)%len(names)]
		if _, err := evs.EnsureGroup(ctx, n, group, "c", events.GroupOptions{Start: events.Earliest}); err != nil {
			t.Fatalf("group %q of %q: %v", group, n, err)
		}
		res, err := evs.Read(ctx, n, group, "c", events.ReadOptions{Count: 10, Visibility: time.Minute, MaxDeliveries: 10, DeadMaxLen: 100})
		if err != nil {
			t.Fatalf("read %q: %v", n, err)
		}
		if got := len(res.Deliveries); got != i%3+1 {
			t.Errorf("topic %q delivered %d events, want %d", n, got, i%3+1)
		}
		for _, c := range []redisx.Capability{redisx.Lock, redisx.Idempotency, redisx.Breaker, redisx.Clock, redisx.Events} {
			records[rec{c, n}] = true
		}
	}
	for k := range saga.Shards {
		records[rec{redisx.Saga, fmt.Sprintf("shard-%02d", k)}] = true
	}

	// Each record holds what was written to it, and nothing else did.
	for i, n := range names {
		tag := fmt.Sprint(i)
		if info, err := locks.Get(ctx, n); err != nil || info.Holder.Owner != "owner-"+tag {
			t.Errorf("lock %q: %+v, %v", n, info, err)
		}
		if info, err := idem.Get(ctx, n); err != nil || info.Fingerprint != "fp-"+tag {
			t.Errorf("idempotency %q: %+v, %v", n, info, err)
		}
		if s, err := brk.Get(ctx, n, breaker.DefaultPolicy()); err != nil || s.Generation == 0 {
			t.Errorf("breaker %q: %+v, %v", n, s, err)
		}
		if v, err := clk.Get(ctx, n); err != nil || v != uint64(i+1) {
			t.Errorf("clock %q = %d, %v; want %d", n, v, err, i+1)
		}
		if s, err := sagas.Get(ctx, n); err != nil || s.Name != "saga-"+tag || s.ID != n {
			t.Errorf("saga %q: %+v, %v", n, s, err)
		}
		if l, err := rdb.XLen(ctx, evs.StreamKey(n)).Result(); err != nil || l != int64(i%3+1) {
			t.Errorf("topic %q has %d events, %v; want %d", n, l, err, i%3+1)
		}
	}

	// Every key and its tag belong to exactly one record written above.
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	n := 0
	for iter.Next(ctx) {
		k := iter.Val()
		n++
		gns, c, id, ok := redisx.ParseTag(k)
		if !ok || gns != ns || !records[rec{c, id}] {
			t.Errorf("key %q belongs to no record written (%q %q %q %v)", k, gns, c, id, ok)
		}
		if redisx.Slot(k) != redisx.Slot(redisx.Key(ns, c, id, "")) {
			t.Errorf("key %q is not in its record's slot", k)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d names, %d keys", len(names), n)
}
