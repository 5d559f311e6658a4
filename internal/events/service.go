package events

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

// TopicConfig is a declared topic.
type TopicConfig struct {
	// MaxLen bounds the topic's log (Options.MaxLen when 0).
	MaxLen int64
}

// Options configure a Service. Zero values get the defaults noted.
type Options struct {
	// MaxPayloadBytes bounds payload plus headers (DefaultMaxPayloadBytes).
	MaxPayloadBytes int
	// MaxLen bounds each topic's log (DefaultMaxLen).
	MaxLen int64
	// DedupRetention is how long idempotency keys are remembered
	// (DefaultDedupRetention).
	DedupRetention time.Duration
	// Topics, when not empty, are the only topics accepted (with their
	// dead-letter topics).
	Topics map[string]TopicConfig
	// Visibility and MaxDeliveries are the subscription defaults
	// (DefaultVisibility, DefaultMaxDeliveries).
	Visibility    time.Duration
	MaxDeliveries int
	// PollInterval bounds each wait for events (DefaultPollInterval).
	PollInterval time.Duration
	Log          *slog.Logger
	Metrics      *metrics.Metrics
}

// Service publishes and delivers events on a Store. It is safe for
// concurrent use.
type Service struct {
	store Store
	opts  Options
	log   *slog.Logger
	m     *metrics.Metrics

	mu sync.Mutex
	// subs are the live subscriptions by topic and group, so that an Ack
	// or Nack through this service frees their in-flight slot at once.
	subs map[subKey]map[*Subscription]struct{}
}

type subKey struct{ topic, group string }

