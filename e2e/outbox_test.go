package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/outbox"
	"github.com/seed-a88e5317/resilience-sidecar/internal/redisx"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

const outboxTopic = "orders"

// outboxConfig writes a sidecar config whose outbox section relays the
// table at pgURL.
func outboxConfig(t *testing.T, pgURL string, batch int, poll string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sidecar.yaml")
	cfg := fmt.Sprintf("outbox:\n  postgres_url: %q\n  batch_size: %d\n  poll_interval: %s\n", pgURL, batch, poll)
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func outboxStatus(t *testing.T, ctx context.Context, sc *testharness.Sidecar) *v1.GetOutboxStatusResponse {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := v1.NewEventServiceClient(sc.Conn(t)).GetOutboxStatus(cctx, &v1.GetOutboxStatusRequest{})
	if err != nil {
		t.Fatalf("GetOutboxStatus: %v", err)
	}
	return st
}

// left is what remains before ctx's deadline: the bound of a wait that
// the test's ctx bounds as a whole (not a timing assertion).
func left(ctx context.Context) time.Duration {
	d, _ := ctx.Deadline()
	return time.Until(d)
}

func countUnpublished(t *testing.T, ctx context.Context, conn *pgx.Conn) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// streamPayloads reads the whole stream of topic from Redis (XRANGE, in
// pages) and returns how many times each payload appears.
func streamPayloads(t *testing.T, ctx context.Context, rdb *redis.Client, topic string) map[string]int {
	t.Helper()
	key := events.NewRedisStore(rdb, "default", time.Second).StreamKey(topic)
	seen := map[string]int{}
	start := "-"
	for {
		msgs, err := rdb.XRangeN(ctx, key, start, "+", 1000).Result()
		if err != nil {
			t.Fatalf("XRANGE %s: %v", key, err)
		}
		for _, m := range msgs {
			p, _ := m.Values["p"].(string)
			seen[p]++
		}
		if len(msgs) < 1000 {
			return seen
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// dedupEventPayloads returns, per row id, the payload of the event its
// idempotency key points at ("" when the key or the event is missing).
func dedupEventPayloads(t *testing.T, ctx context.Context, rdb *redis.Client, topic string, ids []int64) map[int64]string {
	t.Helper()
	stream := events.NewRedisStore(rdb, "default", time.Second).StreamKey(topic)
	pipe := rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		gets[i] = pipe.Get(ctx, stream+":dedup:"+redisx.Part(outbox.IdempotencyKey("outbox", id)))
	}
	_, _ = pipe.Exec(ctx)
	pipe = rdb.Pipeline()
	ranges := make([]*redis.XMessageSliceCmd, len(ids))
	for i, g := range gets {
		eid := g.Val()
		if eid == "" {
			eid = "0-0" // nothing there
		}
		ranges[i] = pipe.XRange(ctx, stream, eid, eid)
	}
	_, _ = pipe.Exec(ctx)
	out := make(map[int64]string, len(ids))
	for i, id := range ids {
		if msgs := ranges[i].Val(); len(msgs) == 1 && gets[i].Val() != "" {
			out[id], _ = msgs[0].Values["p"].(string)
		}
	}
	return out
}

// TestOutboxExactlyOnceThreeSidecars: 10 000 rows inserted by 20
// concurrent writers in transactions of 10 rows, every fifth transaction
// rolled back, while 3 sidecar processes relay the same table into one
// Redis; one sidecar is SIGKILLed while relaying and started again. Every
// committed row must be published exactly once (its idempotency key
// pointing at the event with its payload), no rolled-back row at all, and
// every committed row must end marked published.
func TestOutboxExactlyOnceThreeSidecars(t *testing.T) {
	const (
		writers   = 20
		txPerW    = 50
		rowsPerTx = 10
		total     = writers * txPerW * rowsPerTx
	)
	rd := testharness.StartRedis(t)
	pg := testharness.StartPostgres(t)
	bin := testharness.BuildSidecar(t)
	cfg := outboxConfig(t, pg.URL(), 50, "200ms")
	args := []string{"--config", cfg, "--redis-url", rd.URL(), "--log-level", "warn"}
	var sidecars [3]*testharness.Sidecar
	for i := range sidecars {
		sidecars[i] = testharness.StartSidecar(t, bin, args...)
	}
	ctx := ctxT(t, 10*time.Minute)

	var (
		mu         sync.Mutex
		committed  = map[string]int64{} // payload -> row id
		rolledBack = map[string]bool{}
		inserted   atomic.Int64
		wg         sync.WaitGroup
		errs       = make(chan error, writers)
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, pg.URL())
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			for x := 0; x < txPerW; x++ {
				commit := (w+x)%5 != 0
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				rows := map[string]int64{}
				for r := 0; r < rowsPerTx; r++ {
					payload := fmt.Sprintf("w%d-t%d-r%d", w, x, r)
					var id int64
					if err := tx.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4) RETURNING id`,
						outboxTopic, fmt.Sprintf("w%d", w), []byte(payload), map[string]string{"writer": fmt.Sprint(w)}).Scan(&id); err != nil {
						_ = tx.Rollback(ctx)
						errs <- err
						return
					}
					rows[payload] = id
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
				for p, id := range rows {
					if commit {
						committed[p] = id
					} else {
						rolledBack[p] = true
					}
				}
				mu.Unlock()
				inserted.Add(rowsPerTx)
			}
		}()
	}

	// Kill one relay while the others are busy, then bring it back.
	check, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close(context.Background())
	testkit.Eventually(t, left(ctx), "a third of the rows inserted and some published", func() bool {
		var marked int
		_ = check.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NOT NULL`).Scan(&marked)
		return inserted.Load() >= total/3 && marked > 0 && outboxStatus(t, ctx, sidecars[0]).GetPublished() > 0
	})
	sidecars[0].Kill()
	t.Logf("sidecar 0 killed with %d rows inserted", inserted.Load())
	sidecars[0] = testharness.StartSidecar(t, bin, args...)

	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}
	if len(committed)+len(rolledBack) != total || len(rolledBack) == 0 {
		t.Fatalf("%d committed + %d rolled back, want %d rows with some rolled back", len(committed), len(rolledBack), total)
	}
	testkit.Eventually(t, left(ctx), "every committed row marked published", func() bool { return countUnpublished(t, ctx, check) == 0 })
	var rowsLeft int
	if err := check.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&rowsLeft); err != nil {
		t.Fatal(err)
	}
	if rowsLeft != len(committed) {
		t.Errorf("outbox holds %d rows, want the %d committed ones", rowsLeft, len(committed))
	}

	rdb := rd.Client(t)
	seen := streamPayloads(t, ctx, rdb, outboxTopic)
	dups, missing := 0, 0
	for p := range committed {
		switch n := seen[p]; {
		case n == 0:
			missing++
		case n > 1:
			dups++
		}
	}
	for p := range rolledBack {
		if seen[p] > 0 {
			t.Errorf("rolled-back row %s was published", p)
		}
	}
	if dups > 0 || missing > 0 || len(seen) != len(committed) {
		t.Fatalf("stream: %d distinct payloads for %d committed rows; %d published more than once, %d never", len(seen), len(committed), dups, missing)
	}
	ids := make([]int64, 0, len(committed))
	for _, id := range committed {
		ids = append(ids, id)
	}
	byID := dedupEventPayloads(t, ctx, rdb, outboxTopic, ids)
	for p, id := range committed {
		if byID[id] != p {
			t.Fatalf("row %d: its idempotency key points at payload %q, want %q", id, byID[id], p)
		}
	}

	for i, sc := range sidecars {
		testkit.Eventually(t, left(ctx), fmt.Sprintf("sidecar %d reports backlog 0", i), func() bool {
			st := outboxStatus(t, ctx, sc)
			return st.GetEnabled() && st.GetHealthy() && st.GetBacklog() == 0 && st.GetTable() == "outbox"
		})
	}
	t.Logf("%d committed rows published exactly once, %d rolled back, by 3 relays (one killed and restarted)", len(committed), len(rolledBack))
}

