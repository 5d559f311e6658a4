package outbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/outbox"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// runRelay runs a relay that the test may stop early with the returned
// stop (also called at cleanup; safe twice).
func runRelay(t *testing.T, o outbox.Options) (*outbox.Relay, func()) {
	t.Helper()
	r, err := outbox.New(o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			r.Close()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return r, stop
}

// activeOf returns the indexes of the active relays.
func activeOf(rs []*outbox.Relay) []int {
	var a []int
	for i, r := range rs {
		if r.Status().Active {
			a = append(a, i)
		}
	}
	return a
}

// TestRelayOneActivePerTable: of three relays of one table exactly one is
// active, the others are healthy standbys reporting no backlog; when the
// active one stops, a standby takes over (woken by its notification), and
// the rows keep their id order in the stream across the hand-over.
func TestRelayOneActivePerTable(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, 2*time.Minute)
	rec := newRecorder()
	var relays []*outbox.Relay
	var stops []func()
	for range 3 {
		// An hour between standby polls: only the active relay's
		// notification on stop can hand the table over within the test.
		r, stop := runRelay(t, outbox.Options{URL: url, Publisher: rec, BatchSize: 10, PollInterval: 20 * time.Millisecond, StandbyPoll: time.Hour, LeaderTimeout: time.Hour})
		relays, stops = append(relays, r), append(stops, stop)
	}
	testkit.Eventually(t, relayWait, "one active relay, two healthy standbys", func() bool {
		healthy := 0
		for _, r := range relays {
			if r.Status().Healthy {
				healthy++
			}
		}
		return len(activeOf(relays)) == 1 && healthy == 3
	})
	first := activeOf(relays)[0]
	for i, r := range relays {
		if st := r.Status(); i != first && (st.Backlog != 0 || st.BacklogKnown || st.Lag != 0) {
			t.Errorf("standby %d status %+v: want backlog unknown and lag 0", i, st)
		}
	}
	conn := pg.Conn(t, url)
	var ids []int64
	for i := range 5 {
		ids = append(ids, insertRows(t, ctx, conn, "orders", "a"+strconv.Itoa(i), 20, true)...)
	}
	testkit.Eventually(t, relayWait, "the first rows published", func() bool { return rec.appendedCount() >= 30 })
	stops[first]()
	testkit.Eventually(t, relayWait, "a standby took over", func() bool {
		a := activeOf(relays)
		return len(a) == 1 && a[0] != first
	})
	for i := range 5 {
		ids = append(ids, insertRows(t, ctx, conn, "orders", "b"+strconv.Itoa(i), 20, true)...)
	}
	testkit.Eventually(t, relayWait, "every row published", func() bool { return unpublished(t, ctx, conn) == 0 })

	// The stream holds the rows in id order: one relay at a time.
	d := readTopic(t, rec.svc, "orders")
	var got []int64
	for _, ev := range d {
		id, err := strconv.ParseInt(ev.Headers[outbox.HeaderID], 10, 64)
		if err != nil || ev.Headers[outbox.HeaderTable] != "outbox" || ev.IdempotencyKey != outbox.IdempotencyKey("outbox", id) {
			t.Fatalf("event %+v does not name its row", ev)
		}
		got = append(got, id)
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("stream order %v, want the row ids in order %v", got, ids)
	}
}

