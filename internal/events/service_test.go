package events_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The service checks what callers inside the sidecar (the outbox relay)
// publish, as the API edge does.
func TestServicePublishChecks(t *testing.T) {
	svc := events.NewService(events.NewMemoryStore(nil), events.Options{MaxPayloadBytes: 100,
		Topics: map[string]events.TopicConfig{"orders": {}, "payments": {}}})
	ctx := testCtx(t)
	cases := []struct {
		m     events.Message
		field string
	}{
		{events.Message{Topic: ""}, "topic"},
		{events.Message{Topic: "orders.dead"}, "topic"},
		{events.Message{Topic: "or ders"}, "topic"},
		{events.Message{Topic: "orders", Payload: make([]byte, 101)}, "payload"},
		{events.Message{Topic: "orders", Payload: make([]byte, 95), Headers: map[string]string{"abc": "def"}}, "payload"},
		{events.Message{Topic: "orders", Key: strings.Repeat("k", 513)}, "key"},
		{events.Message{Topic: "orders", IdempotencyKey: "\xff"}, "idempotency_key"},
		{events.Message{Topic: "orders", Headers: map[string]string{"": "x"}}, "headers"},
	}
	for _, c := range cases {
		_, err := svc.Publish(ctx, c.m)
		var fe *events.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, events.ErrInvalid) {
			t.Errorf("Publish(%+v) = %v; want a FieldError on %s", c.m, err, c.field)
		}
	}
	if _, err := svc.Publish(ctx, events.Message{Topic: "shipping"}); !errors.Is(err, events.ErrTopicUnknown) {
		t.Errorf("undeclared topic: %v, want ErrTopicUnknown", err)
	}
	p, err := svc.Publish(ctx, events.Message{Topic: "orders", IdempotencyKey: "x"})
	if err != nil || p.Duplicate || !events.ValidEventID(p.EventID) {
		t.Fatalf("Publish: %+v, %v", p, err)
	}
	if q, err := svc.Publish(ctx, events.Message{Topic: "orders", IdempotencyKey: "x"}); err != nil || !q.Duplicate || q.EventID != p.EventID {
		t.Fatalf("retry: %+v, %v", q, err)
	}
	if _, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: "shipping.dead", Group: "g", Consumer: "c"}); !errors.Is(err, events.ErrTopicUnknown) {
		t.Errorf("Subscribe to an undeclared dead-letter topic: %v", err)
	}
	sub, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: "payments.dead", Group: "g", Consumer: "c"})
	if err != nil {
		t.Fatalf("Subscribe to a declared topic's dead-letter topic: %v", err)
	}
	sub.Close()
}