// TestOutboxPostgresAndRedisOutages: while Postgres is stopped the relay
// reports an unhealthy outbox with its error and resumes when it is back;
// while Redis is down (publishes fail) rows stay unmarked, and are
// published once it is back.
func TestOutboxPostgresAndRedisOutages(t *testing.T) {
	rd := testharness.StartRedis(t)
	pg := testharness.StartPostgres(t)
	bin := testharness.BuildSidecar(t)
	cfg := outboxConfig(t, pg.URL(), 20, "100ms")
	maddr := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, bin, "--config", cfg, "--redis-url", rd.URL(), "--log-level", "error", "--metrics-listen", maddr)
	ctx := ctxT(t, 3*time.Minute)
	rdb := rd.Client(t)

	insert := func(tag string, n int) []string {
		t.Helper()
		conn, err := pgx.Connect(ctx, pg.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var payloads []string
		for i := 0; i < n; i++ {
			p := fmt.Sprintf("%s-%d", tag, i)
			if _, err := conn.Exec(ctx, `INSERT INTO outbox (topic, payload) VALUES ($1, $2)`, outboxTopic, []byte(p)); err != nil {
				t.Fatal(err)
			}
			payloads = append(payloads, p)
		}
		return payloads
	}
	unpublished := func() int {
		t.Helper()
		conn, err := pgx.Connect(ctx, pg.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		return countUnpublished(t, ctx, conn)
	}

	first := insert("before", 10)
	testkit.Eventually(t, left(ctx), "first rows published", func() bool { return unpublished() == 0 })
	testkit.Eventually(t, left(ctx), "healthy outbox", func() bool { return outboxStatus(t, ctx, sc).GetHealthy() })

	// Postgres stopped: unhealthy, with the error.
	pg.Stop()
	testkit.Eventually(t, left(ctx), "unhealthy outbox while Postgres is stopped", func() bool {
		st := outboxStatus(t, ctx, sc)
		return st.GetEnabled() && !st.GetHealthy() && st.GetLastError() != ""
	})
	t.Logf("while Postgres is stopped: %s", outboxStatus(t, ctx, sc).GetLastError())
	if v := metricValue(t, maddr, "resilience_outbox_healthy"); v != 0 {
		t.Errorf("resilience_outbox_healthy = %v while Postgres is stopped, want 0", v)
	}
	pg.Restart()
	second := insert("after-postgres", 10)
	testkit.Eventually(t, left(ctx), "rows published after Postgres is back", func() bool { return unpublished() == 0 })
	testkit.Eventually(t, left(ctx), "healthy outbox again", func() bool { return outboxStatus(t, ctx, sc).GetHealthy() })

	// Redis down: publishes fail, and the rows must stay unmarked.
	rd.Kill()
	third := insert("redis-down", 10)
	testkit.Eventually(t, left(ctx), "a failed publish reported", func() bool {
		st := outboxStatus(t, ctx, sc)
		return !st.GetHealthy() && strings.Contains(st.GetLastError(), "row ")
	})
	if n := unpublished(); n != 10 {
		t.Fatalf("%d rows unpublished after failed publishes, want all 10", n)
	}
	rd.Restart()
	testkit.Eventually(t, left(ctx), "rows published after Redis is back", func() bool { return unpublished() == 0 })
	seen := streamPayloads(t, ctx, rdb, outboxTopic) // Redis restarted empty: only the third batch
	for _, p := range third {
		if seen[p] != 1 {
			t.Errorf("row %s published %d times after the Redis outage, want 1", p, seen[p])
		}
	}
	if len(seen) != len(third) {
		t.Errorf("stream holds %d events after the Redis restart, want %d", len(seen), len(third))
	}
	_, _ = first, second
	testkit.Eventually(t, left(ctx), "healthy outbox with backlog 0", func() bool {
		st := outboxStatus(t, ctx, sc)
		return st.GetHealthy() && st.GetBacklog() == 0 && st.GetPublished() == 30
	})
	for name, want := range map[string]float64{
		"resilience_outbox_published_total": 30, "resilience_outbox_healthy": 1,
		"resilience_outbox_backlog": 0, "resilience_outbox_lag_seconds": 0,
	} {
		if v := metricValue(t, maddr, name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
}