// readTopic reads every event of topic through a fresh group.
func readTopic(t *testing.T, svc *events.Service, topic string) []events.Delivery {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	sub, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: topic, Group: fmt.Sprintf("read-%d", time.Now().UnixNano()), Consumer: "c", MaxInFlight: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var out []events.Delivery
	for {
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		d, err := sub.Next(short)
		cancel()
		if err != nil {
			return out
		}
		out = append(out, d)
		if _, err := svc.Ack(ctx, topic, sub.Options().Group, d.ID); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRelayBackoffEndsWhenPostgresAnswers: the relay's backoff after a
// Postgres failure is an hour here; when Postgres is back, its first
// answer (to the stats probe) ends the backoff, and the rows are relayed
// long before the hour (the test's bound is what fails otherwise).
func TestRelayBackoffEndsWhenPostgresAnswers(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.URL()
	ctx := ctxT(t, 2*time.Minute)
	rec := newRecorder()
	r, _ := runRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 20 * time.Millisecond, StatsInterval: 50 * time.Millisecond,
		MinBackoff: time.Hour, MaxBackoff: time.Hour})
	testkit.Eventually(t, relayWait, "active", func() bool { return r.Status().Active })
	pg.Kill()
	testkit.Eventually(t, relayWait, "unhealthy", func() bool { return !r.Status().Healthy })
	pg.Restart()
	conn := pg.Conn(t, url)
	ids := insertRows(t, ctx, conn, "orders", "after", 5, true)
	restarted := time.Now()
	testkit.Eventually(t, relayWait, "rows published after Postgres is back", func() bool { return unpublished(t, ctx, conn) == 0 })
	t.Logf("backlog drained %v after Postgres was back (backoff an hour)", time.Since(restarted).Round(time.Millisecond))
	committed := map[int64]bool{}
	for _, id := range ids {
		committed[id] = true
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for id := range committed {
		if rec.appended[outbox.IdempotencyKey("outbox", id)] != 1 {
			t.Errorf("row %d not published once", id)
		}
	}
}

// TestRelayLagGrowsWhilePostgresIsDown: with a row waiting (its publish
// fails), lag is its age; once Postgres is down the backlog is unknown and
// the lag keeps growing (not frozen at its last value), in Status and in
// resilience_outbox_lag_seconds.
func TestRelayLagGrowsWhilePostgresIsDown(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.URL()
	ctx := ctxT(t, 2*time.Minute)
	rec := newRecorder()
	rec.failing.Store(true)
	m := metrics.New()
	r, _ := runRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 20 * time.Millisecond, StatsInterval: 50 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Metrics: m})
	conn := pg.Conn(t, url)
	insertRows(t, ctx, conn, "orders", "stuck", 1, true)
	testkit.Eventually(t, relayWait, "backlog 1 known, with its lag", func() bool {
		st := r.Status()
		return st.BacklogKnown && st.Backlog == 1 && st.Lag > 0
	})
	pg.Kill()
	testkit.Eventually(t, relayWait, "backlog unknown", func() bool { return !r.Status().BacklogKnown })
	lag1, gauge1 := r.Status().Lag, gauge(t, m, "resilience_outbox_lag_seconds")
	testkit.Eventually(t, relayWait, "lag grows by a second while Postgres is down", func() bool {
		return r.Status().Lag > lag1+time.Second && gauge(t, m, "resilience_outbox_lag_seconds") > gauge1+1
	})
	if st := r.Status(); st.Backlog != 0 || st.Healthy {
		t.Errorf("status while Postgres is down %+v: want backlog 0 (unknown) and unhealthy", st)
	}
	if b := gauge(t, m, "resilience_outbox_backlog"); b == b { // NaN is the one value unequal to itself
		t.Errorf("resilience_outbox_backlog = %v while Postgres is down, want NaN (unknown)", b)
	}
	t.Logf("lag %v when Postgres went down, %v later", lag1.Round(time.Millisecond), r.Status().Lag.Round(time.Millisecond))
}