// Next hands out at most MaxInFlight events; an Ack through the service
// frees a slot at once, and an unacked event's slot frees itself after the
// visibility timeout (when it is redelivered).
func TestServiceInFlight(t *testing.T) {
	svc := events.NewService(events.NewMemoryStore(nil), events.Options{PollInterval: 20 * time.Millisecond})
	ctx := testCtx(t)
	for range 3 {
		if _, err := svc.Publish(ctx, events.Message{Topic: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: "t", Group: "g", Consumer: "c", MaxInFlight: 2, Visibility: 300 * time.Millisecond})
	if err != nil || !sub.Created {
		t.Fatalf("Subscribe: %v created=%v", err, sub != nil && sub.Created)
	}
	defer sub.Close()
	a, _ := sub.Next(ctx)
	b, _ := sub.Next(ctx)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if d, err := sub.Next(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third Next with two in flight: %+v, %v", d, err)
	}
	cancel()
	if ok, err := svc.Ack(ctx, "t", "g", a.ID); !ok || err != nil {
		t.Fatalf("Ack: %v %v", ok, err)
	}
	c, err := sub.Next(ctx)
	if err != nil || c.ID == a.ID || c.ID == b.ID || c.Count != 1 {
		t.Fatalf("after Ack: %+v, %v", c, err)
	}
	// b and c are never acked: once visible again they come back.
	again, err := sub.Next(ctx)
	if err != nil || (again.ID != b.ID && again.ID != c.ID) || again.Count != 2 {
		t.Fatalf("redelivery: %+v, %v; want %s or %s with count 2", again, err, b.ID, c.ID)
	}
}

// A group the store lost (Redis restarted empty, or the stream was
// deleted) is created again by its subscribers.
func TestServiceRecreatesLostGroup(t *testing.T) {
	rdb := testharness.StartRedis(t).Client(t)
	st := events.NewRedisStore(rdb, "lost", time.Second)
	svc := events.NewService(st, events.Options{PollInterval: 20 * time.Millisecond})
	ctx := testCtx(t)
	sub, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: "t", Group: "g", Consumer: "c"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := rdb.Del(ctx, st.StreamKey("t")).Err(); err != nil {
		t.Fatal(err)
	}
	got := make(chan events.Delivery, 1)
	go func() {
		d, err := sub.Next(ctx)
		if err != nil {
			t.Errorf("Next: %v", err)
		}
		got <- d
	}()
	// Publish until the subscription has recreated its group and sees one
	// (it starts at the earliest event).
	p, err := svc.Publish(ctx, events.Message{Topic: "t", Key: "after"})
	if err != nil {
		t.Fatal(err)
	}
	if d := <-got; d.ID != p.EventID {
		t.Fatalf("got %+v, want %s", d, p.EventID)
	}
}

func TestServiceRedisUnavailable(t *testing.T) {
	r := testharness.StartRedis(t)
	svc := events.NewService(events.NewRedisStore(r.Client(t), "down", 200*time.Millisecond), events.Options{})
	r.Kill()
	ctx := testCtx(t)
	if _, err := svc.Publish(ctx, events.Message{Topic: "t"}); !isUnavailable(err) {
		t.Fatalf("Publish with Redis down: %v", err)
	}
	if _, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: "t", Group: "g", Consumer: "c"}); !isUnavailable(err) {
		t.Fatalf("Subscribe with Redis down: %v", err)
	}
}

func isUnavailable(err error) bool {
	return err != nil && strings.Contains(err.Error(), "store: unavailable")
}

// A push subscription posts each event with its metadata; the event's own
// headers go along when they can be HTTP fields.
func TestPushHeaders(t *testing.T) {
	var mu sync.Mutex
	var got []*http.Request
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
	}))
	t.Cleanup(hs.Close)
	brk, err := breaker.NewService(breaker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(brk.Close)
	caller, err := upstream.New([]upstream.Config{{Name: "hook", URL: hs.URL}}, upstream.Options{Breakers: brk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(caller.Close)
	svc := events.NewService(events.NewMemoryStore(nil), events.Options{PollInterval: 20 * time.Millisecond})
	ctx := testCtx(t)
	p, err := svc.Publish(ctx, events.Message{Topic: "t", Key: "k-1", Payload: []byte("body"), IdempotencyKey: "outbox:outbox:7", Headers: map[string]string{
		"traceparent": "00-abc-def-01", "bad name": "x", "Host": "evil", "X-Event-Id": "forged", "ctl": "a\nb",
		"X-Event-Idempotency-Key": "forged"}})
	if err != nil {
		t.Fatal(err)
	}
	pusher := svc.StartPush(events.PushConfig{Name: "p", Topic: "t", Group: "g", Upstream: "hook", Path: "/in", Visibility: time.Second}, caller)
	received := func(want int) {
		t.Helper()
		testkit.EventuallyNil(t, 20*time.Second, fmt.Sprintf("%d pushes", want), func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(got) < want {
				return fmt.Errorf("%d pushed", len(got))
			}
			return nil
		})
	}
	received(1)
	// Pushes run one at a time: once a second event arrives, the first
	// push has been answered and settled.
	if _, err := svc.Publish(ctx, events.Message{Topic: "t", Payload: []byte("second")}); err != nil {
		t.Fatal(err)
	}
	received(2)
	pusher.Close()
	r := got[0]
	for k, v := range map[string]string{"Idempotency-Key": p.EventID, "X-Event-Id": p.EventID, "X-Event-Topic": "t", "X-Event-Key": "k-1",
		"X-Delivery-Count": "1", "Traceparent": "00-abc-def-01", "Ctl": "", "X-Event-Idempotency-Key": "outbox:outbox:7"} {
		if r.Header.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, r.Header.Get(k), v)
		}
	}
	if r.Method != http.MethodPost || r.URL.Path != "/in" || r.Host == "evil" {
		t.Errorf("request %s %s host %s", r.Method, r.URL.Path, r.Host)
	}
	if _, err := time.Parse(time.RFC3339Nano, r.Header.Get("X-Event-Published-At")); err != nil {
		t.Errorf("X-Event-Published-At: %v", err)
	}
	// Acked: not pending any more.
	if ok, _ := svc.Ack(ctx, "t", "g", p.EventID); ok {
		t.Error("pushed event still pending after a 2xx")
	}
}

