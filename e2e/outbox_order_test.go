package e2e

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/outbox"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// outboxOrderRows is the size of TestOutboxOrderPerKeyThreeRelaysKill:
// committed rows (a fifth more are written and rolled back), issue 25's
// 20 000 by default.
var outboxOrderRows = flag.Int("outbox-order-rows", 20000, "TestOutboxOrderPerKeyThreeRelaysKill: rows the 8 writers commit")

// streamEntry is one outbox event as Redis holds it.
type streamEntry struct {
	id      string // event id
	payload string
	key     string
	rowID   string // x-outbox-id
	table   string // x-outbox-table
	idemKey string
}

// readStream reads the whole stream of topic from Redis, in order.
func readStream(t *testing.T, ctx context.Context, rdb *redis.Client, topic string) []streamEntry {
	t.Helper()
	key := events.NewRedisStore(rdb, "default", time.Second).StreamKey(topic)
	var out []streamEntry
	start := "-"
	for {
		msgs, err := rdb.XRangeN(ctx, key, start, "+", 1000).Result()
		if err != nil {
			t.Fatalf("XRANGE %s: %v", key, err)
		}
		for _, m := range msgs {
			s := func(f string) string { v, _ := m.Values[f].(string); return v }
			out = append(out, streamEntry{id: m.ID, payload: s("p"), key: s("k"), rowID: s("h:" + outbox.HeaderID),
				table: s("h:" + outbox.HeaderTable), idemKey: s("i")})
		}
		if len(msgs) < 1000 {
			return out
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// idTime is the time of an event id ("<ms>-<seq>"), by Redis's clock.
func idTime(id string) time.Time {
	ms, _, _ := strings.Cut(id, "-")
	n, _ := strconv.ParseInt(ms, 10, 64)
	return time.UnixMilli(n)
}

// TestOutboxOrderPerKeyThreeRelaysKill (issue 25, 1): 8 writers commit
// rows for their own keys (an aggregate each: one key per transaction,
// 1-3 rows, a per-key sequence number in the payload; every fifth
// transaction rolled back) while 3 sidecar processes relay the table into
// one Redis. Mid-run the active relay is SIGKILLed; a standby takes the
// table over before the killed sidecar is started again. The stream must
// hold every committed row exactly once (by its x-outbox-id header and
// idempotency key), no rolled-back row, and each key's rows in their
// sequence order: 0 per-key order breaks. The hand-over time (kill to the
// next event appended; kill to a survivor reporting itself active) is
// logged.
func TestOutboxOrderPerKeyThreeRelaysKill(t *testing.T) {
	const (
		writers      = 8
		keysPerW     = 4
		rollbackEach = 5
	)
	total := *outboxOrderRows
	rd := testharness.StartRedis(t)
	pg := testharness.StartPostgres(t)
	bin := testharness.BuildSidecar(t)
	cfg := outboxConfig(t, pg.URL(), 50, "200ms")
	args := []string{"--config", cfg, "--redis-url", rd.URL(), "--log-level", "warn"}
	var sidecars [3]*testharness.Sidecar
	for i := range sidecars {
		sidecars[i] = testharness.StartSidecar(t, bin, args...)
	}
	ctx := ctxT(t, 15*time.Minute)

	type written struct {
		key string
		seq int
	}
	var (
		mu         sync.Mutex
		committed  = map[string]written{} // row id -> its key and sequence number
		rolledBack = map[string]bool{}
		inserted   atomic.Int64 // committed rows
		wg         sync.WaitGroup
		errs       = make(chan error, writers)
	)
	for w := range writers {
		wg.Go(func() {
			conn, err := pgx.Connect(ctx, pg.URL())
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			seq := make([]int, keysPerW)
			rnd := rand.New(rand.NewPCG(uint64(w), 25))
			for x := 0; inserted.Load() < int64(total); x++ {
				k := rnd.IntN(keysPerW)
				key := fmt.Sprintf("w%d-k%d", w, k)
				commit := x%rollbackEach != rollbackEach-1
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				rows := map[string]written{}
				n := 1 + rnd.IntN(3)
				for r := range n {
					s := seq[k] + r + 1
					var id int64
					if err := tx.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, $3) RETURNING id`,
						outboxTopic, key, []byte(fmt.Sprintf("%s/%d", key, s))).Scan(&id); err != nil {
						_ = tx.Rollback(ctx)
						errs <- err
						return
					}
					rows[strconv.FormatInt(id, 10)] = written{key, s}
				}
				if commit {
					err = tx.Commit(ctx)
				} else {
					err = tx.Rollback(ctx)
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for id, r := range rows {
					if commit {
						committed[id] = r
					} else {
						rolledBack[id] = true
					}
				}
				mu.Unlock()
				if commit {
					seq[k] += n
					inserted.Add(int64(n))
				}
			}
		})
	}

	// Kill the active relay once a third of the rows are written and
	// some are published; a standby must take over while it is down.
	rdb := rd.Client(t)
	streamKey := events.NewRedisStore(rdb, "default", time.Second).StreamKey(outboxTopic)
	active := func() int {
		for i, sc := range sidecars {
			if outboxStatus(t, ctx, sc).GetActive() {
				return i
			}
		}
		return -1
	}
	testkit.Eventually(t, left(ctx), "a third of the rows written and some published", func() bool {
		n, _ := rdb.XLen(ctx, streamKey).Result()
		return inserted.Load() >= int64(total/3) && n > 0 && active() >= 0
	})
	victim := active()
	killed := time.Now()
	sidecars[victim].Kill()
	var survivor int
	testkit.Eventually(t, left(ctx), "a surviving sidecar took the table over", func() bool {
		for i, sc := range sidecars {
			if i != victim && outboxStatus(t, ctx, sc).GetActive() {
				survivor = i
				return true
			}
		}
		return false
	})
	tookOver := time.Since(killed)
	var firstAfter time.Duration
	testkit.Eventually(t, left(ctx), "an event appended after the kill", func() bool {
		last, err := rdb.XRevRangeN(ctx, streamKey, "+", "-", 1).Result()
		if err != nil || len(last) == 0 || !idTime(last[0].ID).After(killed) {
			return false
		}
		// The first event after the kill, by Redis's clock.
		after, err := rdb.XRangeN(ctx, streamKey, strconv.FormatInt(killed.UnixMilli()+1, 10), "+", 1).Result()
		if err == nil && len(after) == 1 {
			firstAfter = idTime(after[0].ID).Sub(killed)
		}
		return err == nil && len(after) == 1
	})
	t.Logf("active relay (sidecar %d) SIGKILLed with %d rows committed: sidecar %d reported itself active after %v, first event appended %v after the kill",
		victim, inserted.Load(), survivor, tookOver.Round(time.Millisecond), firstAfter.Round(time.Millisecond))
	sidecars[victim] = testharness.StartSidecar(t, bin, args...)

	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}
	if len(rolledBack) == 0 {
		t.Fatal("no transaction rolled back")
	}
	check, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close(context.Background())
	testkit.Eventually(t, left(ctx), "every committed row marked published", func() bool { return countUnpublished(t, ctx, check) == 0 })

	entries := readStream(t, ctx, rdb, outboxTopic)
	seen := map[string]int{}
	lastSeq := map[string]int{}
	breaks, dups, foreign := 0, 0, 0
	for _, e := range entries {
		w, ok := committed[e.rowID]
		switch {
		case rolledBack[e.rowID]:
			t.Errorf("rolled-back row %s published", e.rowID)
			continue
		case !ok:
			foreign++
			continue
		}
		if seen[e.rowID]++; seen[e.rowID] > 1 {
			dups++
			continue
		}
		if e.payload != fmt.Sprintf("%s/%d", w.key, w.seq) || e.key != w.key || e.table != "outbox" || e.idemKey != "outbox:outbox:"+e.rowID {
			t.Errorf("event %s = %+v, want row %s of key %s, sequence %d", e.id, e, e.rowID, w.key, w.seq)
		}
		if w.seq <= lastSeq[w.key] {
			breaks++
		}
		lastSeq[w.key] = max(lastSeq[w.key], w.seq)
	}
	missing := len(committed) - len(seen)
	t.Logf("%d committed rows (%d rolled back) of %d keys relayed by 3 sidecars, the active one killed: %d events, %d per-key order breaks, %d duplicates, %d missing",
		len(committed), len(rolledBack), len(lastSeq), len(entries), breaks, dups, missing)
	if breaks > 0 || dups > 0 || missing > 0 || foreign > 0 {
		t.Fatalf("%d per-key order breaks, %d rows published twice, %d never, %d events of no committed row; want none", breaks, dups, missing, foreign)
	}

	// One active relay reports the table; the others are healthy standbys.
	testkit.Eventually(t, left(ctx), "one active relay with backlog 0, two standbys", func() bool {
		actives, standbys := 0, 0
		for _, sc := range sidecars {
			st := outboxStatus(t, ctx, sc)
			switch {
			case st.GetActive() && st.GetHealthy() && st.GetBacklogKnown() && st.GetBacklog() == 0 && st.GetTable() == "public.outbox":
				actives++
			case !st.GetActive() && st.GetHealthy() && !st.GetBacklogKnown():
				standbys++
			}
		}
		return actives == 1 && standbys == 2
	})
}
