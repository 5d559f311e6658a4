package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// FailClosedRetry is the retry_after of a call refused by store_down
// fail_closed: about one health probe interval.
const FailClosedRetry = time.Second

// maxExhausted bounds the exhausted keys the service remembers.
const maxExhausted = 100000

// Decision is the service's answer to a Take or Get.
type Decision struct {
	Result
	// Degraded is set when the store was unreachable and the limiter's
	// store_down mode answered.
	Degraded bool
	// Cached is set when the sidecar answered from its memory of an
	// exhausted key, without a store round trip.
	Cached bool
}

// Options configure a Service.
type Options struct {
	// Limiters are the declared limiters (defaults applied, valid).
	Limiters Config
	// Store counts the keys: Redis, or a MemoryStore on the embedded store.
	Store Store
	// Now is the sidecar's clock for its local answers (time.Now if nil).
	Now func() time.Time
	// Log receives the store-down transitions (discarded if nil).
	Log *slog.Logger
	// Envoy are the domains of Envoy's rate-limit API (LoadEnvoy).
	Envoy EnvoyDomains
}

// Service answers Take and Get for the declared limiters. It remembers
// keys found exhausted and refuses them locally until their retry_after
// (a refusal the store would give too: others only take more, so a key
// refused for cost c stays refused for c and more until then), runs
// waiting takes one at a time per key in arrival order, and applies each
// limiter's store_down mode while the store is unreachable.
type Service struct {
	limiters Config
	store    Store
	local    *MemoryStore
	now      func() time.Time
	log      *slog.Logger
	envoy    EnvoyDomains

	mu        sync.Mutex
	exhausted map[memKey]exhaustedKey
	queues    map[memKey]*queue
	down      bool
}

// exhaustedKey is a key refused for cost at least cost until until.
type exhaustedKey struct {
	until time.Time
	cost  int64
	limit int64
	reset time.Time
}

// NewService returns a service over o.Store for o.Limiters.
func NewService(o Options) (*Service, error) {
	if o.Store == nil {
		return nil, errors.New("ratelimit: no store")
	}
	lims := o.Limiters.WithDefaults()
	if err := lims.Validate(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if len(o.Envoy) > 0 {
		o.Log.Info("envoy rate-limit domains loaded", "domains", o.Envoy.sortedDomains())
	}
	return &Service{limiters: lims, store: o.Store, local: NewMemoryStore(o.Now), now: o.Now, log: o.Log, envoy: o.Envoy,
		exhausted: map[memKey]exhaustedKey{}, queues: map[memKey]*queue{}}, nil
}

// Limiter returns the declared limiter name, with its defaults.
func (s *Service) Limiter(name string) (Limiter, bool) {
	l, ok := s.limiters[name]
	return l, ok
}

// Take takes cost from key of limiter name. With wait > 0 a refused take
// waits, behind the earlier waiters of the key in this sidecar, until the
// cost fits and takes it, or answers refused at once when the cost cannot
// fit within wait (retry_after says when it would). The limiter must be
// declared (else ErrLimiterUnknown) and cost within [1, max_cost] (the
// API checks it).
//
// o overrides the limiter's rate, burst or limit within its max_rate,
// max_burst, max_limit (Limiter.With; the API checks it): the key's count
// is the same, judged by the call's own parameters.
func (s *Service) Take(ctx context.Context, name, key string, cost int64, wait time.Duration, o Override) (Decision, error) {
	l, ok := s.limiters[name]
	if !ok {
		return Decision{}, ErrLimiterUnknown
	}
	l, err := l.With(o)
	if err != nil {
		return Decision{}, fmt.Errorf("ratelimit: %w", err)
	}
	if wait <= 0 {
		return s.take(ctx, name, key, l, cost)
	}
	deadline := s.now().Add(wait)
	k := memKey{name: name, key: key}
	tctx, cancel := context.WithTimeout(ctx, wait)
	err = s.turn(tctx, k)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return Decision{}, ctx.Err()
		}
		// The earlier waiters held the key past wait: answer as now.
		return s.take(ctx, name, key, l, cost)
	}
	defer s.done(k)
	for {
		d, err := s.take(ctx, name, key, l, cost)
		if err != nil || d.Allowed || s.now().Add(d.RetryAfter).After(deadline) {
			return d, err
		}
		t := time.NewTimer(d.RetryAfter)
		select {
		case <-t.C: // real time: the cost fits once retry_after has passed
		case <-ctx.Done():
			t.Stop()
			return Decision{}, ctx.Err()
		}
	}
}

// Get answers for key of limiter name without taking anything.
func (s *Service) Get(ctx context.Context, name, key string) (Decision, Limiter, error) {
	l, ok := s.limiters[name]
	if !ok {
		return Decision{}, Limiter{}, ErrLimiterUnknown
	}
	r, err := s.store.Get(ctx, name, key, l)
	if errors.Is(err, store.ErrUnavailable) && l.StoreDown == Local {
		r, _ = s.local.Get(ctx, name, key, l.Local())
		return Decision{Result: r, Degraded: true}, l, nil
	}
	return Decision{Result: r}, l, err
}

func (s *Service) take(ctx context.Context, name, key string, l Limiter, cost int64) (Decision, error) {
	d, err := s.check(ctx, name, key, l, cost)
	if errors.Is(err, store.ErrUnavailable) {
		return s.degraded(ctx, name, key, l, cost)
	}
	return d, err
}

// check answers from the memory of exhausted keys or the store, and
// remembers the store's refusals; a store error is returned as it is.
func (s *Service) check(ctx context.Context, name, key string, l Limiter, cost int64) (Decision, error) {
	// A refusal under one rate, burst or limit says nothing of another.
	k := memKey{name: name, key: key, rate: l.Rate, burst: l.Burst, limit: l.Limit}
	now := s.now()
	s.mu.Lock()
	e, hot := s.exhausted[k]
	if hot && !now.Before(e.until) {
		delete(s.exhausted, k)
		hot = false
	}
	s.mu.Unlock()
	if hot && cost >= e.cost {
		return Decision{Cached: true, Result: Result{Limit: e.limit, RetryAfter: e.until.Sub(now), ResetAfter: max(e.reset.Sub(now), 0)}}, nil
	}
	r, err := s.store.Take(ctx, name, key, l, cost) // cost 0 (Envoy's hits_addend 0) only looks
	if err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			s.storeDown(true, err)
		}
		return Decision{}, err
	}
	s.storeDown(false, nil)
	if !r.Allowed && r.RetryAfter > 0 {
		s.mu.Lock()
		if len(s.exhausted) >= maxExhausted {
			for k, o := range s.exhausted {
				if !now.Before(o.until) {
					delete(s.exhausted, k)
				}
			}
		}
		if len(s.exhausted) < maxExhausted {
			s.exhausted[k] = exhaustedKey{until: now.Add(r.RetryAfter), cost: cost, limit: r.Limit, reset: now.Add(r.ResetAfter)}
		}
		s.mu.Unlock()
	}
	return Decision{Result: r}, nil
}

// degraded answers by l's store_down mode.
func (s *Service) degraded(ctx context.Context, name, key string, l Limiter, cost int64) (Decision, error) {
	switch l.StoreDown {
	case FailOpen:
		return Decision{Degraded: true, Result: Result{Allowed: true, Limit: l.Capacity()}}, nil
	case FailClosed:
		return Decision{Degraded: true, Result: Result{Limit: l.Capacity(), RetryAfter: FailClosedRetry}}, nil
	}
	loc := l.Local()
	if cost > loc.MaxCost {
		// More than this sidecar's share can ever hold.
		return Decision{Degraded: true, Result: Result{Limit: loc.Capacity(), RetryAfter: FailClosedRetry}}, nil
	}
	r, err := s.local.Take(ctx, name, key, loc, cost)
	return Decision{Degraded: true, Result: r}, err
}

// storeDown logs the transitions between a reachable and an unreachable
// store.
func (s *Service) storeDown(down bool, err error) {
	s.mu.Lock()
	changed := s.down != down
	s.down = down
	s.mu.Unlock()
	switch {
	case changed && down:
		s.log.Warn("rate limits: store unreachable; limiters answer by their store_down mode", "error", err)
	case changed:
		s.log.Info("rate limits: store reachable again")
	}
}

// queue is the waiters of one key in this sidecar, in arrival order; the
// turn is held by whoever was handed it (or found no queue).
type queue struct{ waiters []chan struct{} }

// turn waits until k's earlier waiters are done, or ctx ends.
func (s *Service) turn(ctx context.Context, k memKey) error {
	s.mu.Lock()
	q := s.queues[k]
	if q == nil {
		s.queues[k] = &queue{}
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	q.waiters = append(q.waiters, ch)
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for i, w := range q.waiters {
			if w == ch {
				q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
				s.mu.Unlock()
				return ctx.Err()
			}
		}
		s.mu.Unlock()
		s.done(k) // handed the turn as ctx ended: pass it on
		return ctx.Err()
	}
}

// done hands k's turn to its next waiter.
func (s *Service) done(k memKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[k]
	if q == nil {
		return
	}
	if len(q.waiters) == 0 {
		delete(s.queues, k)
		return
	}
	close(q.waiters[0])
	q.waiters = q.waiters[1:]
}
