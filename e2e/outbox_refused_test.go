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

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// outboxConfigWith writes a sidecar config whose outbox section relays the
// table at pgURL, with extra lines for the outbox section and the events
// section.
func outboxConfigWith(t *testing.T, pgURL, outboxExtra, eventsExtra string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sidecar.yaml")
	cfg := fmt.Sprintf("outbox:\n  postgres_url: %q\n  poll_interval: 100ms\n%s", pgURL, outboxExtra)
	if eventsExtra != "" {
		cfg += "events:\n" + eventsExtra
	}
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOutboxPoisonRowsFixedWithoutRestart (issue 25, 3): two sidecars
// relay a table holding two poison rows (headers that are not a JSON
// object, an invalid topic). The active relay skips them and relays the
// rows around them; they stay out of backlog and lag (the status is
// healthy with lag 0) and show as refused with their age; each is logged
// once, by the active relay only. One row fixed in place is published by
// the periodic retry, the other, fixed too, at once by RetryOutboxRefused
// asked of the standby (which passes it on): no restart. Then nothing is
// refused and last_refused is empty.
func TestOutboxPoisonRowsFixedWithoutRestart(t *testing.T) {
	rd := testharness.StartRedis(t)
	pg := testharness.StartPostgres(t)
	bin := testharness.BuildSidecar(t)
	ctx := ctxT(t, 3*time.Minute)
	conn, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	insert := func(topic, headers, payload string) int64 {
		t.Helper()
		var id int64
		if err := conn.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, 'k', $2, $3) RETURNING id`,
			topic, []byte(payload), headers).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	insert(outboxTopic, "{}", "good-1")
	badHeaders := insert(outboxTopic, "[1,2]", "bad-headers")
	badTopic := insert("not a topic", "{}", "bad-topic")
	insert(outboxTopic, "{}", "good-2")

	// The periodic retry every 2s; the RPC is what publishes the second
	// fix (the test fixes it and asks at once).
	cfg := outboxConfigWith(t, pg.URL(), "  refused_retry_interval: 2s\n", "")
	args := []string{"--config", cfg, "--redis-url", rd.URL(), "--log-level", "warn"}
	sidecars := []*testharness.Sidecar{testharness.StartSidecar(t, bin, args...), testharness.StartSidecar(t, bin, args...)}
	var active, standby *testharness.Sidecar
	testkit.Eventually(t, left(ctx), "one sidecar active with two refused rows, both healthy", func() bool {
		a, b := outboxStatus(t, ctx, sidecars[0]), outboxStatus(t, ctx, sidecars[1])
		if b.GetActive() {
			a, b = b, a
			active, standby = sidecars[1], sidecars[0]
		} else {
			active, standby = sidecars[0], sidecars[1]
		}
		return a.GetActive() && a.GetRefused() == 2 && a.GetHealthy() && a.GetBacklogKnown() && a.GetBacklog() == 0 &&
			!b.GetActive() && b.GetHealthy() && b.GetRefused() == 0
	})
	st := outboxStatus(t, ctx, active)
	if st.GetLag().AsDuration() != 0 || st.GetOldestRefusedAge().AsDuration() <= 0 || !strings.Contains(st.GetLastRefused(), fmt.Sprintf("row %d:", badTopic)) {
		t.Errorf("active status %v: want lag 0 (refused rows left out), their age, last_refused naming row %d", st, badTopic)
	}
	rdb := rd.Client(t)
	testkit.Eventually(t, left(ctx), "the good rows published", func() bool {
		seen := streamPayloads(t, ctx, rdb, outboxTopic)
		return seen["good-1"] == 1 && seen["good-2"] == 1
	})

	// Fixed in place: the periodic retry publishes it.
	if _, err := conn.Exec(ctx, `UPDATE outbox SET headers = '{"fixed":"in place"}' WHERE id = $1`, badHeaders); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, left(ctx), "the fixed row published by the periodic retry", func() bool {
		return streamPayloads(t, ctx, rdb, outboxTopic)["bad-headers"] == 1
	})
	// Fixed, and a retry asked of the standby.
	if _, err := conn.Exec(ctx, `UPDATE outbox SET topic = $2 WHERE id = $1`, badTopic, outboxTopic); err != nil {
		t.Fatal(err)
	}
	r, err := v1.NewEventServiceClient(standby.Conn(t)).RetryOutboxRefused(ctx, &v1.RetryOutboxRefusedRequest{})
	if err != nil || r.GetActive() || !r.GetForwarded() {
		t.Fatalf("RetryOutboxRefused on the standby = %v, %v; want forwarded", r, err)
	}
	testkit.Eventually(t, left(ctx), "the second fixed row published", func() bool {
		return streamPayloads(t, ctx, rdb, outboxTopic)["bad-topic"] == 1
	})
	testkit.Eventually(t, left(ctx), "nothing refused any more", func() bool {
		st := outboxStatus(t, ctx, active)
		return st.GetRefused() == 0 && st.GetLastRefused() == "" && countUnpublished(t, ctx, conn) == 0
	})
	r, err = v1.NewEventServiceClient(active.Conn(t)).RetryOutboxRefused(ctx, &v1.RetryOutboxRefusedRequest{})
	if err != nil || !r.GetActive() || r.GetPublished() != 0 || r.GetStillRefused() != 0 {
		t.Fatalf("RetryOutboxRefused on the active relay = %v, %v; want nothing to retry", r, err)
	}

	// Each refusal logged once in all, though retried every 2s.
	for _, id := range []int64{badHeaders, badTopic} {
		n := 0
		for _, sc := range sidecars {
			for _, line := range strings.Split(sc.Log(), "\n") {
				if strings.Contains(line, "outbox row refused") && strings.Contains(line, fmt.Sprintf(`"row":%d,`, id)) {
					n++
				}
			}
		}
		if n != 1 {
			t.Errorf("row %d logged as refused %d times by the two sidecars, want once", id, n)
		}
	}
}
