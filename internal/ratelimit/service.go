package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
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
	// Source is where the answer came from: metrics.RateLimitStore,
	// RateLimitCached, RateLimitLease (this sidecar's leased tokens) or
	// RateLimitDegraded.
	Source string
}

// maxDone bounds the used-up leases of a key reported in one store call.
const maxDone = 32

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
	// Metrics counts the decisions of the declared limiters (nil: not
	// counted).
	Metrics *metrics.Metrics
}

// Service answers Take and Get for the declared limiters. It remembers
// keys found exhausted and refuses them locally until their retry_after
// (a refusal the store would give too: others only take more, so a key
// refused for cost c stays refused for c and more until then), answers
// from leased tokens for leasing limiters, has waiting takes reserve their
// cost in the store, and applies each limiter's store_down mode while the
// store is unreachable.
type Service struct {
	limiters Config
	store    Store
	local    *MemoryStore
	now      func() time.Time
	log      *slog.Logger
	envoy    EnvoyDomains
	metrics  *metrics.Metrics
	leaseID  string        // this service's prefix of lease ids
	leaseSeq atomic.Uint64 // numbers the leases

	mu        sync.Mutex
	exhausted map[memKey]exhaustedKey
	leases    map[memKey]*leased
	down      bool
}

// leased is what this sidecar holds of one key's leases: the unused tokens
// of each lease, and the leases used up before their TTL, to report to the
// store at the next call so that it frees their tolerance at once.
type leased struct {
	batches []leaseBatch
	done    []string
}

// leaseBatch is one lease's unused tokens, usable until expires (this
// sidecar's clock, from before the store call: never later than the
// store's expiry of its record).
type leaseBatch struct {
	member  string // the store's record: "<id>:<tokens>"
	left    int64
	expires time.Time
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
	var id [6]byte
	_, _ = rand.Read(id[:])
	names := make([]string, 0, len(lims))
	for n := range lims {
		names = append(names, n)
	}
	o.Metrics.InitRateLimiters(names...)
	return &Service{limiters: lims, store: o.Store, local: NewMemoryStore(o.Now), now: o.Now, log: o.Log, envoy: o.Envoy,
		metrics: o.Metrics, leaseID: hex.EncodeToString(id[:]),
		exhausted: map[memKey]exhaustedKey{}, leases: map[memKey]*leased{}}, nil
}

// Limiter returns the declared limiter name, with its defaults.
func (s *Service) Limiter(name string) (Limiter, bool) {
	l, ok := s.limiters[name]
	return l, ok
}

// Take takes cost from key of limiter name. With wait > 0 a take refused
// for a cost that fits within wait waits, counted under the admission
// limit max_waiters, until the cost fits and takes it: it reserves its
// cost in the store for the moment it fits, so the waiters of a key are
// served in the order their reservations reached the store, across
// sidecars, and the takes that do not wait get what they leave. A take
// that cannot fit within wait answers refused at once (retry_after says
// when it would). The limiter must be
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
	d, err := s.takeOrWait(ctx, name, key, l, cost, wait)
	if err == nil {
		s.metrics.ObserveRateLimit(name, d.Allowed, d.Source)
	}
	return d, err
}

func (s *Service) takeOrWait(ctx context.Context, name, key string, l Limiter, cost int64, wait time.Duration) (Decision, error) {
	if wait <= 0 {
		return s.take(ctx, name, key, l, cost)
	}
	deadline := s.now().Add(wait)
	d, err := s.take(ctx, name, key, l, cost)
	if err != nil || d.Allowed || s.now().Add(d.RetryAfter).After(deadline) {
		return d, err
	}
	done, err := admission.BeginWait(ctx)
	if err != nil {
		return Decision{}, err
	}
	defer done()
	s.metrics.RateLimitWaiter(1)
	defer s.metrics.RateLimitWaiter(-1)
	return s.reserve(ctx, name, key, l, cost, deadline.Sub(s.now()))
}

// reserve books cost of key in the store for when it fits, within wait,
// and waits until then. A reservation given up (ctx
// ends) keeps its cost taken: the limiter then admits less, never more.
func (s *Service) reserve(ctx context.Context, name, key string, l Limiter, cost int64, wait time.Duration) (Decision, error) {
	if wait <= 0 {
		return s.take(ctx, name, key, l, cost)
	}
	src := metrics.RateLimitStore
	var r Result
	var err error
	if rs, ok := s.store.(Reserver); ok {
		r, err = rs.Reserve(ctx, name, key, l, cost, wait)
	} else {
		r, err = s.store.Take(ctx, name, key, l, cost)
	}
	if errors.Is(err, store.ErrUnavailable) {
		s.storeDown(true, err)
		if l.StoreDown != Local || cost > l.Local().MaxCost {
			return s.degraded(ctx, name, key, l, cost)
		}
		src = metrics.RateLimitDegraded
		r, err = s.local.Reserve(ctx, name, key, l.Local(), cost, wait)
	} else if err == nil {
		s.storeDown(false, nil)
	}
	if err != nil {
		return Decision{}, err
	}
	if r.Allowed && r.Delay > 0 {
		if err := sleep(ctx, r.Delay); err != nil { // real time: the reserved tokens are due after the delay
			return Decision{}, err
		}
		r.ResetAfter = max(r.ResetAfter-r.Delay, 0)
		r.Delay = 0
	}
	return Decision{Result: r, Degraded: src == metrics.RateLimitDegraded, Source: src}, nil
}

