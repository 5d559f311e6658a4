package api_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// eventEnv serves the event API over bufconn.
type eventEnv struct {
	client v1.EventServiceClient
	stop   context.CancelFunc // the sidecar's shutdown
}

type fakeOutbox struct {
	st    events.OutboxStatus
	retry events.OutboxRetry
	err   error
}

func (f fakeOutbox) Status() events.OutboxStatus { return f.st }
func (f fakeOutbox) RetryRefused(context.Context) (events.OutboxRetry, error) {
	return f.retry, f.err
}

func startEvents(t *testing.T, st events.Store, opts events.Options, outbox api.OutboxStatuser) *eventEnv {
	t.Helper()
	if opts.PollInterval == 0 {
		opts.PollInterval = 50 * time.Millisecond
	}
	svc := events.NewService(st, opts)
	stopping, stop := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	v1.RegisterEventServiceServer(gs, api.NewEventServer(stopping, svc, outbox, nil))
	lis := bufconn.Listen(1 << 20)
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop()
		conn.Close()
		gs.Stop()
	})
	return &eventEnv{client: v1.NewEventServiceClient(conn), stop: stop}
}

// subscribe opens a subscription and checks its first message.
func (e *eventEnv) subscribe(t *testing.T, ctx context.Context, r *v1.SubscribeRequest) v1.EventService_SubscribeClient {
	t.Helper()
	s, err := e.client.Subscribe(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Recv()
	if err != nil || m.GetSubscribed() == nil {
		t.Fatalf("first message %v, %v; want subscribed", m, err)
	}
	return s
}

func recvEvent(t *testing.T, s v1.EventService_SubscribeClient) *v1.Event {
	t.Helper()
	m, err := s.Recv()
	if err != nil || m.GetEvent() == nil {
		t.Fatalf("Recv = %v, %v; want an event", m, err)
	}
	return m.GetEvent()
}

func TestEventsAPIFlow(t *testing.T) {
	e := startEvents(t, events.NewMemoryStore(nil), events.Options{}, nil)
	ctx := idemCtx(t)
	p, err := e.client.Publish(ctx, &v1.PublishRequest{Topic: "orders", Key: "o1", Payload: []byte("hello"),
		Headers: map[string]string{"content-type": "text/plain"}, IdempotencyKey: "pub-1"})
	if err != nil || p.GetDuplicate() {
		t.Fatalf("Publish: %v, %v", p, err)
	}
	again, err := e.client.Publish(ctx, &v1.PublishRequest{Topic: "orders", Payload: []byte("hello"), IdempotencyKey: "pub-1"})
	if err != nil || !again.GetDuplicate() || again.GetEventId() != p.GetEventId() {
		t.Fatalf("retried Publish: %v, %v; want duplicate %s", again, err, p.GetEventId())
	}
	s, err := e.client.Subscribe(ctx, &v1.SubscribeRequest{Topic: "orders", Group: "billing", Consumer: "pod-1"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Recv()
	if err != nil || !m.GetSubscribed().GetGroupCreated() {
		t.Fatalf("first message %v, %v; want subscribed with group_created", m, err)
	}
	ev := recvEvent(t, s)
	if ev.GetEventId() != p.GetEventId() || ev.GetTopic() != "orders" || ev.GetKey() != "o1" || string(ev.GetPayload()) != "hello" ||
		ev.GetHeaders()["content-type"] != "text/plain" || ev.GetDeliveryCount() != 1 || ev.GetIdempotencyKey() != "pub-1" ||
		ev.GetPublishedAt() == nil || ev.GetFirstDeliveredAt() == nil {
		t.Fatalf("event = %v", ev)
	}
	a, err := e.client.Ack(ctx, &v1.AckRequest{Topic: "orders", Group: "billing", EventId: ev.GetEventId()})
	if err != nil || !a.GetAcked() {
		t.Fatalf("Ack: %v, %v", a, err)
	}
	a, err = e.client.Ack(ctx, &v1.AckRequest{Topic: "orders", Group: "billing", EventId: ev.GetEventId()})
	if err != nil || a.GetAcked() {
		t.Fatalf("second Ack: %v, %v; want acked=false", a, err)
	}
	// Nack: redelivered at once with count 2.
	p2, _ := e.client.Publish(ctx, &v1.PublishRequest{Topic: "orders"})
	if ev := recvEvent(t, s); ev.GetEventId() != p2.GetEventId() {
		t.Fatalf("got %s, want %s", ev.GetEventId(), p2.GetEventId())
	}
	n, err := e.client.Nack(ctx, &v1.NackRequest{Topic: "orders", Group: "billing", EventId: p2.GetEventId()})
	if err != nil || !n.GetRequeued() {
		t.Fatalf("Nack: %v, %v", n, err)
	}
	if ev := recvEvent(t, s); ev.GetEventId() != p2.GetEventId() || ev.GetDeliveryCount() != 2 {
		t.Fatalf("after Nack got %v, want %s with count 2", ev, p2.GetEventId())
	}
}

func TestEventsAPIMaxInFlight(t *testing.T) {
	e := startEvents(t, events.NewMemoryStore(nil), events.Options{}, nil)
	ctx := idemCtx(t)
	for range 3 {
		if _, err := e.client.Publish(ctx, &v1.PublishRequest{Topic: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	s := e.subscribe(t, ctx, &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c", MaxInFlight: 1,
		VisibilityTimeout: durationpb.New(time.Hour)})
	first := recvEvent(t, s)
	// The second arrives only once the first is acked.
	got := make(chan *v1.Event, 1)
	go func() {
		m, err := s.Recv()
		if err == nil {
			got <- m.GetEvent()
		}
		close(got)
	}()
	select {
	case ev := <-got:
		t.Fatalf("second event %v delivered while the first was in flight", ev)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := e.client.Ack(ctx, &v1.AckRequest{Topic: "t", Group: "g", EventId: first.GetEventId()}); err != nil {
		t.Fatal(err)
	}
	if ev := <-got; ev == nil || ev.GetEventId() == first.GetEventId() {
		t.Fatalf("after ack got %v", ev)
	}
}

func TestEventsAPIInvalid(t *testing.T) {
	e := startEvents(t, events.NewMemoryStore(nil), events.Options{MaxPayloadBytes: 1000}, nil)
	ctx := idemCtx(t)
	long := func(n int) string { return strings.Repeat("a", n) }
	manyHeaders := map[string]string{}
	for i := range 65 {
		manyHeaders[long(i+1)] = "v"
	}
	pubs := []struct {
		name   string
		r      *v1.PublishRequest
		fields []string
	}{
		{"empty topic", &v1.PublishRequest{}, []string{"topic"}},
		{"topic too long", &v1.PublishRequest{Topic: long(250)}, []string{"topic"}},
		{"topic bad char", &v1.PublishRequest{Topic: "a/b"}, []string{"topic"}},
		{"topic space", &v1.PublishRequest{Topic: "a b"}, []string{"topic"}},
		{"topic leading dot", &v1.PublishRequest{Topic: ".a"}, []string{"topic"}},
		{"topic dead", &v1.PublishRequest{Topic: "a.dead"}, []string{"topic"}},
		{"topic invalid utf8", &v1.PublishRequest{Topic: "a\xff"}, []string{"topic"}},
		{"key too long", &v1.PublishRequest{Topic: "t", Key: long(513)}, []string{"key"}},
		{"key invalid utf8", &v1.PublishRequest{Topic: "t", Key: "\xc3"}, []string{"key"}},
		{"idempotency key too long", &v1.PublishRequest{Topic: "t", IdempotencyKey: long(513)}, []string{"idempotency_key"}},
		{"idempotency key invalid utf8", &v1.PublishRequest{Topic: "t", IdempotencyKey: "\xff"}, []string{"idempotency_key"}},
		{"payload too large", &v1.PublishRequest{Topic: "t", Payload: make([]byte, 1001)}, []string{"payload"}},
		{"headers count payload", &v1.PublishRequest{Topic: "t", Payload: make([]byte, 990), Headers: map[string]string{"abcdef": "ghijk"}}, []string{"payload"}},
		{"too many headers", &v1.PublishRequest{Topic: "t", Headers: manyHeaders}, []string{"headers", "payload"}},
		{"empty header name", &v1.PublishRequest{Topic: "t", Headers: map[string]string{"": "x"}}, []string{"headers"}},
		{"header name too long", &v1.PublishRequest{Topic: "t", Headers: map[string]string{long(257): "x"}}, []string{"headers"}},
		{"header invalid utf8", &v1.PublishRequest{Topic: "t", Headers: map[string]string{"a": "\xff"}}, []string{"headers"}},
		{"several", &v1.PublishRequest{Topic: "", Key: "\xff", Payload: make([]byte, 1001)}, []string{"topic", "key", "payload"}},
	}
	for _, c := range pubs {
		t.Run("Publish/"+c.name, func(t *testing.T) {
			_, err := e.client.Publish(ctx, c.r)
			idemInvalid(t, err, c.fields...)
		})
	}
	t.Run("Publish/header value too long", func(t *testing.T) {
		e := startEvents(t, events.NewMemoryStore(nil), events.Options{}, nil)
		_, err := e.client.Publish(ctx, &v1.PublishRequest{Topic: "t", Headers: map[string]string{"a": long(8<<10 + 1)}})
		idemInvalid(t, err, "headers")
	})
	subs := []struct {
		name   string
		r      *v1.SubscribeRequest
		fields []string
	}{
		{"empty", &v1.SubscribeRequest{}, []string{"topic", "group", "consumer"}},
		{"group too long", &v1.SubscribeRequest{Topic: "t", Group: long(129), Consumer: "c"}, []string{"group"}},
		{"group bad char", &v1.SubscribeRequest{Topic: "t", Group: "g:1", Consumer: "c"}, []string{"group"}},
		{"consumer bad char", &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "pod 1"}, []string{"consumer"}},
		{"consumer invalid utf8", &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "\xff"}, []string{"consumer"}},
		{"dead of dead", &v1.SubscribeRequest{Topic: "t.dead.dead", Group: "g", Consumer: "c"}, []string{"topic"}},
		{"bare dead", &v1.SubscribeRequest{Topic: ".dead", Group: "g", Consumer: "c"}, []string{"topic"}},
		{"max in flight", &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c", MaxInFlight: 1001}, []string{"max_in_flight"}},
		{"max deliveries", &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c", MaxDeliveries: 1001}, []string{"max_deliveries"}},
		{"visibility short", &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c", VisibilityTimeout: durationpb.New(99 * time.Millisecond)}, []string{"visibility_timeout"}},
		{"visibility long", &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c", VisibilityTimeout: durationpb.New(13 * time.Hour)}, []string{"visibility_timeout"}},
		{"visibility invalid", &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c", VisibilityTimeout: &durationpb.Duration{Seconds: 1, Nanos: -1}}, []string{"visibility_timeout"}},
		{"start from", &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c", StartFrom: 7}, []string{"start_from"}},
	}
	for _, c := range subs {
		t.Run("Subscribe/"+c.name, func(t *testing.T) {
			s, err := e.client.Subscribe(ctx, c.r)
			if err == nil {
				_, err = s.Recv()
			}
			idemInvalid(t, err, c.fields...)
		})
	}
	acks := []struct {
		name   string
		r      *v1.AckRequest
		fields []string
	}{
		{"empty", &v1.AckRequest{}, []string{"topic", "group", "event_id"}},
		{"event id shape", &v1.AckRequest{Topic: "t", Group: "g", EventId: "12"}, []string{"event_id"}},
		{"event id letters", &v1.AckRequest{Topic: "t", Group: "g", EventId: "a-b"}, []string{"event_id"}},
		{"event id sign", &v1.AckRequest{Topic: "t", Group: "g", EventId: "+1-2"}, []string{"event_id"}},
	}
	for _, c := range acks {
		t.Run("Ack/"+c.name, func(t *testing.T) {
			_, err := e.client.Ack(ctx, c.r)
			idemInvalid(t, err, c.fields...)
			_, err = e.client.Nack(ctx, &v1.NackRequest{Topic: c.r.Topic, Group: c.r.Group, EventId: c.r.EventId})
			idemInvalid(t, err, c.fields...)
		})
	}
	t.Run("Nack/retry_after", func(t *testing.T) {
		for _, d := range []*durationpb.Duration{durationpb.New(-time.Second), durationpb.New(13 * time.Hour)} {
			_, err := e.client.Nack(ctx, &v1.NackRequest{Topic: "t", Group: "g", EventId: "1-0", RetryAfter: d})
			idemInvalid(t, err, "retry_after")
		}
	})
}

func TestEventsAPITopicUnknown(t *testing.T) {
	e := startEvents(t, events.NewMemoryStore(nil), events.Options{Topics: map[string]events.TopicConfig{"orders": {}}}, nil)
	ctx := idemCtx(t)
	_, err := e.client.Publish(ctx, &v1.PublishRequest{Topic: "other"})
	idemStatus(t, err, codes.NotFound, api.ReasonTopicUnknown)
	s, err := e.client.Subscribe(ctx, &v1.SubscribeRequest{Topic: "other", Group: "g", Consumer: "c"})
	if err == nil {
		_, err = s.Recv()
	}
	idemStatus(t, err, codes.NotFound, api.ReasonTopicUnknown)
	_, err = e.client.Ack(ctx, &v1.AckRequest{Topic: "other.dead", Group: "g", EventId: "1-0"})
	idemStatus(t, err, codes.NotFound, api.ReasonTopicUnknown)
	_, err = e.client.Nack(ctx, &v1.NackRequest{Topic: "other", Group: "g", EventId: "1-0"})
	idemStatus(t, err, codes.NotFound, api.ReasonTopicUnknown)
	// Declared topics and their dead-letter topics work.
	if _, err := e.client.Publish(ctx, &v1.PublishRequest{Topic: "orders"}); err != nil {
		t.Fatal(err)
	}
	e.subscribe(t, ctx, &v1.SubscribeRequest{Topic: "orders.dead", Group: "ops", Consumer: "c"})
}

func TestEventsAPIShutdownEndsSubscriptions(t *testing.T) {
	e := startEvents(t, events.NewMemoryStore(nil), events.Options{}, nil)
	s := e.subscribe(t, idemCtx(t), &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c"})
	e.stop()
	_, err := s.Recv()
	idemStatus(t, err, codes.Unavailable, api.ReasonShuttingDown)
}

// A cancelled stream's unacked event goes to another consumer after the
// visibility timeout.
func TestEventsAPICancelledSubscriberRedelivers(t *testing.T) {
	e := startEvents(t, events.NewMemoryStore(nil), events.Options{}, nil)
	ctx := idemCtx(t)
	p, _ := e.client.Publish(ctx, &v1.PublishRequest{Topic: "t"})
	sctx, cancel := context.WithCancel(ctx)
	s1 := e.subscribe(t, sctx, &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c1", VisibilityTimeout: durationpb.New(100 * time.Millisecond)})
	if ev := recvEvent(t, s1); ev.GetEventId() != p.GetEventId() {
		t.Fatal("wrong event")
	}
	cancel()
	s2 := e.subscribe(t, ctx, &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c2", VisibilityTimeout: durationpb.New(100 * time.Millisecond)})
	ev := recvEvent(t, s2)
	if ev.GetEventId() != p.GetEventId() || ev.GetDeliveryCount() != 2 {
		t.Fatalf("redelivery %v, want %s with count 2", ev, p.GetEventId())
	}
}

func TestEventsAPIStoreUnavailable(t *testing.T) {
	r := testharness.StartRedis(t)
	rdb := r.Client(t)
	e := startEvents(t, events.NewRedisStore(rdb, "down", 300*time.Millisecond), events.Options{}, nil)
	ctx := idemCtx(t)
	if _, err := e.client.Publish(ctx, &v1.PublishRequest{Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	s := e.subscribe(t, ctx, &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c"})
	recvEvent(t, s)
	r.Kill()
	_, err := e.client.Publish(ctx, &v1.PublishRequest{Topic: "t"})
	st := idemStatus(t, err, codes.Unavailable, api.ReasonStoreUnavailable)
	_ = st
	// The open subscription ends with the same status.
	_, err = s.Recv()
	idemStatus(t, err, codes.Unavailable, api.ReasonStoreUnavailable)
	_, err = e.client.Ack(ctx, &v1.AckRequest{Topic: "t", Group: "g", EventId: "1-0"})
	idemStatus(t, err, codes.Unavailable, api.ReasonStoreUnavailable)
}

func TestEventsAPIOutboxStatus(t *testing.T) {
	ctx := idemCtx(t)
	e := startEvents(t, events.NewMemoryStore(nil), events.Options{}, nil)
	r, err := e.client.GetOutboxStatus(ctx, &v1.GetOutboxStatusRequest{})
	if err != nil || r.GetEnabled() {
		t.Fatalf("no outbox: %v, %v; want enabled=false", r, err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	e = startEvents(t, events.NewMemoryStore(nil), events.Options{}, fakeOutbox{st: events.OutboxStatus{
		Enabled: true, Healthy: false, LastError: "pg down", Active: true, Backlog: 7, BacklogKnown: true, Lag: 3 * time.Second,
		Published: 9, LastPublishedAt: at, Table: "public.outbox", Refused: 2, LastRefused: "row 4: bad", OldestRefusedAge: time.Minute}})
	r, err = e.client.GetOutboxStatus(ctx, &v1.GetOutboxStatusRequest{})
	if err != nil || !r.GetEnabled() || r.GetHealthy() || r.GetLastError() != "pg down" || !r.GetActive() || r.GetBacklog() != 7 || !r.GetBacklogKnown() ||
		r.GetLag().AsDuration() != 3*time.Second || r.GetPublished() != 9 || !r.GetLastPublishedAt().AsTime().Equal(at) || r.GetTable() != "public.outbox" ||
		r.GetRefused() != 2 || r.GetLastRefused() != "row 4: bad" || r.GetOldestRefusedAge().AsDuration() != time.Minute {
		t.Fatalf("status = %v, %v", r, err)
	}
}

// RetryOutboxRefused: FAILED_PRECONDITION without an outbox; the relay's
// outcome otherwise; UNAVAILABLE (without the cause, which names the
// database) when it could not retry, with the store's reason when the
// store failed.
func TestEventsAPIRetryOutboxRefused(t *testing.T) {
	ctx := idemCtx(t)
	e := startEvents(t, events.NewMemoryStore(nil), events.Options{}, nil)
	if _, err := e.client.RetryOutboxRefused(ctx, &v1.RetryOutboxRefusedRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("without an outbox: %v; want FAILED_PRECONDITION", err)
	}
	on := events.OutboxStatus{Enabled: true}
	e = startEvents(t, events.NewMemoryStore(nil), events.Options{}, fakeOutbox{st: on, retry: events.OutboxRetry{Active: true, Published: 3, Refused: 1, Gone: 2}})
	r, err := e.client.RetryOutboxRefused(ctx, &v1.RetryOutboxRefusedRequest{})
	if err != nil || !r.GetActive() || r.GetForwarded() || r.GetPublished() != 3 || r.GetStillRefused() != 1 || r.GetForgotten() != 2 {
		t.Fatalf("retry = %v, %v", r, err)
	}
	e = startEvents(t, events.NewMemoryStore(nil), events.Options{}, fakeOutbox{st: on, retry: events.OutboxRetry{Forwarded: true}})
	if r, err := e.client.RetryOutboxRefused(ctx, &v1.RetryOutboxRefusedRequest{}); err != nil || r.GetActive() || !r.GetForwarded() {
		t.Fatalf("retry on a standby = %v, %v", r, err)
	}
	e = startEvents(t, events.NewMemoryStore(nil), events.Options{}, fakeOutbox{st: on, err: errors.New("connect to postgres: host db.internal refused")})
	_, err = e.client.RetryOutboxRefused(ctx, &v1.RetryOutboxRefusedRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable || strings.Contains(st.Message(), "db.internal") {
		t.Fatalf("Postgres down: %v; want UNAVAILABLE without the cause", err)
	}
	e = startEvents(t, events.NewMemoryStore(nil), events.Options{}, fakeOutbox{st: on, err: fmt.Errorf("retry stopped: %w", store.ErrUnavailable)})
	_, err = e.client.RetryOutboxRefused(ctx, &v1.RetryOutboxRefusedRequest{})
	idemStatus(t, err, codes.Unavailable, api.ReasonStoreUnavailable)
}

// The status of an invalid argument names the field in its message too.
func TestEventsAPIInvalidMessage(t *testing.T) {
	e := startEvents(t, events.NewMemoryStore(nil), events.Options{}, nil)
	_, err := e.client.Publish(idemCtx(t), &v1.PublishRequest{Topic: "x.dead"})
	if st, _ := status.FromError(err); !strings.Contains(st.Message(), "topic: must not be a dead-letter topic") {
		t.Fatalf("message %q", st.Message())
	}
}

// TestEventsAPICancelledMidReadHandsBack (issue 16): a subscriber's stream
// is cancelled while its read is on the way to Redis (the proxy delays it),
// so the read takes the event after the subscriber is gone: the event can
// no longer be sent (or, had the read failed, its outcome is unknown). The
// sidecar hands it back by the read's id, and another consumer gets it as
// a first delivery, long before the hour of visibility the read set.
func TestEventsAPICancelledMidReadHandsBack(t *testing.T) {
	rd := testharness.StartRedis(t)
	px := testharness.StartProxy(t, rd.Addr())
	slow := redis.NewClient(&redis.Options{Addr: px.Addr(), DisableIdentity: true, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = slow.Close() })
	st := events.NewRedisStore(slow, "midread", 10*time.Second)
	e := startEvents(t, st, events.Options{}, nil)
	direct := events.NewRedisStore(rd.Client(t), "midread", 10*time.Second)
	ctx := idemCtx(t)
	p, err := direct.Publish(ctx, events.Message{Topic: "t"}, events.PublishOptions{MaxLen: 100, DedupRetention: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	hour := durationpb.New(time.Hour)
	// Load the scripts (EVALSHA of an unknown script only gets NOSCRIPT).
	if _, err := direct.EnsureGroup(ctx, "warm", "g", "c", events.GroupOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Read(ctx, "warm", "g", "c", events.ReadOptions{Count: 1, Visibility: time.Second, ReadID: "w"}); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Return(ctx, "warm", "g", "c", "w", nil); err != nil {
		t.Fatal(err)
	}

	px.SetLatency(time.Second)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Subscribed is sent before the first read, which is then on its way
	// (a second each way through the proxy).
	e.subscribe(t, sctx, &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c1", VisibilityTimeout: hour})
	// Real time: the read is sent into the slow proxy before the
	// subscription is cancelled.
	time.Sleep(300 * time.Millisecond)
	cancel()
	// The read reaches Redis and takes the event for c1.
	rdb := rd.Client(t)
	testkit.EventuallyNil(t, 10*time.Second, "the cancelled read to reach Redis", func() error {
		pe, err := rdb.XPending(ctx, direct.StreamKey("t"), "g").Result()
		if err == nil && pe.Count != 1 {
			err = fmt.Errorf("pending %+v", pe)
		}
		return err
	})
	px.SetLatency(0)

	c2ctx, c2cancel := context.WithTimeout(ctx, 10*time.Second) // an hour is the visibility
	defer c2cancel()
	s2 := e.subscribe(t, c2ctx, &v1.SubscribeRequest{Topic: "t", Group: "g", Consumer: "c2", VisibilityTimeout: hour})
	ev := recvEvent(t, s2)
	if ev.GetEventId() != p.EventID || ev.GetDeliveryCount() != 1 {
		t.Fatalf("c2 got %v, want %s as a first delivery", ev, p.EventID)
	}
}
