package events_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// storeUnderTest is one Store with a way to let store time pass.
type storeUnderTest struct {
	store   events.Store
	advance func(time.Duration)
	// xlen counts the entries of a topic's log as the store holds them.
	xlen func(t *testing.T, topic string) int64
}

func memoryStores(*testing.T) func(*testing.T) storeUnderTest {
	return func(t *testing.T) storeUnderTest {
		clk := testkit.NewClock()
		m := events.NewMemoryStore(clk.Now)
		return storeUnderTest{store: m, advance: clk.Advance, xlen: func(t *testing.T, topic string) int64 {
			return int64(len(readAll(t, m, topic)))
		}}
	}
}

func redisBacked(rdb redis.UniversalClient, prefix string, opts ...events.RedisOption) func(*testing.T) storeUnderTest {
	ns := testkit.Namespaces(prefix)
	return func(t *testing.T) storeUnderTest {
		r := events.NewRedisStore(rdb, ns(), 2*time.Second, opts...)
		// Redis decides time by its own clock.
		return storeUnderTest{store: r, advance: testkit.RedisTime, xlen: func(t *testing.T, topic string) int64 {
			n, err := rdb.XLen(context.Background(), r.StreamKey(topic)).Result()
			if err != nil {
				t.Fatalf("XLEN: %v", err)
			}
			return n
		}}
	}
}

// redisStores share one redis-server; each store has its own namespace,
// and waits on a second client, as the sidecar does.
func redisStores(t *testing.T) func(*testing.T) storeUnderTest {
	rd := testharness.StartRedis(t)
	return redisBacked(rd.Client(t), "conformance", events.WithBlockingClient(rd.Client(t)))
}

// clusterStores share one 3-master Redis Cluster: every script's keys,
// dead-letter stream included, must hash to one slot.
func clusterStores(t *testing.T) func(*testing.T) storeUnderTest {
	return redisBacked(testharness.StartCluster(t, 3).Client(t), "cluster")
}

func TestEventsMemoryStoreConformance(t *testing.T)  { runConformance(t, memoryStores(t)) }
func TestEventsRedisStoreConformance(t *testing.T)   { runConformance(t, redisStores(t)) }
func TestEventsClusterStoreConformance(t *testing.T) { runConformance(t, clusterStores(t)) }

// readAll reads every event of topic through a fresh group.
func readAll(t *testing.T, s events.Store, topic string) []events.Delivery {
	t.Helper()
	ctx := context.Background()
	g := fmt.Sprintf("readall-%d", time.Now().UnixNano())
	if _, err := s.EnsureGroup(ctx, topic, g, "c", events.GroupOptions{}); err != nil {
		t.Fatalf("EnsureGroup: %v", err)
	}
	res, err := s.Read(ctx, topic, g, "c", events.ReadOptions{Count: 10000, Visibility: time.Hour})
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return res.Deliveries
}

const vis = 200 * time.Millisecond

func ropts(count int) events.ReadOptions {
	return events.ReadOptions{Count: count, Visibility: vis, MaxDeliveries: 3, DeadMaxLen: 1000}
}

func pub() events.PublishOptions {
	return events.PublishOptions{MaxLen: 1000, DedupRetention: time.Hour}
}

func mustPublish(t *testing.T, s events.Store, m events.Message) string {
	t.Helper()
	p, err := s.Publish(context.Background(), m, pub())
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return p.EventID
}

func mustGroup(t *testing.T, s events.Store, topic, group, consumer string, start events.StartFrom) bool {
	t.Helper()
	created, err := s.EnsureGroup(context.Background(), topic, group, consumer, events.GroupOptions{Start: start})
	if err != nil {
		t.Fatalf("EnsureGroup: %v", err)
	}
	return created
}

func mustRead(t *testing.T, s events.Store, topic, group, consumer string, o events.ReadOptions) events.ReadResult {
	t.Helper()
	res, err := s.Read(context.Background(), topic, group, consumer, o)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return res
}

