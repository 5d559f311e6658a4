package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/outbox"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// recorder publishes through a real events.Service (on the in-memory
// store) and records, per idempotency key, how many publishes appended an
// event (Duplicate false) and how many were deduplicated. While failing is
// set, every publish fails before reaching the service.
type recorder struct {
	svc     *events.Service
	failing atomic.Bool

	mu       sync.Mutex
	appended map[string]int
	dups     map[string]int
	payload  map[string]string // key -> payload
}

func newRecorder() *recorder {
	return &recorder{
		svc:      events.NewService(events.NewMemoryStore(nil), events.Options{}),
		appended: map[string]int{},
		dups:     map[string]int{},
		payload:  map[string]string{},
	}
}

var errInjected = errors.New("injected publish failure")

func (r *recorder) Publish(ctx context.Context, m events.Message) (events.Published, error) {
	if r.failing.Load() {
		return events.Published{}, errInjected
	}
	p, err := r.svc.Publish(ctx, m)
	if err != nil {
		return p, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if p.Duplicate {
		r.dups[m.IdempotencyKey]++
	} else {
		r.appended[m.IdempotencyKey]++
		r.payload[m.IdempotencyKey] = string(m.Payload)
	}
	return p, nil
}

func (r *recorder) ExpireDedup(ctx context.Context, topic string, keys []string, keep time.Duration) error {
	return r.svc.ExpireDedup(ctx, topic, keys, keep)
}

func (r *recorder) appendedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.appended)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startRelay runs a relay until the test ends.
func startRelay(t *testing.T, o outbox.Options) *outbox.Relay {
	t.Helper()
	r, err := outbox.New(o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	t.Cleanup(func() {
		r.Close()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// insertRows inserts n rows in one transaction, committed or rolled back,
// and returns their ids. The payload of each row is "p-<id>"-independent
// text chosen by the caller: "<tag>-<i>".
func insertRows(t *testing.T, ctx context.Context, conn *pgx.Conn, topic, tag string, n int, commit bool) []int64 {
	t.Helper()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	ids := make([]int64, 0, n)
	for i := 0; i < n; i++ {
		var id int64
		if err := tx.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4) RETURNING id`,
			topic, "k", []byte(fmt.Sprintf("%s-%d", tag, i)), map[string]any{"tag": tag, "n": i}).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if commit {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func unpublished(t *testing.T, ctx context.Context, conn *pgx.Conn) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func rowCount(t *testing.T, ctx context.Context, conn *pgx.Conn) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// relayWait bounds each wait for the relay (a bound for a loaded machine,
// not a timing assertion).
const relayWait = time.Minute

// checkExactlyOnce checks that every committed id was appended exactly
// once and nothing else was.
func checkExactlyOnce(t *testing.T, rec *recorder, committed map[int64]bool, rolledBack []int64) {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for id := range committed {
		if n := rec.appended[outbox.IdempotencyKey("outbox", id)]; n != 1 {
			t.Errorf("row %d appended %d times, want 1", id, n)
		}
	}
	for _, id := range rolledBack {
		if n := rec.appended[outbox.IdempotencyKey("outbox", id)]; n != 0 {
			t.Errorf("rolled-back row %d appended %d times", id, n)
		}
	}
	if len(rec.appended) != len(committed) {
		t.Errorf("%d distinct events appended, want %d", len(rec.appended), len(committed))
	}
}

func TestRelayPublishesEveryCommittedRowOnceWithThreeRelays(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, 2*time.Minute)
	rec := newRecorder()
	for i := 0; i < 3; i++ {
		startRelay(t, outbox.Options{URL: url, Publisher: rec, BatchSize: 25, PollInterval: 50 * time.Millisecond})
	}

	var mu sync.Mutex
	committed := map[int64]bool{}
	var rolledBack []int64
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := pg.Conn(t, url)
			for b := 0; b < 10; b++ {
				commit := (w+b)%5 != 0 // every fifth transaction rolls back
				ids := insertRows(t, ctx, conn, "orders", fmt.Sprintf("w%d-b%d", w, b), 10, commit)
				mu.Lock()
				if commit {
					for _, id := range ids {
						committed[id] = true
					}
				} else {
					rolledBack = append(rolledBack, ids...)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	check := pg.Conn(t, url)
	testkit.Eventually(t, relayWait, "every committed row marked", func() bool { return unpublished(t, ctx, check) == 0 })
	checkExactlyOnce(t, rec, committed, rolledBack)
	if got := rowCount(t, ctx, check); got != len(committed) {
		t.Errorf("mark mode left %d rows, want the %d committed ones", got, len(committed))
	}
}

func TestRelayDeleteMode(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, time.Minute)
	rec := newRecorder()
	r := startRelay(t, outbox.Options{URL: url, Publisher: rec, OnPublish: outbox.Delete, PollInterval: 50 * time.Millisecond})
	conn := pg.Conn(t, url)
	ids := insertRows(t, ctx, conn, "orders", "d", 30, true)
	testkit.Eventually(t, relayWait, "rows deleted", func() bool { return rowCount(t, ctx, conn) == 0 })
	committed := map[int64]bool{}
	for _, id := range ids {
		committed[id] = true
	}
	checkExactlyOnce(t, rec, committed, nil)
	testkit.Eventually(t, relayWait, "status counts 30 published and backlog 0", func() bool {
		st := r.Status()
		return st.Published == 30 && st.Backlog == 0 && st.BacklogKnown && st.Healthy
	})
	st := r.Status()
	if !st.Enabled || !st.Active || st.Table != "public.outbox" || st.LastPublishedAt.IsZero() || st.LastError != "" {
		t.Errorf("status = %+v", st)
	}
}

func TestRelayHeadersAndPayload(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, time.Minute)
	rec := newRecorder()
	sub, err := rec.svc.Subscribe(ctx, events.SubscribeOptions{Topic: "orders", Group: "g", Consumer: "c"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	startRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 50 * time.Millisecond})
	conn := pg.Conn(t, url)
	var id int64
	if err := conn.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload, headers) VALUES ('orders', 'order-7', '\x00ff', '{"trace":"abc","n":3}') RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	d, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ev := d.Event
	if ev.Topic != "orders" || ev.Key != "order-7" || string(ev.Payload) != "\x00\xff" ||
		ev.Headers["trace"] != "abc" || ev.Headers["n"] != "3" {
		t.Errorf("event = %+v", ev)
	}
}

func TestRelayWakesOnNotifyWithoutPolling(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, time.Minute)
	rec := newRecorder()
	// An hour between polls: only a notification can make the relay look
	// at the table again after its first (empty) cycle.
	r := startRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: time.Hour})
	testkit.Eventually(t, relayWait, "first cycle", func() bool { return r.Status().Healthy })
	conn := pg.Conn(t, url)
	for i := 0; i < 3; i++ {
		insertRows(t, ctx, conn, "orders", "n"+strconv.Itoa(i), 1, true)
		want := i + 1
		testkit.Eventually(t, relayWait, "notified row published", func() bool { return rec.appendedCount() == want })
	}
}

func TestRelayPublishFailureNeverMarks(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, time.Minute)
	rec := newRecorder()
	rec.failing.Store(true)
	r := startRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 20 * time.Millisecond,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	conn := pg.Conn(t, url)
	ids := insertRows(t, ctx, conn, "orders", "f", 20, true)
	testkit.Eventually(t, relayWait, "unhealthy with the publish error", func() bool {
		st := r.Status()
		return !st.Healthy && strings.Contains(st.LastError, errInjected.Error())
	})
	testkit.Eventually(t, relayWait, "backlog seen", func() bool { st := r.Status(); return st.Backlog == 20 && st.BacklogKnown })
	if n := unpublished(t, ctx, conn); n != 20 {
		t.Fatalf("%d rows unpublished while every publish fails, want 20", n)
	}
	if st := r.Status(); st.Published != 0 {
		t.Fatalf("Published = %d while every publish fails", st.Published)
	}
	rec.failing.Store(false)
	testkit.Eventually(t, relayWait, "all published after recovery", func() bool { return unpublished(t, ctx, conn) == 0 })
	testkit.Eventually(t, relayWait, "healthy again, error cleared", func() bool {
		st := r.Status()
		return st.Healthy && st.LastError == ""
	})
	committed := map[int64]bool{}
	for _, id := range ids {
		committed[id] = true
	}
	checkExactlyOnce(t, rec, committed, nil)
}

func TestRelayPostgresDownThenBack(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.URL() // the database that survives a restart unchanged
	ctx := ctxT(t, 2*time.Minute)
	rec := newRecorder()
	r := startRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 20 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	committed := map[int64]bool{}
	func() {
		conn := pg.Conn(t, url)
		for _, id := range insertRows(t, ctx, conn, "orders", "before", 10, true) {
			committed[id] = true
		}
		testkit.Eventually(t, relayWait, "first rows published", func() bool { return unpublished(t, ctx, conn) == 0 })
		_ = conn.Close(ctx)
	}()

	// Rows waiting while Postgres is down, their publishes failing too:
	// nothing may be marked.
	rec.failing.Store(true)
	conn := pg.Conn(t, url)
	waiting := insertRows(t, ctx, conn, "orders", "waiting", 10, true)
	_ = conn.Close(ctx)
	pg.Kill()
	testkit.Eventually(t, relayWait, "unhealthy with a Postgres error", func() bool {
		st := r.Status()
		return !st.Healthy && st.LastError != "" && !strings.Contains(st.LastError, errInjected.Error())
	})
	before := r.Status().Published
	pg.Restart()
	conn = pg.Conn(t, url)
	testkit.Eventually(t, relayWait, "relay fails on publish after Postgres is back", func() bool {
		return strings.Contains(r.Status().LastError, errInjected.Error())
	})
	if n := unpublished(t, ctx, conn); n != 10 {
		t.Fatalf("%d rows unpublished after restart with publishes failing, want 10", n)
	}
	if r.Status().Published != before {
		t.Fatal("rows counted published while publishes fail")
	}
	rec.failing.Store(false)
	for _, id := range waiting {
		committed[id] = true
	}
	for _, id := range insertRows(t, ctx, conn, "orders", "after", 10, true) {
		committed[id] = true
	}
	testkit.Eventually(t, relayWait, "every row published after recovery", func() bool { return unpublished(t, ctx, conn) == 0 })
	testkit.Eventually(t, relayWait, "healthy", func() bool { return r.Status().Healthy })
	checkExactlyOnce(t, rec, committed, nil)
}

func TestNewValidates(t *testing.T) {
	rec := newRecorder()
	for _, o := range []outbox.Options{
		{Publisher: rec},
		{URL: "postgres://x@127.0.0.1/db"},
		{URL: "postgres://x@127.0.0.1/db", Publisher: rec, Table: "Outbox"},
		{URL: "postgres://x@127.0.0.1/db", Publisher: rec, Table: "a;drop"},
		{URL: "postgres://x@127.0.0.1/db", Publisher: rec, Table: "a.b.c"},
		{URL: "postgres://x@127.0.0.1/db", Publisher: rec, NotifyChannel: "a.b"},
		{URL: "postgres://x@127.0.0.1/db", Publisher: rec, OnPublish: "drop"},
		{URL: "postgres://u:secret@127.0.0.1:notaport/db", Publisher: rec},
	} {
		_, err := outbox.New(o)
		if err == nil {
			t.Errorf("New(%+v) accepted", o)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
	if _, err := outbox.New(outbox.Options{URL: "postgres://x@127.0.0.1/db", Publisher: rec, Table: "app.outbox_v2"}); err != nil {
		t.Errorf("schema-qualified table refused: %v", err)
	}
}

// stallingPublisher publishes through rec until it has published after
// rows, then blocks every publish until its context ends: a relay stopped
// then is stopped mid-batch, after publishing rows it never marked.
type stallingPublisher struct {
	rec     *recorder
	after   int64
	n       atomic.Int64
	stalled chan struct{}
	once    sync.Once
}

func (p *stallingPublisher) ExpireDedup(ctx context.Context, topic string, keys []string, keep time.Duration) error {
	return p.rec.ExpireDedup(ctx, topic, keys, keep)
}

func (p *stallingPublisher) Publish(ctx context.Context, m events.Message) (events.Published, error) {
	if p.n.Add(1) > p.after {
		p.once.Do(func() { close(p.stalled) })
		<-ctx.Done()
		return events.Published{}, ctx.Err()
	}
	return p.rec.Publish(ctx, m)
}

// TestRelayStoppedMidBatchLosesNothing: a relay stopped after publishing
// part of a batch marks none of it; the next relay publishes the batch
// again, the EventService deduplicates the rows already published, and
// every row ends published exactly once.
func TestRelayStoppedMidBatchLosesNothing(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, time.Minute)
	rec := newRecorder()
	conn := pg.Conn(t, url)
	ids := insertRows(t, ctx, conn, "orders", "m", 40, true)

	stall := &stallingPublisher{rec: rec, after: 15, stalled: make(chan struct{})}
	first, err := outbox.New(outbox.Options{URL: url, Publisher: stall, BatchSize: 40, PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- first.Run(context.Background()) }()
	select {
	case <-stall.stalled:
	case <-ctx.Done():
		t.Fatal("the first relay never reached its 16th publish")
	}
	first.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := unpublished(t, ctx, conn); n != 40 {
		t.Fatalf("%d rows unpublished after a relay stopped mid-batch, want all 40", n)
	}
	if got := rec.appendedCount(); got != 15 {
		t.Fatalf("%d events appended before the stop, want 15", got)
	}

	startRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 20 * time.Millisecond})
	testkit.Eventually(t, relayWait, "every row published by the second relay", func() bool { return unpublished(t, ctx, conn) == 0 })
	committed := map[int64]bool{}
	for _, id := range ids {
		committed[id] = true
	}
	checkExactlyOnce(t, rec, committed, nil)
	rec.mu.Lock()
	dups := len(rec.dups)
	rec.mu.Unlock()
	if dups != 15 {
		t.Errorf("%d rows deduplicated on the second relay, want the 15 published before the stop", dups)
	}
}

// Rows the EventService refuses for good (a bad topic name, headers that
// are not a JSON object) are skipped and left unpublished; the rows after
// them are still relayed, and the status says which row was refused.
func TestRelaySkipsRowsRefusedForGood(t *testing.T) {
	pg := testharness.StartPostgres(t)
	url := pg.NewDatabase(t)
	ctx := ctxT(t, time.Minute)
	conn := pg.Conn(t, url)
	before := insertRows(t, ctx, conn, "orders", "before", 3, true)
	var badTopic, badHeaders int64
	if err := conn.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload) VALUES ('not a topic', 'k', 'x') RETURNING id`).Scan(&badTopic); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `INSERT INTO outbox (topic, key, payload, headers) VALUES ('orders', 'k', 'x', '[1,2]') RETURNING id`).Scan(&badHeaders); err != nil {
		t.Fatal(err)
	}
	after := insertRows(t, ctx, conn, "orders", "after", 3, true)

	rec := newRecorder()
	r := startRelay(t, outbox.Options{URL: url, Publisher: rec, PollInterval: 50 * time.Millisecond, BatchSize: 4})
	testkit.Eventually(t, relayWait, "every valid row published", func() bool { return rec.appendedCount() == len(before)+len(after) })
	testkit.Eventually(t, relayWait, "valid rows marked", func() bool { return unpublished(t, ctx, conn) == 2 })
	var left []int64
	rows, err := conn.Query(ctx, `SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		left = append(left, id)
	}
	if len(left) != 2 || left[0] != badTopic || left[1] != badHeaders {
		t.Errorf("unpublished rows = %v, want the refused %d and %d", left, badTopic, badHeaders)
	}
	st := r.Status()
	if st.Refused != 2 || !strings.Contains(st.LastRefused, fmt.Sprintf("row %d", badHeaders)) || !st.Healthy {
		t.Errorf("status = %+v; want 2 refused, the last naming row %d, healthy", st, badHeaders)
	}
}