// gauge reads one unlabelled gauge of m.
func gauge(t *testing.T, m *metrics.Metrics, name string) float64 {
	t.Helper()
	for _, mf := range gather(t, m) {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("gauge %s not found", name)
	return 0
}

func gather(t *testing.T, m *metrics.Metrics) []*dto.MetricFamily {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// TestRelayRefusedRowsRetried: refused rows stay out of backlog and lag
// and have their own gauge; a fixed row is published by the periodic
// retry, without a restart; a deleted one is forgotten, and last_refused
// stops naming it; each refusal is logged once however often it is
// retried.
func TestRelayRefusedRowsRetried(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, 2*time.Minute)
	conn := pg.Conn(t, url)
	insertBad := func(topic, headers string) int64 {
		t.Helper()
		var id int64
		if err := conn.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, 'k', 'x', $2) RETURNING id`, topic, headers).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	fixedLater, deleted, stays := insertBad("orders", "[1]"), insertBad("not a topic", "{}"), insertBad("orders", `"text"`)
	good := insertRows(t, ctx, conn, "orders", "good", 3, true)

	var logs syncBuffer
	m := metrics.New()
	rec := newRecorder()
	r, _ := runRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 20 * time.Millisecond, StatsInterval: 50 * time.Millisecond,
		RefusedRetryInterval: 200 * time.Millisecond, Metrics: m, Log: jsonLog(&logs)})
	testkit.Eventually(t, relayWait, "good rows published, three refused, backlog 0 known", func() bool {
		st := r.Status()
		return rec.appendedCount() == len(good) && st.Refused == 3 && st.BacklogKnown && st.Backlog == 0 && st.Lag == 0 && st.Healthy
	})
	if st := r.Status(); !strings.Contains(st.LastRefused, fmt.Sprintf("row %d:", stays)) || st.OldestRefusedAge <= 0 {
		t.Errorf("status %+v: want last_refused naming row %d and an age", st, stays)
	}
	testkit.Eventually(t, relayWait, "resilience_outbox_refused_rows 3", func() bool { return gauge(t, m, "resilience_outbox_refused_rows") == 3 })

	// Fixed: published by the periodic retry. Deleted: forgotten.
	if _, err := conn.Exec(ctx, `UPDATE outbox SET headers = '{"fixed":"yes"}' WHERE id = $1`, fixedLater); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `DELETE FROM outbox WHERE id = $1`, deleted); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, relayWait, "the fixed row published, the deleted one forgotten", func() bool {
		return rec.appendedCount() == len(good)+1 && r.Status().Refused == 1
	})
	if st := r.Status(); !strings.Contains(st.LastRefused, fmt.Sprintf("row %d:", stays)) {
		t.Errorf("last_refused %q, want row %d (the others are gone)", st.LastRefused, stays)
	}
	if _, err := conn.Exec(ctx, `DELETE FROM outbox WHERE id = $1`, stays); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, relayWait, "no refused row left", func() bool {
		st := r.Status()
		return st.Refused == 0 && st.LastRefused == "" && st.OldestRefusedAge == 0
	})
	testkit.Eventually(t, relayWait, "resilience_outbox_refused_rows 0", func() bool { return gauge(t, m, "resilience_outbox_refused_rows") == 0 })
	for _, id := range []int64{fixedLater, deleted, stays} {
		if n := strings.Count(logs.String(), fmt.Sprintf(`"row":%d,`, id)); n != 1 {
			t.Errorf("row %d logged %d times as refused, want once", id, n)
		}
	}
}

// TestRelayRetryRefusedNow: with the periodic retry an hour away,
// RetryRefused on the active relay publishes a fixed row at once and
// reports it; asked of a standby, it is passed on to the active relay,
// which publishes the next fixed row.
func TestRelayRetryRefusedNow(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, time.Minute)
	conn := pg.Conn(t, url)
	insertBad := func() int64 {
		t.Helper()
		var id int64
		if err := conn.QueryRow(ctx, `INSERT INTO outbox (topic, payload, headers) VALUES ('orders', 'x', '[1]') RETURNING id`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	bad, second := insertBad(), insertBad()
	rec := newRecorder()
	var rs []*outbox.Relay
	for range 2 {
		r, _ := runRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 20 * time.Millisecond, RefusedRetryInterval: time.Hour})
		rs = append(rs, r)
	}
	testkit.Eventually(t, relayWait, "one active relay, both rows refused", func() bool {
		a := activeOf(rs)
		return len(a) == 1 && rs[a[0]].Status().Refused == 2
	})
	r, standby := rs[activeOf(rs)[0]], rs[1-activeOf(rs)[0]]
	if res, err := r.RetryRefused(ctx); err != nil || !res.Active || res.Published != 0 || res.Refused != 2 {
		t.Fatalf("RetryRefused before the fix = %+v, %v; want both still refused", res, err)
	}
	if _, err := conn.Exec(ctx, `UPDATE outbox SET headers = '{}' WHERE id = $1`, bad); err != nil {
		t.Fatal(err)
	}
	res, err := r.RetryRefused(ctx)
	if err != nil || !res.Active || res.Published != 1 || res.Refused != 1 || res.Gone != 0 {
		t.Fatalf("RetryRefused after the fix = %+v, %v; want it published", res, err)
	}
	if n := unpublished(t, ctx, conn); n != 1 || rec.appendedCount() != 1 {
		t.Fatalf("%d unpublished, %d appended after the retry; want 1 and 1", n, rec.appendedCount())
	}
	if _, err := conn.Exec(ctx, `UPDATE outbox SET headers = '{}' WHERE id = $1`, second); err != nil {
		t.Fatal(err)
	}
	if res, err := standby.RetryRefused(ctx); err != nil || res.Active || !res.Forwarded {
		t.Fatalf("RetryRefused on the standby = %+v, %v; want forwarded", res, err)
	}
	testkit.Eventually(t, relayWait, "the second fixed row published by the active relay", func() bool {
		return unpublished(t, ctx, conn) == 0 && r.Status().Refused == 0
	})
}

// TestRelayRetention: in mark mode, published rows older than the
// retention are deleted in batches, younger ones and unpublished ones
// kept; resilience_outbox_retention_deleted_total counts them.
func TestRelayRetention(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, time.Minute)
	conn := pg.Conn(t, url)
	old := insertRows(t, ctx, conn, "orders", "old", 25, true)
	young := insertRows(t, ctx, conn, "orders", "young", 5, true)
	// Published long ago (as the relay would have marked them).
	if _, err := conn.Exec(ctx, `UPDATE outbox SET created_at = now() - interval '3 hours', published_at = now() - interval '2 hours' WHERE id = ANY($1)`, old); err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	rec := newRecorder()
	runRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 20 * time.Millisecond, Retention: time.Hour,
		RetentionInterval: 50 * time.Millisecond, RetentionBatch: 10, Metrics: m})
	testkit.Eventually(t, relayWait, "old published rows deleted, young ones published", func() bool {
		return rowCount(t, ctx, conn) == len(young) && unpublished(t, ctx, conn) == 0
	})
	var left int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE id = ANY($1)`, young).Scan(&left); err != nil || left != len(young) {
		t.Fatalf("young rows left %d, %v; want %d", left, err, len(young))
	}
	for _, mf := range gather(t, m) {
		if mf.GetName() == "resilience_outbox_retention_deleted_total" {
			if v := mf.GetMetric()[0].GetCounter().GetValue(); v != float64(len(old)) {
				t.Errorf("resilience_outbox_retention_deleted_total = %v, want %d", v, len(old))
			}
			return
		}
	}
	t.Error("resilience_outbox_retention_deleted_total missing")
}

