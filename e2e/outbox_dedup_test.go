package e2e

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// TestOutboxDuplicatesAfterDedupWindowNameTheirRow (issue 25, 2): with
// events.dedup_retention 1s, a batch is published and its mark then fails
// after the keys expired (a trigger sleeps 1.5s and raises, once), so the
// relay publishes the rows again and they are appended a second time.
// Each of the two events of a row carries the same origin: the
// x-outbox-table and x-outbox-id headers and the idempotency key
// "outbox:<table>:<id>", which a consumer can drop duplicates by, however
// late they come.
func TestOutboxDuplicatesAfterDedupWindowNameTheirRow(t *testing.T) {
	rd := testharness.StartRedis(t)
	pg := testharness.StartPostgres(t)
	bin := testharness.BuildSidecar(t)
	ctx := ctxT(t, 2*time.Minute)
	conn, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `
		CREATE SEQUENCE mark_attempts;
		CREATE FUNCTION fail_first_mark() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF nextval('mark_attempts') = 1 THEN
				PERFORM pg_sleep(1.5);
				RAISE EXCEPTION 'injected: the first mark fails after the dedup retention';
			END IF;
			RETURN NULL;
		END $$;
		CREATE TRIGGER fail_first_mark BEFORE UPDATE ON outbox FOR EACH STATEMENT EXECUTE FUNCTION fail_first_mark();`); err != nil {
		t.Fatal(err)
	}
	const rows = 5
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{} // row id -> payload
	for i := range rows {
		var id int64
		p := fmt.Sprintf("row-%d", i)
		if err := tx.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload) VALUES ($1, 'k', $2) RETURNING id`, outboxTopic, []byte(p)).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[strconv.FormatInt(id, 10)] = p
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	cfg := outboxConfigWith(t, pg.URL(), "", "  dedup_retention: 1s\n")
	sc := testharness.StartSidecar(t, bin, "--config", cfg, "--redis-url", rd.URL(), "--log-level", "warn")
	s, err := v1.NewEventServiceClient(sc.Conn(t)).Subscribe(ctx, &v1.SubscribeRequest{Topic: outboxTopic, Group: "consumer", Consumer: "c",
		MaxInFlight: 100})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := s.Recv(); err != nil || m.GetSubscribed() == nil {
		t.Fatalf("subscribed: %v, %v", m, err)
	}
	byRow := map[string][]*v1.Event{}
	for range 2 * rows {
		m, err := s.Recv()
		if err != nil {
			t.Fatalf("receiving (%d rows seen): %v", len(byRow), err)
		}
		ev := m.GetEvent()
		byRow[ev.GetHeaders()["x-outbox-id"]] = append(byRow[ev.GetHeaders()["x-outbox-id"]], ev)
	}
	for id, p := range ids {
		evs := byRow[id]
		if len(evs) != 2 {
			t.Fatalf("row %s: %d events, want 2 (published, then again after its key expired)", id, len(evs))
		}
		if evs[0].GetEventId() == evs[1].GetEventId() {
			t.Errorf("row %s: both events have id %s", id, evs[0].GetEventId())
		}
		for _, ev := range evs {
			if string(ev.GetPayload()) != p || ev.GetHeaders()["x-outbox-table"] != "outbox" || ev.GetIdempotencyKey() != "outbox:outbox:"+id {
				t.Errorf("row %s: event %v; want its payload, x-outbox-table outbox and idempotency key outbox:outbox:%s", id, ev, id)
			}
		}
	}
	if len(byRow) != rows {
		t.Fatalf("events of %d rows, want %d", len(byRow), rows)
	}
	t.Logf("%d rows appended twice (dedup retention 1s, the first mark failed 1.5s later): each pair names its row", rows)
}
