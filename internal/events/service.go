package events

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

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
	opts = opts.WithDefaults()
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
//
// A delivery is handed to the caller by Next; one the caller cannot pass
// on to its client (the stream broke, the client left) goes back with
// Unsent. Close hands every delivery read from the store but never handed
// on back to the group at once (Store.Return), and so does Next for a
// read whose outcome it never learnt: they are redelivered, to any
// consumer, without waiting for their visibility timeout, and without
// counting the undelivered delivery towards max deliveries.
type Subscription struct {
	svc  *Service
	opts SubscribeOptions
	key  subKey
	dead bool
	// Created: this subscription created the group.
	Created bool
	// readPrefix and readSeq make the read ids.
	readPrefix string
	readSeq    uint64

	mu       sync.Mutex
	inFlight map[string]time.Time // event id -> visibility deadline
	wake     chan struct{}
	lastID   string
	wakeID   string
	queue    []Delivery
	// unsettled are reads whose outcome is unknown and that could not be
	// handed back yet (Close tries again).
	unsettled []string
	closed    bool
}

// returnTimeout bounds handing undelivered events back.
const returnTimeout = 2 * time.Second

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
	var rnd [12]byte
	if _, err := crand.Read(rnd[:]); err != nil {
		return nil, err
	}
	sub := &Subscription{svc: s, opts: o, key: subKey{o.Topic, o.Group}, dead: dead, Created: created,
		readPrefix: hex.EncodeToString(rnd[:]) + "-",
		inFlight:   map[string]time.Time{}, wake: make(chan struct{}, 1), lastID: "0-0"}
	s.mu.Lock()
	if s.subs[sub.key] == nil {
		s.subs[sub.key] = map[*Subscription]struct{}{}
	}
	s.subs[sub.key][sub] = struct{}{}
	s.mu.Unlock()
	return sub, nil
}

// Close unregisters the subscription and hands back to the group, for
// redelivery at once, the events it read but never handed on (see
// Subscription). The events handed on and not acked are redelivered after
// their visibility timeout: the client may still be working on them (and
// may still ack them). Close waits at most a couple of seconds for the
// store; what it cannot hand back is redelivered after the visibility
// timeout.
func (sub *Subscription) Close() {
	s := sub.svc
	s.mu.Lock()
	delete(s.subs[sub.key], sub)
	if len(s.subs[sub.key]) == 0 {
		delete(s.subs, sub.key)
	}
	s.mu.Unlock()
	sub.mu.Lock()
	if sub.closed {
		sub.mu.Unlock()
		return
	}
	sub.closed = true
	queue, unsettled := sub.queue, sub.unsettled
	sub.queue, sub.unsettled = nil, nil
	for _, d := range queue {
		delete(sub.inFlight, d.ID)
	}
	sub.mu.Unlock()
	if len(queue) == 0 && len(unsettled) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), returnTimeout)
	defer cancel()
	var reads []string
	byRead := map[string][]string{}
	for _, d := range queue {
		if _, ok := byRead[d.readID]; !ok {
			reads = append(reads, d.readID)
		}
		byRead[d.readID] = append(byRead[d.readID], d.ID)
	}
	for _, r := range reads {
		sub.giveBack(ctx, r, byRead[r])
	}
	for _, r := range unsettled {
		sub.giveBack(ctx, r, nil)
	}
}

// Unsent gives back a delivery Next returned that the caller could not
// hand on to its client: Next returns it again, or Close hands it back to
// the group.
func (sub *Subscription) Unsent(d Delivery) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	sub.queue = append([]Delivery{d}, sub.queue...)
}

// nextReadID names a read: unique across sidecars and subscriptions.
func (sub *Subscription) nextReadID() string {
	sub.readSeq++
	return sub.readPrefix + strconv.FormatUint(sub.readSeq, 36)
}

