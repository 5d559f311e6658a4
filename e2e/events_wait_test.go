package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// TestEventsPublishWaitsForReplicas (issue 25, 4): with
// --redis-wait-replicas 1, a publish succeeds only once the replica has
// the event. The replica frozen, Publish fails
// UNAVAILABLE/REPLICATION_SHORTFALL (and so does its retry with the same
// idempotency key: the duplicate waits too), and the outbox relay leaves
// its row unmarked; once the replica is back the row is marked, and the
// stream holds its event once (the master's first append, the retries
// deduplicated).
func TestEventsPublishWaitsForReplicas(t *testing.T) {
	master := testharness.StartRedis(t, testharness.WithRedisArgs("--repl-diskless-sync-delay", "0"))
	host, port, _ := strings.Cut(master.Addr(), ":")
	replica := testharness.StartRedis(t, testharness.WithRedisArgs("--replicaof", host, port))
	pg := testharness.StartPostgres(t)
	bin := testharness.BuildSidecar(t)
	ctx := ctxT(t, 2*time.Minute)
	rc := replica.Client(t)
	testkit.EventuallyNil(t, 20*time.Second, "replica in sync", func() error {
		info, err := rc.Info(ctx, "replication").Result()
		if err == nil && !strings.Contains(info, "master_link_status:up") {
			err = fmt.Errorf("replication: %q", info)
		}
		return err
	})
	cfg := outboxConfigWith(t, pg.URL(), "", "")
	sc := testharness.StartSidecar(t, bin, "--config", cfg, "--redis-url", master.URL(), "--log-level", "warn",
		"--redis-wait-replicas", "1", "--redis-wait-timeout", "500ms", "--store-timeout", "2s")
	ev := v1.NewEventServiceClient(sc.Conn(t))
	conn, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	insert := func(p string) {
		t.Helper()
		if _, err := conn.Exec(ctx, `INSERT INTO outbox (topic, payload) VALUES ($1, $2)`, outboxTopic, []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ev.Publish(ctx, &v1.PublishRequest{Topic: outboxTopic, Payload: []byte("direct-1"), IdempotencyKey: "d1"}); err != nil {
		t.Fatalf("publish with the replica up: %v", err)
	}
	insert("row-1")
	testkit.Eventually(t, left(ctx), "row-1 marked", func() bool { return countUnpublished(t, ctx, conn) == 0 })

	replica.Pause()
	for range 2 { // the first publish, and its retry (a duplicate on the master)
		_, err := ev.Publish(ctx, &v1.PublishRequest{Topic: outboxTopic, Payload: []byte("direct-2"), IdempotencyKey: "d2"})
		if code, reason := reasonOf(err); code != codes.Unavailable || reason != "REPLICATION_SHORTFALL" {
			t.Fatalf("publish with the replica frozen: %v; want UNAVAILABLE/REPLICATION_SHORTFALL", err)
		}
	}
	insert("row-2")
	testkit.Eventually(t, left(ctx), "the relay's publish refused for want of the replica", func() bool {
		st := outboxStatus(t, ctx, sc)
		return !st.GetHealthy() && strings.Contains(st.GetLastError(), "row ")
	})
	if n := countUnpublished(t, ctx, conn); n != 1 {
		t.Fatalf("%d rows unmarked with the replica frozen, want row-2", n)
	}
	replica.Resume()
	testkit.Eventually(t, left(ctx), "row-2 marked once the replica is back", func() bool { return countUnpublished(t, ctx, conn) == 0 })
	if _, err := ev.Publish(ctx, &v1.PublishRequest{Topic: outboxTopic, Payload: []byte("direct-2"), IdempotencyKey: "d2"}); err != nil {
		t.Fatalf("retry with the replica back: %v", err)
	}
	seen := streamPayloads(t, ctx, master.Client(t), outboxTopic)
	for _, p := range []string{"direct-1", "row-1", "direct-2", "row-2"} {
		if seen[p] != 1 {
			t.Errorf("%s appended %d times, want once", p, seen[p])
		}
	}
	// And the replica has them all.
	testkit.Eventually(t, left(ctx), "the replica holds every event", func() bool {
		return len(streamPayloads(t, ctx, rc, outboxTopic)) == 4
	})
}