// An unacked event comes back after the visibility timeout of the
// subscription it was delivered to, whatever the timeout of the consumer
// that picks it up: here 300ms, not the second consumer's 1h.
func TestServiceVisibilityBelongsToTheDelivery(t *testing.T) {
	rd := testharness.StartRedis(t)
	for name, store := range map[string]events.Store{
		"memory": events.NewMemoryStore(nil),
		"redis":  events.NewRedisStore(rd.Client(t), "visibility", 2*time.Second, events.WithBlockingClient(rd.Client(t))),
	} {
		t.Run(name, func(t *testing.T) {
			svc := events.NewService(store, events.Options{})
			ctx := testCtx(t)
			p, err := svc.Publish(ctx, events.Message{Topic: "t", Payload: []byte("x")})
			if err != nil {
				t.Fatal(err)
			}
			first, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: "t", Group: "g", Consumer: "c1", Visibility: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			d, err := first.Next(ctx)
			if err != nil || d.ID != p.EventID || d.Count != 1 {
				t.Fatalf("first delivery: %+v, %v", d, err)
			}
			first.Close() // c1 dies without acking

			second, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: "t", Group: "g", Consumer: "c2", Visibility: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(second.Close)
			// testCtx ends after 30s: far below c2's hour, far above c1's 300ms.
			d, err = second.Next(ctx)
			if err != nil || d.ID != p.EventID || d.Count != 2 {
				t.Fatalf("redelivery to c2: %+v, %v; want %s with count 2", d, err, p.EventID)
			}
		})
	}
}

// TestServiceUndeliveredIsHandedBack (issue 16): the deliveries a
// subscription read but never handed on to its client (one whose send
// failed, given back with Unsent, and one still queued) go back to the
// group when it closes, and another consumer gets them at once as first
// deliveries, long before the hour of visibility. The one handed on stays
// with its consumer for its visibility timeout.
func TestServiceUndeliveredIsHandedBack(t *testing.T) {
	rd := testharness.StartRedis(t)
	for name, store := range map[string]events.Store{
		"memory": events.NewMemoryStore(nil),
		"redis":  events.NewRedisStore(rd.Client(t), "handback", 2*time.Second, events.WithBlockingClient(rd.Client(t))),
	} {
		t.Run(name, func(t *testing.T) {
			svc := events.NewService(store, events.Options{PollInterval: 50 * time.Millisecond})
			ctx := testCtx(t)
			var want []string
			for range 3 {
				p, err := svc.Publish(ctx, events.Message{Topic: "t", Payload: []byte("x")})
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, p.EventID)
			}
			first, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: "t", Group: "g", Consumer: "c1", Visibility: time.Hour, MaxDeliveries: 1})
			if err != nil {
				t.Fatal(err)
			}
			sent, err := first.Next(ctx)
			if err != nil || sent.ID != want[0] {
				t.Fatalf("first delivery: %+v, %v", sent, err)
			}
			failed, err := first.Next(ctx)
			if err != nil || failed.ID != want[1] {
				t.Fatalf("second delivery: %+v, %v", failed, err)
			}
			first.Unsent(failed) // its send failed; want[2] is still queued
			first.Close()

			second, err := svc.Subscribe(ctx, events.SubscribeOptions{Topic: "t", Group: "g", Consumer: "c2", Visibility: time.Hour, MaxDeliveries: 1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(second.Close)
			var got []string
			for range 2 {
				d, err := second.Next(ctx)
				if err != nil || d.Count != 1 {
					t.Fatalf("delivery to c2: %+v, %v; want a first delivery", d, err)
				}
				got = append(got, d.ID)
			}
			if strings.Join(got, " ") != want[1]+" "+want[2] {
				t.Fatalf("c2 got %v, want %v", got, want[1:])
			}
			short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			if d, err := second.Next(short); err == nil {
				t.Fatalf("c2 got %+v, which c1 was sent (visible to c1 for an hour)", d)
			}
		})
	}
}

