package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
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

// TestOutboxPostgresAndRedisOutages: while Postgres is stopped the relay
// reports an unhealthy outbox with its error, the backlog as unknown and
// a lag that keeps growing (issue 25, 3), and resumes when it is back;
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
	// The lag grows (from the last contact: the backlog was 0), in the
	// status and the gauge, and the backlog is unknown, not stale.
	st := outboxStatus(t, ctx, sc)
	lag1, gauge1 := st.GetLag().AsDuration(), metricValue(t, maddr, "resilience_outbox_lag_seconds")
	// Eight seconds: long enough for the relay's backoff to grow past
	// five seconds, which the first answer of Postgres ends.
	testkit.Eventually(t, left(ctx), "lag grows by eight seconds while Postgres is stopped", func() bool {
		st := outboxStatus(t, ctx, sc)
		return st.GetLag().AsDuration() > lag1+8*time.Second && metricValue(t, maddr, "resilience_outbox_lag_seconds") > gauge1+8
	})
	st = outboxStatus(t, ctx, sc)
	if st.GetBacklogKnown() || st.GetBacklog() != 0 || st.GetActive() {
		t.Errorf("status while Postgres is stopped %v: want backlog unknown, not active", st)
	}
	if v := metricValue(t, maddr, "resilience_outbox_backlog"); v == v { // NaN: unknown
		t.Errorf("resilience_outbox_backlog = %v while Postgres is stopped, want NaN (unknown)", v)
	}
	t.Logf("lag while Postgres is stopped: %v, then %v", lag1.Round(time.Millisecond), st.GetLag().AsDuration().Round(time.Millisecond))
	pg.Restart()
	back := time.Now()
	second := insert("after-postgres", 10)
	testkit.Eventually(t, left(ctx), "rows published after Postgres is back", func() bool { return unpublished() == 0 })
	t.Logf("rows inserted after the restart published %v after Postgres was back", time.Since(back).Round(time.Millisecond))
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
		return st.GetHealthy() && st.GetBacklogKnown() && st.GetBacklog() == 0 && st.GetPublished() == 30
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