// giveBack hands back the deliveries ids of read readID (all of the read's
// when nil), reporting whether the store answered.
func (sub *Subscription) giveBack(ctx context.Context, readID string, ids []string) bool {
	o := sub.opts
	n, err := sub.svc.store.Return(ctx, o.Topic, o.Group, o.Consumer, readID, ids)
	if err != nil {
		sub.svc.log.Warn("events: could not hand undelivered events back; they are redelivered after their visibility timeout",
			"topic", o.Topic, "group", o.Group, "consumer", o.Consumer, "error", err)
		return false
	}
	if n > 0 {
		sub.svc.log.Debug("events: undelivered events handed back for redelivery", "topic", o.Topic, "group", o.Group, "consumer", o.Consumer, "events", n)
	}
	return true
}

// readFailed hands back a read whose outcome is unknown (the store may
// have handed events out that will never reach the client), or leaves it
// for Close when the store does not answer now.
func (sub *Subscription) readFailed(readID string) {
	ctx, cancel := context.WithTimeout(context.Background(), returnTimeout)
	defer cancel()
	if !sub.giveBack(ctx, readID, nil) {
		sub.mu.Lock()
		sub.unsettled = append(sub.unsettled, readID)
		sub.mu.Unlock()
	}
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
		sub.mu.Lock()
		if len(sub.queue) > 0 {
			d := sub.queue[0]
			sub.queue = sub.queue[1:]
			sub.mu.Unlock()
			return d, nil
		}
		sub.mu.Unlock()
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
		ropts := ReadOptions{Count: n, Visibility: o.Visibility, MaxDeliveries: maxDel, DeadMaxLen: s.maxLen(o.Topic), ReadID: sub.nextReadID()}
		res, err := s.store.Read(ctx, o.Topic, o.Group, o.Consumer, ropts)
		if errors.Is(err, ErrNoGroup) {
			// The store lost the group (Redis restarted empty, or the
			// topic was deleted): create it again where it starts.
			s.log.Warn("consumer group vanished from the store; creating it again", "topic", o.Topic, "group", o.Group)
			if _, err = s.store.EnsureGroup(ctx, o.Topic, o.Group, o.Consumer, GroupOptions{Start: o.Start}); err == nil {
				ropts.ReadID = sub.nextReadID()
				res, err = s.store.Read(ctx, o.Topic, o.Group, o.Consumer, ropts)
			}
		}
		if err != nil {
			if !errors.Is(err, ErrNoGroup) {
				// The read may have run (the store timed out, the
				// connection broke, ctx ended after it was sent): hand
				// back whatever it handed out, by its id.
				sub.readFailed(ropts.ReadID)
			}
			return Delivery{}, err
		}
		for _, id := range res.DeadLettered {
			s.log.Warn("event moved to the dead-letter topic", "topic", o.Topic, "group", o.Group, "event_id", id, "deliveries", o.MaxDeliveries)
			s.m.ObserveEventDeadLettered()
		}
		if res.LastID != "" {
			sub.lastID = res.LastID
		}
		sub.wakeID = res.WakeID
		if len(res.Deliveries) > 0 {
			sub.mu.Lock()
			for _, d := range res.Deliveries {
				sub.inFlight[d.ID] = time.Now().Add(o.Visibility)
			}
			sub.mu.Unlock()
			for i, d := range res.Deliveries {
				res.Deliveries[i].readID = ropts.ReadID
				s.m.ObserveEventDelivered(d.Count > 1)
			}
			sub.mu.Lock()
			sub.queue = res.Deliveries
			sub.mu.Unlock()
			continue
		}
		wait := min(s.opts.PollInterval, o.Visibility)
		if res.NextDue > 0 {
			wait = min(wait, res.NextDue)
		}
		if err := s.store.Wait(ctx, o.Topic, o.Group, sub.lastID, sub.wakeID, wait); err != nil {
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
// false when it was not pending. The group's subscriptions, on every
// sidecar of the store, wake at once to read it when it is due: a nack
// with no delay is redelivered at once, not at their next poll.
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

// ExpireDedup shortens the retention of the idempotency keys of topic to
// at most keep from now (keys expiring sooner are left alone): the outbox
// relay's keys, once their rows are marked, need only outlive a relay
// that may still re-publish them.
func (s *Service) ExpireDedup(ctx context.Context, topic string, keys []string, keep time.Duration) error {
	if p, _ := ValidTopicName(topic); p != "" {
		return &FieldError{"topic", p}
	}
	_, err := s.store.ExpireDedup(ctx, topic, keys, keep)
	return err
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