// TestServiceNackRedeliversAtOnce: a subscription with nothing to read
// waits for its poll interval (an hour here, as its visibility timeout) or
// for a wake-up. A nack with retry_after 0, made while it waits, through
// the same service or (on Redis) another sidecar's, is redelivered at
// once; one with retry_after below the poll interval when it is due, not
// at the next poll. Without the wake-up the subscription would sleep an
// hour: the test's context is what fails it.
func TestServiceNackRedeliversAtOnce(t *testing.T) {
	rd := testharness.StartRedis(t)
	mem := events.NewMemoryStore(nil)
	redisStore := func() events.Store {
		return events.NewRedisStore(rd.Client(t), "nack", 2*time.Second, events.WithBlockingClient(rd.Client(t)))
	}
	opts := events.Options{PollInterval: time.Hour, Visibility: time.Hour}
	for name, pair := range map[string][2]events.Store{
		"memory": {mem, mem},
		"redis":  {redisStore(), redisStore()}, // two sidecars on one Redis
	} {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			consumer, nacker := events.NewService(pair[0], opts), events.NewService(pair[1], opts)
			p, err := nacker.Publish(ctx, events.Message{Topic: "t", Payload: []byte("x")})
			if err != nil {
				t.Fatal(err)
			}
			sub, err := consumer.Subscribe(ctx, events.SubscribeOptions{Topic: "t", Group: "g", Consumer: "c"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(sub.Close)
			d, err := sub.Next(ctx)
			if err != nil || d.ID != p.EventID || d.Count != 1 {
				t.Fatalf("first delivery %+v, %v", d, err)
			}
			for i, retry := range []time.Duration{0, 300 * time.Millisecond} {
				type next struct {
					d   events.Delivery
					err error
					at  time.Time
				}
				got := make(chan next, 1)
				go func() {
					d, err := sub.Next(ctx)
					got <- next{d, err, time.Now()}
				}()
				time.Sleep(200 * time.Millisecond) // real time: let Next read nothing and start waiting
				nacked := time.Now()
				if ok, err := nacker.Nack(ctx, "t", "g", p.EventID, retry); err != nil || !ok {
					t.Fatalf("Nack(%v) = %v, %v", retry, ok, err)
				}
				n := <-got
				if n.err != nil || n.d.ID != p.EventID || n.d.Count != i+2 {
					t.Fatalf("redelivery after Nack(%v): %+v, %v", retry, n.d, n.err)
				}
				if waited := n.at.Sub(nacked); waited < retry {
					t.Fatalf("redelivered %v after Nack(%v): before it was due", waited, retry)
				}
				t.Logf("Nack(%v): redelivered after %v (poll interval %v)", retry, n.at.Sub(nacked).Round(time.Millisecond), opts.PollInterval)
			}
		})
	}
}