// sleep waits d, or until ctx ends (its error).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
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

// check answers from this sidecar's leased tokens, its memory of
// exhausted keys, or the store (taking a new lease when the limiter
// leases), and remembers the store's refusals; a store error is returned
// as it is.
func (s *Service) check(ctx context.Context, name, key string, l Limiter, cost int64) (Decision, error) {
	// A refusal under one rate, burst or limit says nothing of another.
	k := memKey{name: name, key: key, rate: l.Rate, burst: l.Burst, limit: l.Limit}
	now := s.now()
	leaser, leasing := s.store.(Leaser)
	leasing = leasing && l.Lease.On() && cost > 0
	if leasing {
		if d, ok := s.fromLease(k, l, cost, now); ok {
			return d, nil
		}
	}
	s.mu.Lock()
	e, hot := s.exhausted[k]
	if hot && !now.Before(e.until) {
		delete(s.exhausted, k)
		hot = false
	}
	s.mu.Unlock()
	if hot && cost >= e.cost {
		return Decision{Cached: true, Source: metrics.RateLimitCached,
			Result: Result{Limit: e.limit, RetryAfter: e.until.Sub(now), ResetAfter: max(e.reset.Sub(now), 0)}}, nil
	}
	var r Result
	var err error
	if leasing {
		q := LeaseRequest{Batch: l.Lease.Batch, Tolerance: l.Lease.Tolerance, TTL: l.Lease.TTL,
			ID: s.leaseID + "." + strconv.FormatUint(s.leaseSeq.Add(1), 36), Done: s.usedUp(k)}
		r, err = leaser.Lease(ctx, name, key, l, cost, q)
		if err == nil && r.Allowed && r.Taken > cost {
			s.addLease(k, leaseBatch{member: q.ID + ":" + strconv.FormatInt(r.Taken-cost, 10), left: r.Taken - cost,
				expires: now.Add(l.Lease.TTL)})
			r.Taken = cost
		}
	} else {
		r, err = s.store.Take(ctx, name, key, l, cost) // cost 0 (Envoy's hits_addend 0) only looks
	}
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
	return Decision{Result: r, Source: metrics.RateLimitStore}, nil
}

// fromLease takes cost from one of k's unexpired leases, if one holds it.
// remaining is then what this sidecar's leases of k still hold.
func (s *Service) fromLease(k memKey, l Limiter, cost int64, now time.Time) (Decision, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.leases[k]
	if st == nil {
		return Decision{}, false
	}
	live := st.batches[:0]
	for _, b := range st.batches {
		if now.Before(b.expires) {
			live = append(live, b)
		}
	}
	st.batches = live
	took := false
	var left int64
	for i := 0; i < len(st.batches); i++ {
		b := &st.batches[i]
		if !took && b.left >= cost {
			b.left -= cost
			took = true
			if b.left == 0 {
				if len(st.done) < maxDone {
					st.done = append(st.done, b.member)
				}
				st.batches = append(st.batches[:i], st.batches[i+1:]...)
				i--
				continue
			}
		}
		left += b.left
	}
	if len(st.batches) == 0 && len(st.done) == 0 {
		delete(s.leases, k)
	}
	if !took {
		return Decision{}, false
	}
	return Decision{Source: metrics.RateLimitLease, Result: Result{Allowed: true, Taken: cost, Remaining: left, Limit: l.Capacity()}}, true
}

// addLease keeps a lease's unused tokens for k's next takes.
func (s *Service) addLease(k memKey, b leaseBatch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.leases[k]
	if st == nil {
		if len(s.leases) >= maxExhausted {
			now := s.now()
			for k, o := range s.leases {
				if len(o.done) == 0 && !anyLive(o.batches, now) {
					delete(s.leases, k)
				}
			}
			if len(s.leases) >= maxExhausted {
				return // the lease lapses unused in the store after its TTL
			}
		}
		st = &leased{}
		s.leases[k] = st
	}
	st.batches = append(st.batches, b)
}

// anyLive reports whether one of bs is unexpired at now.
func anyLive(bs []leaseBatch, now time.Time) bool {
	for _, b := range bs {
		if now.Before(b.expires) {
			return true
		}
	}
	return false
}

// usedUp hands over k's used-up leases, for the next store call to report.
func (s *Service) usedUp(k memKey) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.leases[k]
	if st == nil {
		return nil
	}
	d := st.done
	st.done = nil
	if len(st.batches) == 0 {
		delete(s.leases, k)
	}
	return d
}

// degraded answers by l's store_down mode.
func (s *Service) degraded(ctx context.Context, name, key string, l Limiter, cost int64) (Decision, error) {
	src := metrics.RateLimitDegraded
	switch l.StoreDown {
	case FailOpen:
		return Decision{Degraded: true, Source: src, Result: Result{Allowed: true, Limit: l.Capacity(), Taken: cost}}, nil
	case FailClosed:
		return Decision{Degraded: true, Source: src, Result: Result{Limit: l.Capacity(), RetryAfter: FailClosedRetry}}, nil
	}
	loc := l.Local()
	if cost > loc.MaxCost {
		// More than this sidecar's share can ever hold.
		return Decision{Degraded: true, Source: src, Result: Result{Limit: loc.Capacity(), RetryAfter: FailClosedRetry}}, nil
	}
	r, err := s.local.Take(ctx, name, key, loc, cost)
	return Decision{Degraded: true, Source: src, Result: r}, err
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
