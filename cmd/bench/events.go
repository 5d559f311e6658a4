package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/events"
)

func init() { groups = append(groups, eventRows) }

// eventRows: Publish of a 256-byte event (throughput, through the sidecar
// on Redis, on the embedded store, and the publish script called from Go),
// and publish→deliver latency: each worker publishes and waits until one
// subscriber of the topic (one stream, acking as it goes) receives that
// event, so an op's latency is from the publish call to the receipt.
func eventRows(env *Env) []Row {
	const rawPublish = "events Publish: raw Redis Lua (baseline)"
	payload := make([]byte, 256)
	publish := func(c v1.EventServiceClient, topic string) func(context.Context, int, int) error {
		return func(ctx context.Context, _, _ int) error {
			_, err := c.Publish(ctx, &v1.PublishRequest{Topic: topic, Key: "bench", Payload: payload})
			return err
		}
	}
	store := events.NewRedisStore(env.Redis, "bench-raw", 5*time.Second)
	onRedis := v1.NewEventServiceClient(env.OnRedis)
	embedded := v1.NewEventServiceClient(env.Embedded)
	redisDeliver := &deliverBench{c: onRedis, topic: "bench-deliver-redis", payload: payload}
	memDeliver := &deliverBench{c: embedded, topic: "bench-deliver-mem", payload: payload}
	return []Row{
		{Name: "events Publish: sidecar on Redis", Op: publish(onRedis, "bench-publish"), Raw: rawPublish, Floor: "gRPC floor: 1 bare unary call", Redis: env.Redis},
		{Name: "events Publish: sidecar on embedded store", Op: publish(embedded, "bench-publish"), Floor: "gRPC floor: 1 bare unary call"},
		{Name: rawPublish, Redis: env.Redis, Op: func(ctx context.Context, _, _ int) error {
			_, err := store.Publish(ctx, events.Message{Topic: "bench-publish", Key: "bench", Payload: payload},
				events.PublishOptions{MaxLen: events.DefaultMaxLen, DedupRetention: time.Hour})
			return err
		}},
		{Name: "events publish→deliver: sidecar on Redis", Op: redisDeliver.op, Redis: env.Redis},
		{Name: "events publish→deliver: sidecar on embedded store", Op: memDeliver.op},
	}
}

// deliverBench is one subscriber that hands each received event to the
// worker that published it.
type deliverBench struct {
	c       v1.EventServiceClient
	topic   string
	payload []byte

	once    sync.Once
	err     error
	acks    chan string
	mu      sync.Mutex
	waiting map[string]chan struct{}
	early   map[string]bool // received before its publisher asked
}

func (b *deliverBench) start() {
	b.waiting, b.early = map[string]chan struct{}{}, map[string]bool{}
	b.acks = make(chan string, 4096)
	s, err := b.c.Subscribe(context.Background(), &v1.SubscribeRequest{Topic: b.topic, Group: "bench", Consumer: "bench",
		MaxInFlight: 1000, VisibilityTimeout: durationpb.New(time.Minute), StartFrom: v1.StartFrom_START_FROM_LATEST})
	if err != nil {
		b.err = err
		return
	}
	if m, err := s.Recv(); err != nil || m.GetSubscribed() == nil {
		b.err = fmt.Errorf("subscribe: %v %v", m, err)
		return
	}
	for range 8 {
		go func() {
			for id := range b.acks {
				_, _ = b.c.Ack(context.Background(), &v1.AckRequest{Topic: b.topic, Group: "bench", EventId: id})
			}
		}()
	}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			id := m.GetEvent().GetEventId()
			b.acks <- id
			b.mu.Lock()
			if ch, ok := b.waiting[id]; ok {
				close(ch)
				delete(b.waiting, id)
			} else {
				b.early[id] = true
			}
			b.mu.Unlock()
		}
	}()
}

func (b *deliverBench) op(ctx context.Context, _, _ int) error {
	b.once.Do(b.start)
	if b.err != nil {
		return b.err
	}
	p, err := b.c.Publish(ctx, &v1.PublishRequest{Topic: b.topic, Key: "bench", Payload: b.payload})
	if err != nil {
		return err
	}
	b.mu.Lock()
	if b.early[p.GetEventId()] {
		delete(b.early, p.GetEventId())
		b.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	b.waiting[p.GetEventId()] = ch
	b.mu.Unlock()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		b.mu.Lock()
		delete(b.waiting, p.GetEventId())
		b.mu.Unlock()
		return fmt.Errorf("event %s not delivered within 10s", p.GetEventId())
	}
}
