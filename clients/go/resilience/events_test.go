package resilience_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// eachStore runs test against the sidecar TestMain started (the embedded
// store) and against one on a real redis-server (Redis Streams); the run
// on Redis is the test of the scenarios named.
func eachStore(t *testing.T, test func(t *testing.T, events v1.EventServiceClient), scenarios ...string) {
	t.Run("embedded", func(t *testing.T) {
		conn, err := resilience.Dial()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		test(t, v1.NewEventServiceClient(conn))
	})
	t.Run("redis", func(t *testing.T) {
		for _, id := range scenarios {
			scenario(t, id)
		}
		r := testharness.StartRedis(t)
		sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--redis-url", r.URL())
		conn, err := resilience.Dial(resilience.WithAddr(sc.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		test(t, v1.NewEventServiceClient(conn))
	})
}

// uniqueTopic is a topic no other test (or earlier run) uses.
func uniqueTopic(t *testing.T) string {
	return "go-test." + strings.ToLower(rand.Text()[:10])
}

func TestPublishIdempotencyKeyAppendsOnce(t *testing.T) {
	eachStore(t, testPublishIdempotencyKeyAppendsOnce)
}

func testPublishIdempotencyKeyAppendsOnce(t *testing.T, events v1.EventServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := uniqueTopic(t)

	id1, dup1, err := resilience.Publish(ctx, events, topic, []byte("one"), resilience.WithIdempotencyKey("k1"), resilience.WithEventKey("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	id2, dup2, err := resilience.Publish(ctx, events, topic, []byte("one"), resilience.WithIdempotencyKey("k1"), resilience.WithEventKey("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	if id1 == "" || dup1 || !dup2 || id2 != id1 {
		t.Fatalf("publish twice with one idempotency key: (%q, %v) then (%q, %v); want one id, the second a duplicate", id1, dup1, id2, dup2)
	}
	id3, dup3, err := resilience.Publish(ctx, events, topic, []byte("two"))
	if err != nil {
		t.Fatal(err)
	}
	if dup3 || id3 == id1 {
		t.Fatalf("publish without a key = (%q, %v), want a new event after %q", id3, dup3, id1)
	}

	// Only two events were appended: a subscriber gets "one" and "two".
	var got []string
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	err = resilience.Subscribe(sctx, events, topic, "g", "c1", func(_ context.Context, ev *v1.Event) error {
		got = append(got, fmt.Sprintf("%s %s %s", ev.GetEventId(), ev.GetKey(), ev.GetPayload()))
		if len(got) == 2 {
			time.AfterFunc(500*time.Millisecond, stop) // time for a third, which must not come
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{id1 + " order-1 one", id3 + "  two"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}

type delivery struct {
	payload string
	count   uint32
}

func TestSubscribeAcksNacksAndRedelivers(t *testing.T) {
	eachStore(t, testSubscribeAcksNacksAndRedelivers, "events-redelivery")
}

func testSubscribeAcksNacksAndRedelivers(t *testing.T, events v1.EventServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := uniqueTopic(t)
	for _, p := range []string{"e1", "e2", "e3"} {
		if _, _, err := resilience.Publish(ctx, events, topic, []byte(p), resilience.WithHeader("content-type", "text/plain")); err != nil {
			t.Fatal(err)
		}
	}

	var (
		mu  sync.Mutex
		got []delivery
	)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	err := resilience.Subscribe(sctx, events, topic, "workers", "w1", func(_ context.Context, ev *v1.Event) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, delivery{string(ev.GetPayload()), ev.GetDeliveryCount()})
		if ev.GetHeaders()["content-type"] != "text/plain" || ev.GetTopic() != topic || ev.GetPublishedAt() == nil {
			t.Errorf("event %v: headers, topic or published_at missing", ev)
		}
		if len(got) == 4 {
			// Every event is acked: none may come again, even after the
			// visibility timeout.
			time.AfterFunc(1500*time.Millisecond, stop)
		}
		if string(ev.GetPayload()) == "e2" && ev.GetDeliveryCount() == 1 {
			return errors.New("first attempt fails")
		}
		return nil
	}, resilience.WithVisibilityTimeout(300*time.Millisecond), resilience.WithMaxInFlight(4))
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// Publish order on first delivery; the nacked e2 comes again after the
	// events published later than it.
	want := []delivery{{"e1", 1}, {"e2", 1}, {"e3", 1}, {"e2", 2}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("deliveries %v, want %v", got, want)
	}
}

func TestSubscribeRetryAfterDelaysRedelivery(t *testing.T) {
	eachStore(t, testSubscribeRetryAfterDelaysRedelivery)
}

func testSubscribeRetryAfterDelaysRedelivery(t *testing.T, events v1.EventServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := uniqueTopic(t)
	if _, _, err := resilience.Publish(ctx, events, topic, []byte("x")); err != nil {
		t.Fatal(err)
	}
	var times []time.Time
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	err := resilience.Subscribe(sctx, events, topic, "g", "c", func(_ context.Context, ev *v1.Event) error {
		times = append(times, time.Now())
		if ev.GetDeliveryCount() == 1 {
			// Longer than the subscription's poll interval (1 s), which
			// redelivers a nacked event without a delay: only RetryAfter can
			// hold it back this long.
			return resilience.RetryAfter(errors.New("not yet"), 2500*time.Millisecond)
		}
		stop()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(times) != 2 {
		t.Fatalf("%d deliveries, want 2", len(times))
	}
	if d := times[1].Sub(times[0]); d < 2400*time.Millisecond {
		t.Fatalf("redelivered after %v, want about 2.5s (RetryAfter)", d)
	}
}

func TestEventsInvalidTopicNamesTheField(t *testing.T) {
	eachStore(t, testEventsInvalidTopicNamesTheField)
}

func testEventsInvalidTopicNamesTheField(t *testing.T, events v1.EventServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	check := func(what string, err error) {
		t.Helper()
		var e *resilience.Error
		if !errors.Is(err, resilience.ErrInvalidArgument) || !errors.As(err, &e) {
			t.Fatalf("%s with a bad topic: %v, want INVALID_ARGUMENT", what, err)
		}
		if e.Violations["topic"] == "" {
			t.Fatalf("%s: violations %v do not name topic", what, e.Violations)
		}
	}
	_, _, err := resilience.Publish(ctx, events, "bad topic/with spaces", []byte("x"))
	check("Publish", err)
	err = resilience.Subscribe(ctx, events, ".starts-with-dot", "g", "c", func(context.Context, *v1.Event) error {
		t.Error("handler called")
		return nil
	})
	check("Subscribe", err)
}

// Cancelling the subscription's context while the handler runs ends
// Subscribe without an error; the event the handler gave up on is nacked,
// so the next subscriber gets it at once, as a second delivery.
func TestSubscribeCancelEndsCleanly(t *testing.T) { eachStore(t, testSubscribeCancelEndsCleanly) }

func testSubscribeCancelEndsCleanly(t *testing.T, events v1.EventServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := uniqueTopic(t)
	if _, _, err := resilience.Publish(ctx, events, topic, []byte("slow")); err != nil {
		t.Fatal(err)
	}

	sctx, stop := context.WithCancel(ctx)
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- resilience.Subscribe(sctx, events, topic, "g", "c1", func(ctx context.Context, ev *v1.Event) error {
			close(started)
			<-ctx.Done()
			return ctx.Err()
		}, resilience.WithVisibilityTimeout(time.Minute))
	}()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("no delivery")
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Subscribe after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Subscribe did not return after its context was cancelled")
	}

	// Redelivered at once (nacked), not after the one-minute visibility timeout.
	var count uint32
	sctx2, stop2 := context.WithTimeout(ctx, 10*time.Second)
	defer stop2()
	err := resilience.Subscribe(sctx2, events, topic, "g", "c2", func(_ context.Context, ev *v1.Event) error {
		count = ev.GetDeliveryCount()
		stop2()
		return nil
	})
	if err != nil || count != 2 {
		t.Fatalf("second subscriber: err %v, delivery count %d; want the event again, delivery 2", err, count)
	}

	// A subscription with nothing to deliver ends as cleanly.
	sctx3, stop3 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer stop3()
	if err := resilience.Subscribe(sctx3, events, topic, "g", "c3", func(context.Context, *v1.Event) error { return nil }); err != nil {
		t.Fatalf("idle Subscribe at its deadline = %v, want nil", err)
	}
}

// The raw Ack and Nack report whether the event was pending.
func TestAckNackOfAnEventNoLongerPending(t *testing.T) {
	eachStore(t, testAckNackOfAnEventNoLongerPending)
}

func testAckNackOfAnEventNoLongerPending(t *testing.T, events v1.EventServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := uniqueTopic(t)
	id, _, err := resilience.Publish(ctx, events, topic, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	if err := resilience.Subscribe(sctx, events, topic, "g", "c", func(context.Context, *v1.Event) error { stop(); return nil }); err != nil {
		t.Fatal(err)
	}
	ack, err := events.Ack(ctx, &v1.AckRequest{Topic: topic, Group: "g", EventId: id})
	if err != nil || ack.GetAcked() {
		t.Fatalf("second Ack = %v, %v; want acked false", ack, err)
	}
	nack, err := events.Nack(ctx, &v1.NackRequest{Topic: topic, Group: "g", EventId: id})
	if err != nil || nack.GetRequeued() {
		t.Fatalf("Nack of an acked event = %v, %v; want requeued false", nack, err)
	}
	st, err := events.GetOutboxStatus(ctx, &v1.GetOutboxStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetEnabled() {
		t.Fatalf("outbox status %v: enabled without an outbox configured", st)
	}
}

// A sidecar whose config declares its topics refuses others with
// NOT_FOUND/TOPIC_UNKNOWN.
func TestEventsTopicUnknown(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "sidecar.yaml")
	if err := os.WriteFile(cfg, []byte("events:\n  topics: [orders.placed]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--config", cfg)
	conn, err := resilience.Dial(resilience.WithAddr(sc.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	events := v1.NewEventServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := resilience.Publish(ctx, events, "orders.placed", []byte("x")); err != nil {
		t.Fatalf("publish to a declared topic: %v", err)
	}
	_, _, err = resilience.Publish(ctx, events, "orders.other", []byte("x"))
	var e *resilience.Error
	if !errors.Is(err, resilience.ErrTopicUnknown) || !errors.As(err, &e) || e.Code != codes.NotFound {
		t.Fatalf("publish to an undeclared topic: %v, want NOT_FOUND TOPIC_UNKNOWN", err)
	}
	err = resilience.Subscribe(ctx, events, "orders.other", "g", "c", func(context.Context, *v1.Event) error { return nil })
	if !errors.Is(err, resilience.ErrTopicUnknown) {
		t.Fatalf("subscribe to an undeclared topic: %v, want TOPIC_UNKNOWN", err)
	}
}

// A sidecar that stops (SIGTERM) ends the subscription with
// UNAVAILABLE/SHUTTING_DOWN: an error, not a clean end.
func TestSubscribeEndsWithShuttingDown(t *testing.T) {
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t))
	conn, err := resilience.Dial(resilience.WithAddr(sc.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	events := v1.NewEventServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	time.AfterFunc(300*time.Millisecond, func() { sc.Signal(syscall.SIGTERM) })
	err = resilience.Subscribe(ctx, events, uniqueTopic(t), "g", "c", func(context.Context, *v1.Event) error {
		t.Error("handler called")
		return nil
	})
	if !errors.Is(err, resilience.ErrShuttingDown) {
		t.Fatalf("Subscribe while the sidecar stops = %v, want SHUTTING_DOWN", err)
	}
}

// sharedEvents is the EventService of the sidecar TestMain started.
func sharedEvents(t *testing.T) v1.EventServiceClient {
	t.Helper()
	conn, err := resilience.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return v1.NewEventServiceClient(conn)
}

// WithMaxDeliveries: an event whose handler always fails is delivered that
// many times (the default is 10), then moved to the dead-letter topic
// "<topic>.dead", with headers naming where it came from.
func TestSubscribeMaxDeliveriesDeadLetters(t *testing.T) {
	events := sharedEvents(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := uniqueTopic(t)
	if _, _, err := resilience.Publish(ctx, events, topic, []byte("poison"), resilience.WithEventKey("order-9")); err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		counts []uint32
	)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- resilience.Subscribe(sctx, events, topic, "g", "c", func(_ context.Context, ev *v1.Event) error {
			mu.Lock()
			counts = append(counts, ev.GetDeliveryCount())
			mu.Unlock()
			return errors.New("cannot handle it")
		}, resilience.WithMaxDeliveries(2))
	}()

	var dead *v1.Event
	dctx, dstop := context.WithCancel(ctx)
	defer dstop()
	err := resilience.Subscribe(dctx, events, topic+".dead", "dlq", "c", func(_ context.Context, ev *v1.Event) error {
		dead = ev
		dstop()
		return nil
	})
	stop()
	if serr := <-done; err != nil || serr != nil {
		t.Fatalf("subscriptions ended with %v (dead letters) and %v", err, serr)
	}
	if dead == nil {
		t.Fatal("nothing reached the dead-letter topic")
	}
	h := dead.GetHeaders()
	if string(dead.GetPayload()) != "poison" || dead.GetKey() != "order-9" || h["x-dead-letter-topic"] != topic ||
		h["x-dead-letter-group"] != "g" || h["x-dead-letter-deliveries"] != "2" {
		t.Fatalf("dead letter %v", dead)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(counts) != "[1 2]" {
		t.Fatalf("deliveries %v, want [1 2]", counts)
	}
}

// WithStartFrom(START_FROM_LATEST): a new group gets only the events
// published after it was created; an existing group keeps its position
// whatever the option says, and a new group from the earliest gets
// everything.
func TestSubscribeStartFrom(t *testing.T) {
	events := sharedEvents(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := uniqueTopic(t)
	publish := func(payload string) {
		if _, _, err := resilience.Publish(ctx, events, topic, []byte(payload)); err != nil {
			t.Fatal(err)
		}
	}
	publish("before")
	// first subscribes as consumer and, once the subscription has ended,
	// sends the payload of the first event it was given ("" if none). What
	// else was delivered to it comes again after a short visibility
	// timeout.
	first := func(group, consumer string, from v1.StartFrom) <-chan string {
		got := make(chan string, 1)
		go func() {
			sctx, stop := context.WithCancel(ctx)
			defer stop()
			var payload string
			err := resilience.Subscribe(sctx, events, topic, group, consumer, func(_ context.Context, ev *v1.Event) error {
				if payload == "" {
					payload = string(ev.GetPayload())
				}
				stop()
				return nil
			}, resilience.WithStartFrom(from), resilience.WithVisibilityTimeout(200*time.Millisecond))
			if err != nil {
				t.Errorf("subscribe %s/%s: %v", group, consumer, err)
			}
			got <- payload
		}()
		return got
	}

	// The group is created when the subscription starts, which the client
	// cannot see: publish until the subscriber gets something.
	latest := first("late", "c1", v1.StartFrom_START_FROM_LATEST)
	var got string
	n := 0
	testkit.Eventually(t, 20*time.Second, "an event for the group started from the latest", func() bool {
		select {
		case got = <-latest:
			return true
		default:
		}
		n++
		publish(fmt.Sprint("after-", n))
		return false
	})
	if !strings.HasPrefix(got, "after-") {
		t.Fatalf("new group started from the latest got %q first, want an event published after it", got)
	}
	publish("later")
	if again := <-first("late", "c2", v1.StartFrom_START_FROM_EARLIEST); again != "later" && !strings.HasPrefix(again, "after-") {
		t.Fatalf("existing group, resubscribed from the earliest, got %q first; want it to keep its position", again)
	}
	if all := <-first("all", "c1", v1.StartFrom_START_FROM_EARLIEST); all != "before" {
		t.Fatalf("new group from the earliest got %q first, want %q", all, "before")
	}
}

// WithNackDelay: an event whose handler failed comes again after the
// delay. Without one it comes again within the sidecar's poll interval
// (1s), so the delay here is well above that.
func TestSubscribeNackDelay(t *testing.T) {
	events := sharedEvents(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := uniqueTopic(t)
	if _, _, err := resilience.Publish(ctx, events, topic, []byte("x")); err != nil {
		t.Fatal(err)
	}
	const delay = 3 * time.Second
	var times []time.Time
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	err := resilience.Subscribe(sctx, events, topic, "g", "c", func(_ context.Context, ev *v1.Event) error {
		times = append(times, time.Now())
		if ev.GetDeliveryCount() == 1 {
			return errors.New("not yet")
		}
		stop()
		return nil
	}, resilience.WithNackDelay(delay))
	if err != nil {
		t.Fatal(err)
	}
	if len(times) != 2 {
		t.Fatalf("%d deliveries, want 2", len(times))
	}
	// The nack was sent after the first delivery was handled, so the
	// redelivery cannot come sooner (less 100ms for rounding).
	if d := times[1].Sub(times[0]); d < delay-100*time.Millisecond {
		t.Fatalf("redelivered after %v, want at least %v (WithNackDelay)", d, delay)
	}
}
