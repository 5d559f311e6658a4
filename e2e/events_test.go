package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

func eventClient(t *testing.T, s *testharness.Sidecar) v1.EventServiceClient {
	t.Helper()
	return v1.NewEventServiceClient(s.Conn(t))
}

// childSubscribe subscribes (E2E_TOPIC, E2E_GROUP, E2E_CONSUMER with a
// one-second visibility timeout), prints "GOT <event id>" for each event
// and never acks: the test kills it.
func childSubscribe(addr string) int {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s, err := v1.NewEventServiceClient(conn).Subscribe(context.Background(), &v1.SubscribeRequest{
		Topic: os.Getenv("E2E_TOPIC"), Group: os.Getenv("E2E_GROUP"), Consumer: os.Getenv("E2E_CONSUMER"),
		VisibilityTimeout: durationpb.New(time.Second)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		m, err := s.Recv()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if ev := m.GetEvent(); ev != nil {
			fmt.Printf("GOT %s\n", ev.GetEventId())
		}
	}
}

// subscribeE2E opens a subscription and reads its `subscribed`.
func subscribeE2E(t *testing.T, ctx context.Context, c v1.EventServiceClient, r *v1.SubscribeRequest) v1.EventService_SubscribeClient {
	t.Helper()
	s, err := c.Subscribe(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := s.Recv(); err != nil || m.GetSubscribed() == nil {
		t.Fatalf("first message %v, %v; want subscribed", m, err)
	}
	return s
}

func nextEvent(t *testing.T, s v1.EventService_SubscribeClient) *v1.Event {
	t.Helper()
	m, err := s.Recv()
	if err != nil || m.GetEvent() == nil {
		t.Fatalf("Recv = %v, %v; want an event", m, err)
	}
	return m.GetEvent()
}

// A subscriber process killed before acking: the event goes to another
// consumer of the group, through another sidecar, with delivery_count 2
// and the first delivery's time.
func TestEventsKilledSubscriberRedelivered(t *testing.T) {
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	a := testharness.StartSidecar(t, bin, "--redis-url", rd.URL())
	b := testharness.StartSidecar(t, bin, "--redis-url", rd.URL())
	ctx := ctxT(t, time.Minute)
	ca, cb := eventClient(t, a), eventClient(t, b)
	p, err := ca.Publish(ctx, &v1.PublishRequest{Topic: "orders", Key: "o-1", Payload: []byte(`{"order":"o-1"}`)})
	if err != nil {
		t.Fatal(err)
	}

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childModeEnv+"=subscribe", "E2E_ADDR="+a.Addr(), "E2E_TOPIC=orders", "E2E_GROUP=billing", "E2E_CONSUMER=doomed")
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "GOT "+p.GetEventId()+"\n" {
		t.Fatalf("child got %q, %v; want the event", line, err)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	s := subscribeE2E(t, ctx, cb, &v1.SubscribeRequest{Topic: "orders", Group: "billing", Consumer: "survivor"})
	ev := nextEvent(t, s)
	if ev.GetEventId() != p.GetEventId() || ev.GetDeliveryCount() != 2 || ev.GetKey() != "o-1" || string(ev.GetPayload()) != `{"order":"o-1"}` {
		t.Fatalf("redelivery = %v, want %s with delivery_count 2", ev, p.GetEventId())
	}
	if !ev.GetFirstDeliveredAt().AsTime().Before(time.Now()) || ev.GetFirstDeliveredAt().AsTime().Before(ev.GetPublishedAt().AsTime().Add(-time.Second)) {
		t.Errorf("first_delivered_at %v, published_at %v", ev.GetFirstDeliveredAt().AsTime(), ev.GetPublishedAt().AsTime())
	}
	if r, err := cb.Ack(ctx, &v1.AckRequest{Topic: "orders", Group: "billing", EventId: ev.GetEventId()}); err != nil || !r.GetAcked() {
		t.Fatalf("Ack: %v, %v", r, err)
	}
}

// An event never acked moves to "<topic>.dead" after max_deliveries, with
// the x-dead-letter-* headers, and is counted in the metrics.
func TestEventsDeadLetter(t *testing.T) {
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	maddr := testharness.FreeAddr(t)
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL(), "--metrics-listen", maddr)
	c := eventClient(t, sc)
	ctx := ctxT(t, time.Minute)
	p, err := c.Publish(ctx, &v1.PublishRequest{Topic: "payments", Key: "p-9", Payload: []byte("poison"), Headers: map[string]string{"content-type": "text/plain"}})
	if err != nil {
		t.Fatal(err)
	}
	s := subscribeE2E(t, ctx, c, &v1.SubscribeRequest{Topic: "payments", Group: "ledger", Consumer: "c",
		VisibilityTimeout: durationpb.New(200 * time.Millisecond), MaxDeliveries: 3})
	for n := uint32(1); n <= 3; n++ {
		if ev := nextEvent(t, s); ev.GetEventId() != p.GetEventId() || ev.GetDeliveryCount() != n {
			t.Fatalf("delivery %d = %v", n, ev)
		}
		if n == 2 { // a nack counts as a delivery too
			if _, err := c.Nack(ctx, &v1.NackRequest{Topic: "payments", Group: "ledger", EventId: p.GetEventId()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	dead := subscribeE2E(t, ctx, c, &v1.SubscribeRequest{Topic: "payments.dead", Group: "ops", Consumer: "c"})
	ev := nextEvent(t, dead)
	want := map[string]string{"content-type": "text/plain", "x-dead-letter-topic": "payments", "x-dead-letter-group": "ledger",
		"x-dead-letter-event-id": p.GetEventId(), "x-dead-letter-deliveries": "3"}
	if ev.GetTopic() != "payments.dead" || ev.GetKey() != "p-9" || string(ev.GetPayload()) != "poison" || len(ev.GetHeaders()) != len(want) {
		t.Fatalf("dead letter = %v", ev)
	}
	for k, v := range want {
		if ev.GetHeaders()[k] != v {
			t.Errorf("header %s = %q, want %q", k, ev.GetHeaders()[k], v)
		}
	}
	if r, err := c.Ack(ctx, &v1.AckRequest{Topic: "payments", Group: "ledger", EventId: p.GetEventId()}); err != nil || r.GetAcked() {
		t.Fatalf("Ack of the dead-lettered event: %v, %v; want acked=false", r, err)
	}
	m := scrapeMetrics(t, maddr)
	if v := m.mustValue(t, "resilience_events_dead_lettered_total"); v != 1 {
		t.Errorf("resilience_events_dead_lettered_total = %v, want 1", v)
	}
	if v := m.mustValue(t, "resilience_events_published_total", "result", "appended"); v != 1 {
		t.Errorf("resilience_events_published_total{result=appended} = %v, want 1", v)
	}
	if v := m.mustValue(t, "resilience_events_delivered_total"); v != 4 {
		t.Errorf("resilience_events_delivered_total = %v, want 4 (3 + the dead letter)", v)
	}
	if v := m.mustValue(t, "resilience_events_redelivered_total"); v != 2 {
		t.Errorf("resilience_events_redelivered_total = %v, want 2", v)
	}
}

// Events published before the sidecar is killed -9 are all delivered by
// its successor, retried publishes included once; and through a restart
// of Redis from its append-only file.
func TestEventsSurviveRestart(t *testing.T) {
	rd := testharness.StartRedis(t, testharness.WithAppendOnly(), testharness.WithRedisArgs("--appendfsync", "always"))
	bin := testharness.BuildSidecar(t)
	sc := testharness.StartSidecar(t, bin, "--redis-url", rd.URL())
	ctx := ctxT(t, 2*time.Minute)
	c := eventClient(t, sc)
	var want []string
	for i := range 20 {
		p, err := c.Publish(ctx, &v1.PublishRequest{Topic: "ledger", Key: strconv.Itoa(i), IdempotencyKey: "entry-" + strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, p.GetEventId())
	}
	// A group that has taken (but not acked) the first five.
	s := subscribeE2E(t, ctx, c, &v1.SubscribeRequest{Topic: "ledger", Group: "g", Consumer: "old", MaxInFlight: 5,
		VisibilityTimeout: durationpb.New(time.Second)})
	for range 5 {
		nextEvent(t, s)
	}
	sc.Kill()
	rd.Restart()

	sc2 := testharness.StartSidecar(t, bin, "--redis-url", rd.URL())
	c2 := eventClient(t, sc2)
	// Retried publishes are still recognised.
	if p, err := c2.Publish(ctx, &v1.PublishRequest{Topic: "ledger", Key: "3", IdempotencyKey: "entry-3"}); err != nil || !p.GetDuplicate() || p.GetEventId() != want[3] {
		t.Fatalf("retried publish after restart: %v, %v; want duplicate %s", p, err, want[3])
	}
	got := map[string]int{}
	fresh := subscribeE2E(t, ctx, c2, &v1.SubscribeRequest{Topic: "ledger", Group: "fresh", Consumer: "c", MaxInFlight: 100})
	for i := range 20 {
		ev := nextEvent(t, fresh)
		if ev.GetEventId() != want[i] || ev.GetKey() != strconv.Itoa(i) {
			t.Fatalf("fresh group event %d = %v, want %s in publish order", i, ev, want[i])
		}
	}
	// The old group gets the 15 never delivered, and the 5 in flight again.
	s2 := subscribeE2E(t, ctx, c2, &v1.SubscribeRequest{Topic: "ledger", Group: "g", Consumer: "new", MaxInFlight: 100})
	for range 20 {
		ev := nextEvent(t, s2)
		got[ev.GetEventId()]++
		if _, err := c2.Ack(ctx, &v1.AckRequest{Topic: "ledger", Group: "g", EventId: ev.GetEventId()}); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range want {
		if got[id] != 1 {
			t.Errorf("event %d (%s) delivered %d times to the old group after the restart, want 1", i, id, got[id])
		}
	}
}

// The embedded store (no Redis) has the same API.
func TestEventsEmbeddedStore(t *testing.T) {
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t))
	c := eventClient(t, sc)
	ctx := ctxT(t, time.Minute)
	s := subscribeE2E(t, ctx, c, &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c", StartFrom: v1.StartFrom_START_FROM_LATEST})
	p, err := c.Publish(ctx, &v1.PublishRequest{Topic: "t", Payload: []byte("x"), IdempotencyKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := c.Publish(ctx, &v1.PublishRequest{Topic: "t", Payload: []byte("x"), IdempotencyKey: "k"}); !d.GetDuplicate() {
		t.Fatal("retry not deduplicated")
	}
	if ev := nextEvent(t, s); ev.GetEventId() != p.GetEventId() {
		t.Fatalf("got %v", ev)
	}
}

// pushUpstream is a real HTTP server that records what was pushed and
// answers per topic.
type pushUpstream struct {
	mu    sync.Mutex
	calls []pushCall
	// fails is how many calls of a path fail (500) before they succeed;
	// -1 always.
	fails map[string]int
}

type pushCall struct {
	path, idemKey, eventID, topic, key, count, contentType, body string
}

func (u *pushUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.calls = append(u.calls, pushCall{path: r.URL.Path, idemKey: r.Header.Get("Idempotency-Key"), eventID: r.Header.Get("X-Event-Id"),
		topic: r.Header.Get("X-Event-Topic"), key: r.Header.Get("X-Event-Key"), count: r.Header.Get("X-Delivery-Count"),
		contentType: r.Header.Get("Content-Type"), body: string(body)})
	fail := false
	switch n := u.fails[r.URL.Path]; {
	case n < 0:
		fail = true
	case n > 0:
		u.fails[r.URL.Path] = n - 1
		fail = true
	}
	u.mu.Unlock()
	if fail {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (u *pushUpstream) callsTo(path string) []pushCall {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []pushCall
	for _, c := range u.calls {
		if c.path == path {
			out = append(out, c)
		}
	}
	return out
}

// Push subscriptions declared in the config file POST each event to an
// upstream with Idempotency-Key = event id; 2xx acks; failures are
// redelivered, and dead-lettered after max_deliveries.
func TestEventsPush(t *testing.T) {
	u := &pushUpstream{fails: map[string]int{"/flaky": 4, "/broken": -1}} // 500s: not retried within a call
	hs := httptest.NewServer(u)
	t.Cleanup(hs.Close)
	cfg := filepath.Join(t.TempDir(), "sidecar.yaml")
	yaml := fmt.Sprintf(`
upstreams:
  hooks:
    url: %s
    retry: {max_attempts: 2, initial_backoff: 1ms, max_backoff: 5ms}
breakers:
  hooks: {consecutive_failures: 1000}
events:
  topics: [orders, refunds, audits]
  push:
    - {name: ok, topic: orders, upstream: hooks, path: /ok}
    - {name: flaky, topic: refunds, upstream: hooks, path: /flaky, visibility_timeout: 300ms, max_deliveries: 5}
    - {name: broken, topic: audits, upstream: hooks, path: /broken, method: PUT, visibility_timeout: 200ms, max_deliveries: 2}
`, hs.URL)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	rd := testharness.StartRedis(t)
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--redis-url", rd.URL(), "--config", cfg)
	c := eventClient(t, sc)
	ctx := ctxT(t, time.Minute)
	publish := func(topic, key string) string {
		p, err := c.Publish(ctx, &v1.PublishRequest{Topic: topic, Key: key, Payload: []byte(`{"k":"` + key + `"}`),
			Headers: map[string]string{"Content-Type": "application/json", "bad header": "dropped"}})
		if err != nil {
			t.Fatal(err)
		}
		return p.GetEventId()
	}
	okID := publish("orders", "o-1")
	flakyID := publish("refunds", "r-1")
	brokenID := publish("audits", "a-1")
	dead := subscribeE2E(t, ctx, c, &v1.SubscribeRequest{Topic: "audits.dead", Group: "ops", Consumer: "c"})
	ev := nextEvent(t, dead)
	if ev.GetHeaders()["x-dead-letter-event-id"] != brokenID || ev.GetHeaders()["x-dead-letter-group"] != "broken" || ev.GetKey() != "a-1" {
		t.Fatalf("dead letter = %v, want %s from group broken", ev, brokenID)
	}
	if calls := u.callsTo("/broken"); len(calls) != 2 || calls[0].count != "1" || calls[1].count != "2" {
		t.Errorf("broken upstream called %+v, want deliveries 1 and 2", calls)
	}
	// The others are delivered (waiting on the upstream's record).
	testkit.EventuallyNil(t, 30*time.Second, "pushes to /ok and /flaky", func() error {
		if ok, flaky := len(u.callsTo("/ok")), len(u.callsTo("/flaky")); ok < 1 || flaky < 5 {
			return fmt.Errorf("pushes: ok %d, flaky %d calls", ok, flaky)
		}
		return nil
	})
	oc := u.callsTo("/ok")[0]
	if oc.idemKey != okID || oc.eventID != okID || oc.topic != "orders" || oc.key != "o-1" || oc.count != "1" ||
		oc.contentType != "application/json" || oc.body != `{"k":"o-1"}` {
		t.Errorf("push to /ok = %+v, want event %s", oc, okID)
	}
	fc := u.callsTo("/flaky")
	// Deliveries 1-4 fail, the fifth succeeds; never more.
	for i, call := range fc {
		if call.count != strconv.Itoa(i+1) {
			t.Errorf("flaky push %d has X-Delivery-Count %s", i, call.count)
		}
	}
	if len(fc) != 5 {
		t.Errorf("flaky pushes %+v, want 5 deliveries", fc)
	}
	for _, call := range fc {
		if call.idemKey != flakyID {
			t.Errorf("flaky push with Idempotency-Key %q, want %s", call.idemKey, flakyID)
		}
	}
	// Acked: once neither group has the event pending, nothing more can
	// arrive for the two.
	rdb := rd.Client(t)
	streams := events.NewRedisStore(rdb, "default", time.Second)
	testkit.EventuallyNil(t, 30*time.Second, "nothing pending in groups ok and flaky", func() error {
		for _, g := range []struct{ topic, group string }{{"orders", "ok"}, {"refunds", "flaky"}} {
			p, err := rdb.XPending(context.Background(), streams.StreamKey(g.topic), g.group).Result()
			if err != nil {
				return err
			}
			if p.Count != 0 {
				return fmt.Errorf("group %s still has events pending: %+v", g.group, p)
			}
		}
		return nil
	})
	if n, m := len(u.callsTo("/ok")), len(u.callsTo("/flaky")); n != 1 || m != 5 {
		t.Errorf("after success: %d pushes to /ok, %d to /flaky; want 1 and 5", n, m)
	}
	if !strings.Contains(sc.Log(), "push failed") {
		t.Error("failed pushes were not logged")
	}
}

// With Redis hung or dead every call is UNAVAILABLE/STORE_UNAVAILABLE
// within the store timeout, and an open subscription ends with it.
func TestEventsRedisOutage(t *testing.T) {
	rd := testharness.StartRedis(t)
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--redis-url", rd.URL(), "--store-timeout", "300ms")
	c := eventClient(t, sc)
	ctx := ctxT(t, time.Minute)
	s := subscribeE2E(t, ctx, c, &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c"})
	check := func(phase string) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := c.Publish(cctx, &v1.PublishRequest{Topic: "t", IdempotencyKey: "k"})
		if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" {
			t.Errorf("%s: Publish: %v; want UNAVAILABLE/STORE_UNAVAILABLE", phase, err)
		}
		_, err = c.Ack(cctx, &v1.AckRequest{Topic: "t", Group: "g", EventId: "1-0"})
		if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" {
			t.Errorf("%s: Ack: %v; want UNAVAILABLE/STORE_UNAVAILABLE", phase, err)
		}
	}
	rd.Pause()
	check("paused")
	_, err := s.Recv()
	if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" {
		t.Errorf("open subscription: %v; want UNAVAILABLE/STORE_UNAVAILABLE", err)
	}
	rd.Resume()
	rd.Kill()
	check("killed")
}