// TestRelayDelayHistogramAndDedupKeep: each first publish is observed in
// resilience_outbox_publish_delay_seconds under its declared topic; once
// the rows are marked their idempotency keys live only DedupKeep, so the
// same key publishes anew after it.
func TestRelayDelayHistogramAndDedupKeep(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, time.Minute)
	conn := pg.Conn(t, url)
	m := metrics.New()
	rec := newRecorder()
	runRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 20 * time.Millisecond, Metrics: m,
		Topics: []string{"orders"}, DedupKeep: 200 * time.Millisecond})
	ids := insertRows(t, ctx, conn, "orders", "h", 7, true)
	insertRows(t, ctx, conn, "undeclared", "u", 2, true)
	testkit.Eventually(t, relayWait, "rows published", func() bool { return unpublished(t, ctx, conn) == 0 })
	counts := map[string]uint64{}
	for _, mf := range gather(t, m) {
		if mf.GetName() != "resilience_outbox_publish_delay_seconds" {
			continue
		}
		for _, x := range mf.GetMetric() {
			counts[x.GetLabel()[0].GetValue()] = x.GetHistogram().GetSampleCount()
		}
	}
	if counts["orders"] != 7 || counts[""] != 2 || len(counts) != 2 {
		t.Errorf("delay histogram counts by topic %v, want orders 7 and (undeclared) \"\" 2", counts)
	}
	key := outbox.IdempotencyKey("outbox", ids[0])
	testkit.Eventually(t, relayWait, "the marked row's key expired after DedupKeep", func() bool {
		p, err := rec.svc.Publish(ctx, events.Message{Topic: "orders", IdempotencyKey: key})
		return err == nil && !p.Duplicate
	})
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func jsonLog(w *syncBuffer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }
