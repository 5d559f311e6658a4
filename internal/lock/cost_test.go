package lock_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/lock"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// commandCalls is Redis's count of each command (INFO commandstats),
// script-internal calls included.
func commandCalls(t *testing.T, rdb *redis.Client) map[string]int64 {
	t.Helper()
	s, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(s, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		name, isCmd := strings.CutPrefix(k, "cmdstat_")
		if !ok || !isCmd || name == "info" {
			continue
		}
		for _, kv := range strings.Split(v, ",") {
			if n, ok := strings.CutPrefix(kv, "calls="); ok {
				out[name], _ = strconv.ParseInt(n, 10, 64)
			}
		}
	}
	return out
}

func commandsSince(t *testing.T, rdb *redis.Client, before map[string]int64) (total int64, by map[string]int64) {
	t.Helper()
	by = map[string]int64{}
	for name, n := range commandCalls(t, rdb) {
		if d := n - before[name]; d > 0 {
			by[name] = d
			total += d
		}
	}
	return total, by
}

// TestRedisUncontendedLockCost (issue 24): an acquisition and a release of a
// key nobody waits for run at most 8 Redis commands together, scripts'
// inner commands included, with no queue lookup and no publish; a release
// of a key a sidecar waits for is still announced. Released records keep
// the fencing token for lock.TokenRetention only.
func TestRedisUncontendedLockCost(t *testing.T) {
	rd := testharness.StartRedis(t)
	rdb := rd.Client(t)
	ctx := context.Background()
	st := lock.NewRedisStore(rdb, "cost", 5*time.Second)
	if err := redisx.LoadScripts(ctx, rdb, lock.Scripts...); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		queued  bool // the acquisition is a waiting caller's (TryAcquireQueued)
		fresh   bool // a key never used before
		maxCmds int64
	}{
		{name: "try-lock, fresh key", fresh: true, maxCmds: 8},
		{name: "try-lock, key used before", maxCmds: 8},
		{name: "waiting caller granted at once", queued: true, maxCmds: 8},
	}
	var last uint64
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := "k"
			if tc.fresh {
				key = "fresh-" + strconv.Itoa(i)
			}
			lease := "lease-" + strconv.Itoa(i)
			before := commandCalls(t, rdb)
			var l lock.Lease
			var ok bool
			var err error
			if tc.queued {
				l, _, ok, _, err = st.TryAcquireQueued(ctx, key, lease, "o", time.Minute, false, time.Minute)
			} else {
				l, _, ok, err = st.TryAcquire(ctx, key, lease, "o", time.Minute)
			}
			if err != nil || !ok {
				t.Fatalf("acquire: ok %v, err %v", ok, err)
			}
			if err := st.Release(ctx, key, lease); err != nil {
				t.Fatalf("release: %v", err)
			}
			total, by := commandsSince(t, rdb, before)
			t.Logf("pair: %d commands %v", total, by)
			if total > tc.maxCmds {
				t.Errorf("pair ran %d commands %v; want at most %d", total, by, tc.maxCmds)
			}
			for _, c := range []string{"spublish", "zrange", "zrangebyscore", "zrem"} {
				if by[c] > 0 {
					t.Errorf("pair ran %s %d times; want none on a key nobody waits for", c, by[c])
				}
			}
			if !tc.fresh {
				if l.FencingToken <= last {
					t.Errorf("fencing token %d after %d; want increasing", l.FencingToken, last)
				}
				last = l.FencingToken
			}
			pttl, err := rdb.PTTL(ctx, redisx.Key("cost", redisx.Lock, key, "lock")).Result()
			if err != nil || pttl <= 0 || pttl > lock.TokenRetention {
				t.Errorf("released record's time to live %v (%v); want (0, %v]", pttl, err, lock.TokenRetention)
			}
		})
	}

	t.Run("release of a key a sidecar waits for is announced", func(t *testing.T) {
		other := lock.NewRedisStore(rdb, "cost", 5*time.Second, lock.WithInstanceID("other"))
		if _, _, ok, err := st.TryAcquire(ctx, "w", "holder", "o", time.Minute); err != nil || !ok {
			t.Fatalf("acquire: %v %v", ok, err)
		}
		if _, _, ok, _, err := other.TryAcquireQueued(ctx, "w", "waiter", "o", time.Minute, false, time.Minute); err != nil || ok {
			t.Fatalf("queued acquire of a held lock: ok %v, err %v; want refused", ok, err)
		}
		before := commandCalls(t, rdb)
		if err := st.Release(ctx, "w", "holder"); err != nil {
			t.Fatal(err)
		}
		if _, by := commandsSince(t, rdb, before); by["spublish"] != 1 {
			t.Fatalf("release with a sidecar queued: %v; want one spublish", by)
		}
	})
}

// TestRedisLockReadsEarlierHashRecord: a lock record of the earlier hash
// form is taken over with its holder and fencing token: a held lease stays
// held (mutual exclusion across an upgrade) and the next token is higher.
func TestRedisLockReadsEarlierHashRecord(t *testing.T) {
	rd := testharness.StartRedis(t)
	rdb := rd.Client(t)
	ctx := context.Background()
	st := lock.NewRedisStore(rdb, "old", 5*time.Second)
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	const fence = uint64(1) << 52 // above any TIME floor: the counter must be used
	k := redisx.Key("old", redisx.Lock, "k", "lock")
	exp := now.Add(time.Minute).UnixMilli()
	if err := rdb.HSet(ctx, k, "lease", "old-lease", "owner", "old-owner", "exp", exp, "fence", fence).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.PExpire(ctx, k, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	_, holder, ok, err := st.TryAcquire(ctx, "k", "new-lease", "new-owner", time.Minute)
	if err != nil || ok || holder.Owner != "old-owner" || holder.FencingToken != fence {
		t.Fatalf("acquire of a lock held in the old form: ok %v, holder %+v, err %v; want refused, held by old-owner with token %d", ok, holder, err, fence)
	}
	if err := st.Release(ctx, "k", "old-lease"); err != nil {
		t.Fatalf("release by the old record's lease: %v", err)
	}
	l, _, ok, err := st.TryAcquire(ctx, "k", "new-lease", "new-owner", time.Minute)
	if err != nil || !ok || l.FencingToken <= fence {
		t.Fatalf("acquire after release: ok %v, lease %+v, err %v; want a token above %d", ok, l, err, fence)
	}
}