// NewService returns a Service on store.
func NewService(store Store, opts Options) *Service {
	if opts.MaxPayloadBytes <= 0 {
		opts.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if opts.MaxLen <= 0 {
		opts.MaxLen = DefaultMaxLen
	}
	if opts.DedupRetention <= 0 {
		opts.DedupRetention = DefaultDedupRetention
	}
	if opts.Visibility <= 0 {
		opts.Visibility = DefaultVisibility
	}
	if opts.MaxDeliveries <= 0 {
		opts.MaxDeliveries = DefaultMaxDeliveries
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{store: store, opts: opts, log: opts.Log, m: opts.Metrics, subs: map[subKey]map[*Subscription]struct{}{}}
}

// MaxPayloadBytes is the payload limit in force.
func (s *Service) MaxPayloadBytes() int { return s.opts.MaxPayloadBytes }

// Defaults returns the subscription defaults in force.
func (s *Service) Defaults() (visibility time.Duration, maxDeliveries int) {
	return s.opts.Visibility, s.opts.MaxDeliveries
}

// CheckTopic returns ErrTopicUnknown when topics are declared and topic
// (or the topic it is the dead-letter topic of) is not one of them. It
// assumes a valid name.
func (s *Service) CheckTopic(topic string) error {
	if len(s.opts.Topics) == 0 {
		return nil
	}
	base, _ := cutDead(topic)
	if _, ok := s.opts.Topics[base]; !ok {
		return ErrTopicUnknown
	}
	return nil
}

func cutDead(topic string) (string, bool) {
	if len(topic) > len(DeadSuffix) && topic[len(topic)-len(DeadSuffix):] == DeadSuffix {
		return topic[:len(topic)-len(DeadSuffix)], true
	}
	return topic, false
}

func (s *Service) maxLen(topic string) int64 {
	base, _ := cutDead(topic)
	if t, ok := s.opts.Topics[base]; ok && t.MaxLen > 0 {
		return t.MaxLen
	}
	return s.opts.MaxLen
}

// Publish appends m to its topic. It returns a *FieldError (wrapping
// ErrInvalid) for a message breaking the rules, ErrTopicUnknown for an
// undeclared topic, and an error wrapping store.ErrUnavailable when the
// store does not answer (the event may or may not have been appended:
// retry with the same idempotency key).
func (s *Service) Publish(ctx context.Context, m Message) (Published, error) {
	if err := checkMessage(m, s.opts.MaxPayloadBytes); err != nil {
		return Published{}, err
	}
	if err := s.CheckTopic(m.Topic); err != nil {
		return Published{}, err
	}
	p, err := s.store.Publish(ctx, m, PublishOptions{MaxLen: s.maxLen(m.Topic), DedupRetention: s.opts.DedupRetention})
	if err != nil {
		return Published{}, err
	}
	s.m.ObserveEventPublished(p.Duplicate)
	return p, nil
}

// SubscribeOptions are the parameters of a subscription; zero values get
// the service's defaults.
type SubscribeOptions struct {
	Topic, Group, Consumer string
	MaxInFlight            int
	Visibility             time.Duration
	MaxDeliveries          int
	Start                  StartFrom
}

// Subscription is one consumer's stream of deliveries. Next must not be
// called concurrently; Close may be called at any time.
type Subscription struct {
	svc  *Service
	opts SubscribeOptions
	key  subKey
	dead bool
	// Created: this subscription created the group.
	Created bool

	mu       sync.Mutex
	inFlight map[string]time.Time // event id -> visibility deadline
	wake     chan struct{}
	lastID   string
	queue    []Delivery
}

// Subscribe creates the group if needed and registers the consumer. The
// caller validates the names; Subscribe checks declared topics.
func (s *Service) Subscribe(ctx context.Context, o SubscribeOptions) (*Subscription, error) {
	if err := s.CheckTopic(o.Topic); err != nil {
		return nil, err
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.Visibility <= 0 {
		o.Visibility = s.opts.Visibility
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = s.opts.MaxDeliveries
	}
	created, err := s.store.EnsureGroup(ctx, o.Topic, o.Group, o.Consumer, GroupOptions{Start: o.Start})
	if err != nil {
		return nil, err
	}
	_, dead := cutDead(o.Topic)
	sub := &Subscription{svc: s, opts: o, key: subKey{o.Topic, o.Group}, dead: dead, Created: created,
		inFlight: map[string]time.Time{}, wake: make(chan struct{}, 1), lastID: "0-0"}
	s.mu.Lock()
	if s.subs[sub.key] == nil {
		s.subs[sub.key] = map[*Subscription]struct{}{}
	}
	s.subs[sub.key][sub] = struct{}{}
	s.mu.Unlock()
	return sub, nil
}

// Close unregisters the subscription. Its unacked events are redelivered
// after their visibility timeout.
func (sub *Subscription) Close() {
	s := sub.svc
	s.mu.Lock()
	delete(s.subs[sub.key], sub)
	if len(s.subs[sub.key]) == 0 {
		delete(s.subs, sub.key)
	}
	s.mu.Unlock()
}

// Options returns the subscription's parameters with defaults applied.
func (sub *Subscription) Options() SubscribeOptions { return sub.opts }

// free returns how many more events may be in flight, forgetting those
// whose visibility timeout passed (they are claimable by anyone again),
// and the earliest such deadline.
func (sub *Subscription) free(now time.Time) (int, time.Time) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	var next time.Time
	for id, dl := range sub.inFlight {
		if !now.Before(dl) {
			delete(sub.inFlight, id)
			continue
		}
		if next.IsZero() || dl.Before(next) {
			next = dl
		}
	}
	return sub.opts.MaxInFlight - len(sub.inFlight), next
}

// done frees the slot of id, reporting whether it was in flight here.
func (sub *Subscription) done(id string) bool {
	sub.mu.Lock()
	_, ok := sub.inFlight[id]
	delete(sub.inFlight, id)
	sub.mu.Unlock()
	if ok {
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
	return ok
}

// Next returns the next delivery, waiting as long as ctx allows. It
// returns ctx's error when ctx ends and the store's error when the store
// fails.
func (sub *Subscription) Next(ctx context.Context) (Delivery, error) {
	s := sub.svc
	for {
		if len(sub.queue) > 0 {
			d := sub.queue[0]
			sub.queue = sub.queue[1:]
			return d, nil
		}
		if err := ctx.Err(); err != nil {
			return Delivery{}, err
		}
		now := time.Now()
		n, next := sub.free(now)
		if n <= 0 {
			t := time.NewTimer(max(time.Until(next), time.Millisecond))
			select {
			case <-sub.wake:
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
			continue
		}
		o := sub.opts
		maxDel := o.MaxDeliveries
		if sub.dead {
			maxDel = 0
		}
		ropts := ReadOptions{Count: n, Visibility: o.Visibility, MaxDeliveries: maxDel, DeadMaxLen: s.maxLen(o.Topic)}
		res, err := s.store.Read(ctx, o.Topic, o.Group, o.Consumer, ropts)
		if errors.Is(err, ErrNoGroup) {
			// The store lost the group (Redis restarted empty, or the
			// topic was deleted): create it again where it starts.
			s.log.Warn("consumer group vanished from the store; creating it again", "topic", o.Topic, "group", o.Group)
			if _, err = s.store.EnsureGroup(ctx, o.Topic, o.Group, o.Consumer, GroupOptions{Start: o.Start}); err == nil {
				res, err = s.store.Read(ctx, o.Topic, o.Group, o.Consumer, ropts)
			}
		}
		if err != nil {
			return Delivery{}, err
		}
		for _, id := range res.DeadLettered {
			s.log.Warn("event moved to the dead-letter topic", "topic", o.Topic, "group", o.Group, "event_id", id, "deliveries", o.MaxDeliveries)
			s.m.ObserveEventDeadLettered()
		}
		if res.LastID != "" {
			sub.lastID = res.LastID
		}
		if len(res.Deliveries) > 0 {
			sub.mu.Lock()
			for _, d := range res.Deliveries {
				sub.inFlight[d.ID] = time.Now().Add(o.Visibility)
			}
			sub.mu.Unlock()
			for _, d := range res.Deliveries {
				s.m.ObserveEventDelivered(d.Count > 1)
			}
			sub.queue = res.Deliveries
			continue
		}
		wait := min(s.opts.PollInterval, o.Visibility)
		if res.NextDue > 0 {
			wait = min(wait, res.NextDue)
		}
		if err := s.store.Wait(ctx, o.Topic, sub.lastID, wait); err != nil {
			return Delivery{}, err
		}
	}
}

// Ack marks the event processed by the group; false when it was not
// pending there.
func (s *Service) Ack(ctx context.Context, topic, group, id string) (bool, error) {
	if err := s.CheckTopic(topic); err != nil {
		return false, err
	}
	ok, err := s.store.Ack(ctx, topic, group, id)
	if err != nil {
		return false, err
	}
	s.release(topic, group, id)
	return ok, nil
}

// Nack gives the event back to the group for redelivery after retryAfter;
// false when it was not pending.
func (s *Service) Nack(ctx context.Context, topic, group, id string, retryAfter time.Duration) (bool, error) {
	if err := s.CheckTopic(topic); err != nil {
		return false, err
	}
	ok, err := s.store.Nack(ctx, topic, group, id, retryAfter)
	if err != nil {
		return false, err
	}
	s.release(topic, group, id)
	return ok, nil
}

func (s *Service) release(topic, group, id string) {
	s.mu.Lock()
	subs := make([]*Subscription, 0, len(s.subs[subKey{topic, group}]))
	for sub := range s.subs[subKey{topic, group}] {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.done(id)
	}
}