func ids(ds []events.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

func runConformance(t *testing.T, newStore func(*testing.T) storeUnderTest) {
	ctx := context.Background()

	t.Run("PublishAndRead", func(t *testing.T) {
		s := newStore(t).store
		var want []string
		for i := range 3 {
			want = append(want, mustPublish(t, s, events.Message{Topic: "orders", Key: "k" + strconv.Itoa(i),
				Payload: []byte{0, byte(i), 0xff}, Headers: map[string]string{"content-type": "x/y", "n": strconv.Itoa(i)}}))
		}
		if !mustGroup(t, s, "orders", "g", "c1", events.Earliest) {
			t.Fatal("first EnsureGroup: created = false")
		}
		if mustGroup(t, s, "orders", "g", "c2", events.Earliest) {
			t.Fatal("second EnsureGroup: created = true")
		}
		res := mustRead(t, s, "orders", "g", "c1", ropts(10))
		if got := ids(res.Deliveries); !slices.Equal(got, want) {
			t.Fatalf("ids %v, want %v (publish order)", got, want)
		}
		if res.LastID != want[2] {
			t.Errorf("LastID %q, want %q", res.LastID, want[2])
		}
		for i, d := range res.Deliveries {
			if d.Topic != "orders" || d.Key != "k"+strconv.Itoa(i) || string(d.Payload) != string([]byte{0, byte(i), 0xff}) ||
				d.Headers["content-type"] != "x/y" || d.Headers["n"] != strconv.Itoa(i) || len(d.Headers) != 2 {
				t.Errorf("delivery %d = %+v", i, d)
			}
			if d.Count != 1 || d.FirstDeliveredAt.IsZero() || d.PublishedAt.IsZero() {
				t.Errorf("delivery %d: count %d first %v published %v", i, d.Count, d.FirstDeliveredAt, d.PublishedAt)
			}
		}
		if !events.ValidEventID(want[0]) {
			t.Errorf("event id %q is not <ms>-<seq>", want[0])
		}
		// Nothing more for anyone in the group.
		if res := mustRead(t, s, "orders", "g", "c2", ropts(10)); len(res.Deliveries) != 0 {
			t.Errorf("second consumer got %v, want nothing", ids(res.Deliveries))
		}
	})

	t.Run("Dedup", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		m := events.Message{Topic: "t", Payload: []byte("x"), IdempotencyKey: "order-1"}
		p1, err := s.Publish(ctx, m, pub())
		if err != nil || p1.Duplicate {
			t.Fatalf("first publish: %+v, %v", p1, err)
		}
		m.Payload = []byte("different")
		p2, err := s.Publish(ctx, m, pub())
		if err != nil || !p2.Duplicate || p2.EventID != p1.EventID {
			t.Fatalf("retry: %+v, %v; want duplicate of %s", p2, err, p1.EventID)
		}
		// Another key, and no key, append.
		m.IdempotencyKey = "order-2"
		if id := mustPublish(t, s, m); id == p1.EventID {
			t.Fatal("another key returned the first id")
		}
		m.IdempotencyKey = ""
		a, b := mustPublish(t, s, m), mustPublish(t, s, m)
		if a == b {
			t.Fatal("publishes without a key share an id")
		}
		// The same key on another topic is another event.
		m.Topic, m.IdempotencyKey = "u", "order-1"
		if p, _ := s.Publish(ctx, m, pub()); p.Duplicate {
			t.Fatal("key deduplicated across topics")
		}
		if n := st.xlen(t, "t"); n != 4 {
			t.Fatalf("topic holds %d events, want 4", n)
		}
		// Each event carries the key it was published with.
		var keys []string
		for _, d := range readAll(t, s, "t") {
			keys = append(keys, d.IdempotencyKey)
		}
		if want := []string{"order-1", "order-2", "", ""}; !slices.Equal(keys, want) {
			t.Errorf("idempotency keys of the events %q, want %q", keys, want)
		}
	})

	t.Run("DedupConcurrent", func(t *testing.T) {
		st := newStore(t)
		const n = 50
		var wg sync.WaitGroup
		got := make([]events.Published, n)
		errs := make([]error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				got[i], errs[i] = st.store.Publish(ctx, events.Message{Topic: "t", Payload: []byte("x"), IdempotencyKey: "same"}, pub())
			})
		}
		close(start)
		wg.Wait()
		dups := 0
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("publish %d: %v", i, errs[i])
			}
			if got[i].EventID != got[0].EventID {
				t.Fatalf("publish %d got %s, publish 0 got %s", i, got[i].EventID, got[0].EventID)
			}
			if got[i].Duplicate {
				dups++
			}
		}
		if dups != n-1 {
			t.Errorf("%d duplicates, want %d", dups, n-1)
		}
		if l := st.xlen(t, "t"); l != 1 {
			t.Fatalf("topic holds %d events, want exactly 1", l)
		}
	})

	t.Run("GroupsAndConsumers", func(t *testing.T) {
		s := newStore(t).store
		mustGroup(t, s, "t", "a", "a1", events.Earliest)
		mustGroup(t, s, "t", "b", "b1", events.Earliest)
		var all []string
		for range 6 {
			all = append(all, mustPublish(t, s, events.Message{Topic: "t"}))
		}
		// Group a splits between two consumers, each in order, no overlap.
		r1 := mustRead(t, s, "t", "a", "a1", ropts(2))
		r2 := mustRead(t, s, "t", "a", "a2", ropts(10))
		if got := append(ids(r1.Deliveries), ids(r2.Deliveries)...); !slices.Equal(got, all) {
			t.Fatalf("group a got %v, want %v once each in order", got, all)
		}
		// Group b independently gets everything.
		if got := ids(mustRead(t, s, "t", "b", "b1", ropts(10)).Deliveries); !slices.Equal(got, all) {
			t.Fatalf("group b got %v, want %v", got, all)
		}
	})

	t.Run("StartLatest", func(t *testing.T) {
		s := newStore(t).store
		mustPublish(t, s, events.Message{Topic: "t"})
		mustGroup(t, s, "t", "late", "c", events.Latest)
		mustGroup(t, s, "t", "early", "c", events.Earliest)
		after := mustPublish(t, s, events.Message{Topic: "t"})
		if got := ids(mustRead(t, s, "t", "late", "c", ropts(10)).Deliveries); !slices.Equal(got, []string{after}) {
			t.Fatalf("latest group got %v, want only %s", got, after)
		}
		if got := mustRead(t, s, "t", "early", "c", ropts(10)).Deliveries; len(got) != 2 {
			t.Fatalf("earliest group got %d events, want 2", len(got))
		}
	})

	t.Run("UnknownGroup", func(t *testing.T) {
		s := newStore(t).store
		mustPublish(t, s, events.Message{Topic: "t"})
		if _, err := s.Read(ctx, "t", "nope", "c", ropts(1)); !errors.Is(err, events.ErrNoGroup) {
			t.Fatalf("Read of an unknown group: %v, want ErrNoGroup", err)
		}
	})

	t.Run("AckStopsRedelivery", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		mustGroup(t, s, "t", "g", "c", events.Earliest)
		id := mustPublish(t, s, events.Message{Topic: "t"})
		mustRead(t, s, "t", "g", "c", ropts(1))
		if ok, err := s.Ack(ctx, "t", "g", id); !ok || err != nil {
			t.Fatalf("Ack: %v, %v", ok, err)
		}
		if ok, err := s.Ack(ctx, "t", "g", id); ok || err != nil {
			t.Fatalf("second Ack: %v, %v; want false", ok, err)
		}
		for _, c := range [][3]string{{"t", "other", id}, {"none", "g", id}, {"t", "g", "1-1"}} {
			if ok, err := s.Ack(ctx, c[0], c[1], c[2]); ok || err != nil {
				t.Errorf("Ack %v: %v, %v; want false", c, ok, err)
			}
		}
		st.advance(vis + 50*time.Millisecond)
		if got := mustRead(t, s, "t", "g", "c2", ropts(10)).Deliveries; len(got) != 0 {
			t.Fatalf("acked event redelivered: %v", ids(got))
		}
	})

	t.Run("RedeliveryAfterVisibility", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		mustGroup(t, s, "t", "g", "c1", events.Earliest)
		id := mustPublish(t, s, events.Message{Topic: "t", Key: "k"})
		first := mustRead(t, s, "t", "g", "c1", ropts(1)).Deliveries[0]
		// Not yet claimable.
		if got := mustRead(t, s, "t", "g", "c2", ropts(10)).Deliveries; len(got) != 0 {
			t.Fatalf("claimed before the visibility timeout: %v", ids(got))
		}
		st.advance(vis + 50*time.Millisecond)
		got := mustRead(t, s, "t", "g", "c2", ropts(10)).Deliveries
		if len(got) != 1 || got[0].ID != id || got[0].Count != 2 || got[0].Key != "k" {
			t.Fatalf("redelivery = %+v, want %s with count 2", got, id)
		}
		if !got[0].FirstDeliveredAt.Equal(first.FirstDeliveredAt) {
			t.Errorf("first_delivered_at %v on redelivery, was %v", got[0].FirstDeliveredAt, first.FirstDeliveredAt)
		}
		// The new owner acks it.
		if ok, _ := s.Ack(ctx, "t", "g", id); !ok {
			t.Fatal("Ack after redelivery: false")
		}
	})

	t.Run("VisibilityIsTheDeliverys", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		mustGroup(t, s, "t", "g", "short", events.Earliest)
		long := ropts(10)
		long.Visibility = time.Hour
		a := mustPublish(t, s, events.Message{Topic: "t"})
		mustRead(t, s, "t", "g", "short", ropts(1)) // a, for 200ms
		b := mustPublish(t, s, events.Message{Topic: "t"})
		if got := ids(mustRead(t, s, "t", "g", "long", long).Deliveries); !slices.Equal(got, []string{b}) {
			t.Fatalf("long reader got %v, want %s", got, b)
		}
		st.advance(vis + 50*time.Millisecond)
		// a is due again whoever asks; b, delivered for an hour, is not.
		if got := ids(mustRead(t, s, "t", "g", "long", long).Deliveries); !slices.Equal(got, []string{a}) {
			t.Fatalf("after the short visibility: %v, want only %s", got, a)
		}
	})

	t.Run("Nack", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		mustGroup(t, s, "t", "g", "c", events.Earliest)
		id := mustPublish(t, s, events.Message{Topic: "t"})
		mustRead(t, s, "t", "g", "c", ropts(1))
		if ok, err := s.Nack(ctx, "t", "g", id, 0); !ok || err != nil {
			t.Fatalf("Nack: %v, %v", ok, err)
		}
		got := mustRead(t, s, "t", "g", "c", ropts(1)).Deliveries
		if len(got) != 1 || got[0].ID != id || got[0].Count != 2 {
			t.Fatalf("after Nack(0): %+v, want %s again with count 2", got, id)
		}
		// With retry_after it waits that long, even beyond the
		// visibility timeout.
		if ok, _ := s.Nack(ctx, "t", "g", id, 2*vis); !ok {
			t.Fatal("Nack with retry_after: false")
		}
		if got := mustRead(t, s, "t", "g", "c", ropts(1)).Deliveries; len(got) != 0 {
			t.Fatalf("redelivered before retry_after: %v", ids(got))
		}
		st.advance(vis + 50*time.Millisecond)
		if got := mustRead(t, s, "t", "g", "c", ropts(1)).Deliveries; len(got) != 0 {
			t.Fatalf("redelivered before retry_after (after the visibility timeout): %v", ids(got))
		}
		st.advance(vis)
		if got := mustRead(t, s, "t", "g", "c", ropts(1)).Deliveries; len(got) != 1 || got[0].Count != 3 {
			t.Fatalf("after retry_after: %+v, want count 3", got)
		}
		for _, c := range [][3]string{{"t", "other", id}, {"none", "g", id}, {"t", "g", "1-1"}} {
			if ok, err := s.Nack(ctx, c[0], c[1], c[2], 0); ok || err != nil {
				t.Errorf("Nack %v: %v, %v; want false", c, ok, err)
			}
		}
	})

	t.Run("DeadLetter", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		mustGroup(t, s, "t", "g", "c", events.Earliest)
		mustGroup(t, s, "t.dead", "ops", "c", events.Earliest)
		id := mustPublish(t, s, events.Message{Topic: "t", Key: "k", Payload: []byte("p"), Headers: map[string]string{"a": "b"}})
		for n := 1; n <= 3; n++ {
			got := mustRead(t, s, "t", "g", "c", ropts(1)).Deliveries
			if len(got) != 1 || got[0].Count != n {
				t.Fatalf("delivery %d: %+v", n, got)
			}
			st.advance(vis + 50*time.Millisecond)
		}
		res := mustRead(t, s, "t", "g", "c", ropts(1))
		if len(res.Deliveries) != 0 || !slices.Equal(res.DeadLettered, []string{id}) {
			t.Fatalf("after 3 deliveries: got %v, dead-lettered %v; want %s dead-lettered", ids(res.Deliveries), res.DeadLettered, id)
		}
		if ok, _ := s.Ack(ctx, "t", "g", id); ok {
			t.Fatal("dead-lettered event still pending")
		}
		dead := mustRead(t, s, "t.dead", "ops", "c", ropts(10)).Deliveries
		if len(dead) != 1 {
			t.Fatalf("dead-letter topic holds %d events, want 1", len(dead))
		}
		d := dead[0]
		want := map[string]string{"a": "b", "x-dead-letter-topic": "t", "x-dead-letter-group": "g", "x-dead-letter-event-id": id, "x-dead-letter-deliveries": "3"}
		if d.Topic != "t.dead" || d.Key != "k" || string(d.Payload) != "p" || len(d.Headers) != len(want) {
			t.Fatalf("dead letter = %+v", d)
		}
		for k, v := range want {
			if d.Headers[k] != v {
				t.Errorf("dead letter header %s = %q, want %q", k, d.Headers[k], v)
			}
		}
		// Events of a dead-letter topic are never dead-lettered again.
		st.advance(vis + 50*time.Millisecond)
		o := ropts(10)
		o.MaxDeliveries = 0
		if got := mustRead(t, s, "t.dead", "ops", "c", o).Deliveries; len(got) != 1 || got[0].Count != 2 {
			t.Fatalf("dead letter redelivery = %+v, want count 2", got)
		}
	})

	// Issue 16: deliveries that never reached the client go back at once,
	// by the read's id, without counting towards max deliveries.
	t.Run("ReturnHandsUndeliveredBack", func(t *testing.T) {
		s := newStore(t).store
		a := mustPublish(t, s, events.Message{Topic: "t"})
		b := mustPublish(t, s, events.Message{Topic: "t"})
		c := mustPublish(t, s, events.Message{Topic: "t"})
		mustGroup(t, s, "t", "g", "c1", events.Earliest)
		long := events.ReadOptions{Count: 3, Visibility: time.Hour, MaxDeliveries: 1, DeadMaxLen: 1000}
		r1 := long
		r1.ReadID = "r1"
		if got := ids(mustRead(t, s, "t", "g", "c1", r1).Deliveries); !slices.Equal(got, []string{a, b, c}) {
			t.Fatalf("first read %v", got)
		}
		// b was handed on and nacked meanwhile: not the read's to return.
		if ok, err := s.Nack(ctx, "t", "g", b, time.Minute); err != nil || !ok {
			t.Fatalf("Nack: %v %v", ok, err)
		}
		if n, err := s.Return(ctx, "t", "g", "c1", "r1", []string{a}); err != nil || n != 1 {
			t.Fatalf("Return(a) = %d, %v; want 1", n, err)
		}
		// a is due at once, for anyone, and its undelivered delivery does
		// not count: with max deliveries 1 it is delivered, as a first.
		res := mustRead(t, s, "t", "g", "c2", long)
		if len(res.Deliveries) != 1 || res.Deliveries[0].ID != a || res.Deliveries[0].Count != 1 || len(res.DeadLettered) != 0 {
			t.Fatalf("after Return(a): %+v dead %v; want %s as a first delivery", res.Deliveries, res.DeadLettered, a)
		}
		// The rest of the read: c only (b was nacked).
		if n, err := s.Return(ctx, "t", "g", "c1", "r1", nil); err != nil || n != 1 {
			t.Fatalf("Return(all) = %d, %v; want 1", n, err)
		}
		if n, err := s.Return(ctx, "t", "g", "c1", "r1", nil); err != nil || n != 0 {
			t.Fatalf("second Return = %d, %v; want 0", n, err)
		}
		res = mustRead(t, s, "t", "g", "c2", long)
		if got := ids(res.Deliveries); !slices.Equal(got, []string{c}) || res.Deliveries[0].Count != 1 {
			t.Fatalf("after Return(all): %+v; want %s as a first delivery", res.Deliveries, c)
		}
		// A delivery handed out again since is not the old read's.
		if n, err := s.Return(ctx, "t", "g", "c1", "r1", []string{a, c}); err != nil || n != 0 {
			t.Fatalf("Return of redelivered events = %d, %v; want 0", n, err)
		}
		// A read handed back before it ran hands nothing out.
		d := mustPublish(t, s, events.Message{Topic: "t"})
		if n, err := s.Return(ctx, "t", "g", "c3", "r2", nil); err != nil || n != 0 {
			t.Fatalf("Return before the read = %d, %v", n, err)
		}
		r2 := long
		r2.ReadID = "r2"
		if res := mustRead(t, s, "t", "g", "c3", r2); len(res.Deliveries) != 0 {
			t.Fatalf("a handed-back read delivered %v", ids(res.Deliveries))
		}
		r3 := long
		r3.ReadID = "r3"
		if got := ids(mustRead(t, s, "t", "g", "c3", r3).Deliveries); !slices.Equal(got, []string{d}) {
			t.Fatalf("next read %v, want %s", got, d)
		}
		// Only the reading consumer's deliveries.
		if n, err := s.Return(ctx, "t", "g", "c1", "r3", nil); err != nil || n != 0 {
			t.Fatalf("Return by another consumer = %d, %v", n, err)
		}
	})

	t.Run("Wait", func(t *testing.T) {
		s := newStore(t).store
		mustGroup(t, s, "t", "g", "c", events.Earliest)
		res := mustRead(t, s, "t", "g", "c", ropts(1))
		// Newer events than lastID: at once.
		mustPublish(t, s, events.Message{Topic: "t"})
		if err := s.Wait(ctx, "t", "g", res.LastID, res.WakeID, time.Minute); err != nil {
			t.Fatalf("Wait: %v", err)
		}
		res = mustRead(t, s, "t", "g", "c", ropts(10))
		done := make(chan error, 1)
		go func() { done <- s.Wait(ctx, "t", "g", res.LastID, res.WakeID, time.Minute) }()
		// Woken by a publish (it would otherwise wait a minute; the test's
		// own timeout is what fails it).
		for {
			mustPublish(t, s, events.Message{Topic: "t"})
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Wait: %v", err)
				}
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})

	// A nack, and a hand-back, wake the group's waits (which would
	// otherwise sleep an hour; the test's own timeout is what fails it),
	// including one started after them from an older Read; another
	// group's wait is not woken.
	t.Run("WaitWokenByNackAndReturn", func(t *testing.T) {
		s := newStore(t).store
		mustGroup(t, s, "t", "g", "c", events.Earliest)
		mustGroup(t, s, "t", "other", "c", events.Earliest)
		id := mustPublish(t, s, events.Message{Topic: "t"})
		long := events.ReadOptions{Count: 10, Visibility: time.Hour, ReadID: "r1"}
		if got := ids(mustRead(t, s, "t", "g", "c", long).Deliveries); !slices.Equal(got, []string{id}) {
			t.Fatalf("read %v, want %s", got, id)
		}
		mustRead(t, s, "t", "other", "c", ropts(10))
		idle := mustRead(t, s, "t", "g", "c", ropts(10))
		otherIdle := mustRead(t, s, "t", "other", "c", ropts(10))
		waitFor := func(what string, lastID, wakeID string) {
			t.Helper()
			if err := s.Wait(ctx, "t", "g", lastID, wakeID, time.Hour); err != nil {
				t.Fatalf("Wait after %s: %v", what, err)
			}
		}
		done := make(chan error, 1)
		go func() { done <- s.Wait(ctx, "t", "g", idle.LastID, idle.WakeID, time.Hour) }()
		if ok, err := s.Nack(ctx, "t", "g", id, 0); err != nil || !ok {
			t.Fatalf("Nack = %v, %v", ok, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Wait: %v", err)
		}
		waitFor("the nack, from the Read before it", idle.LastID, idle.WakeID)
		otherCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if err := s.Wait(otherCtx, "t", "other", otherIdle.LastID, otherIdle.WakeID, time.Hour); err != nil {
			t.Fatalf("Wait of the other group: %v", err)
		}
		if otherCtx.Err() == nil {
			t.Fatalf("the other group's Wait returned after %v, before its context ended: woken by this group's nack", time.Since(start))
		}

		again := long
		again.ReadID = "r2"
		if got := ids(mustRead(t, s, "t", "g", "c", again).Deliveries); !slices.Equal(got, []string{id}) {
			t.Fatalf("read after the nack %v, want %s", got, id)
		}
		idle = mustRead(t, s, "t", "g", "c", ropts(10))
		if n, err := s.Return(ctx, "t", "g", "c", "r2", nil); err != nil || n != 1 {
			t.Fatalf("Return = %d, %v", n, err)
		}
		waitFor("the hand-back", idle.LastID, idle.WakeID)
	})

	t.Run("ExpireDedup", func(t *testing.T) {
		st := newStore(t)
		s := st.store
		kept := mustPublish(t, s, events.Message{Topic: "t", IdempotencyKey: "kept"})
		first := mustPublish(t, s, events.Message{Topic: "t", IdempotencyKey: "short"})
		n, err := s.ExpireDedup(ctx, "t", []string{"short", "never-published"}, 50*time.Millisecond)
		if err != nil || n != 1 {
			t.Fatalf("ExpireDedup = %d, %v; want 1 key shortened", n, err)
		}
		// Shortening never lengthens: a second call with a longer keep
		// leaves the 50ms.
		if n, err := s.ExpireDedup(ctx, "t", []string{"short"}, time.Hour); err != nil || n != 0 {
			t.Fatalf("ExpireDedup with a longer keep = %d, %v; want 0", n, err)
		}
		st.advance(200 * time.Millisecond)
		p, err := s.Publish(ctx, events.Message{Topic: "t", IdempotencyKey: "short"}, pub())
		if err != nil || p.Duplicate || p.EventID == first {
			t.Fatalf("publish after its key expired: %+v, %v; want a new event", p, err)
		}
		p, err = s.Publish(ctx, events.Message{Topic: "t", IdempotencyKey: "kept"}, pub())
		if err != nil || !p.Duplicate || p.EventID != kept {
			t.Fatalf("publish of the kept key: %+v, %v; want a duplicate of %s", p, err, kept)
		}
	})

	t.Run("WaitCancel", func(t *testing.T) {
		s := newStore(t).store
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- s.Wait(cctx, "t", "g", "0-0", "", time.Hour) }()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Wait: %v", err)
		}
	})
}
