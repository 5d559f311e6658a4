// Package semaphore is the bulkhead: counting semaphores whose permits are
// leases with TTLs and fencing tokens, shared by every sidecar on a Store
// (Redis or in-memory), like Redisson's RPermitExpirableSemaphore.
//
// Safety rests on two guarantees of every Store: at most limit live permits
// per semaphore at any instant (by the store's clock; after the limit was
// lowered, no grant until fewer than the new limit are live), and fencing
// tokens strictly increasing per semaphore across all grants, even after
// the bookkeeping was evicted. Expired permits are reclaimed by the next
// call that looks. A permit can still expire while its holder works (a GC
// pause, a partition), so resources should check the fencing token.
package semaphore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/handback"
)

// Errors callers switch on.
var (
	// ErrLeaseLost: the permit expired, was released, or was never granted.
	// Work done under it may have run beyond the bulkhead's bound.
	ErrLeaseLost = errors.New("semaphore: permit lost")
	// ErrMaxHold: a session reached its max hold and gave its permit back.
	ErrMaxHold = errors.New("semaphore: max hold reached")
	// ErrShutdown: the sidecar is shutting down: a wait was ended
	// (AcquireOptions.Stop), or a session's permit released.
	ErrShutdown = errors.New("semaphore: shutting down")
)

// Permit is proof of holding one permit. ID is a secret.
type Permit struct {
	Name         string
	ID           string
	Owner        string
	FencingToken uint64
	ExpireTime   time.Time
}

// Holder is the public view of a permit: no ID.
type Holder struct {
	Owner        string
	FencingToken uint64
	ExpireTime   time.Time
}

// Result is the outcome of one acquisition attempt.
type Result struct {
	Acquired bool
	Permit   Permit // set when Acquired
	Held     int    // live permits after the attempt
	Limit    int    // the semaphore's limit
	// RetryAt is when a refused waiter should try again if nothing wakes
	// it first: the earliest expiry of a live permit, or the end of the
	// grace of a sidecar the free permits are kept for. Zero: no such time.
	RetryAt time.Time
}

// Info describes a semaphore's state.
type Info struct {
	Limit int // 0: unknown semaphore
	Held  int
	// Holders are the live permits, soonest to expire first, at most
	// MaxListed.
	Holders []Holder
	// Waiters are the callers waiting, as each sidecar last reported them.
	Waiters          int
	LastFencingToken uint64
}

// MaxListed bounds Info.Holders.
const MaxListed = 100

// Queueing describes a sidecar's waiting callers to the store, for an
// attempt made on their behalf (nil: a caller that does not wait).
type Queueing struct {
	// More: other callers of this sidecar still wait after this one, so a
	// grant puts the sidecar back in line, at its tail.
	More bool
	// Stay is how long this sidecar's callers still wait, the longest of
	// them; its place in line lapses after it.
	Stay time.Duration
	// Waiters is how many of this sidecar's callers wait (GetSemaphore).
	Waiters int
	// Follow: no caller with another limit joined this sidecar's line
	// since its latest try, so the semaphore's current limit applies (a
	// limit changed elsewhere meanwhile applies to the callers already
	// waiting); the limit passed is used only if the store knows none.
	Follow bool
}

// Store keeps semaphore state. Implementations must make each method
// atomic.
type Store interface {
	// TryAcquire grants a permit to permitID if fewer than limit are live
	// and no waiting sidecar comes first, or if permitID already holds one
	// (so a retried call is harmless); limit becomes the semaphore's limit
	// (unless q.Follow).
	// A refused attempt with q != nil puts this sidecar in the semaphore's
	// FIFO of waiting sidecars, or refreshes its entry there.
	TryAcquire(ctx context.Context, name, permitID, owner string, limit int, ttl time.Duration, q *Queueing) (Result, error)
	// Release gives the permit back if it is live, and wakes the watchers
	// of name. ErrLeaseLost otherwise.
	Release(ctx context.Context, name, permitID string) error
	// Renew sets the expiry of a live permit to now+ttl. ErrLeaseLost
	// otherwise. It works whatever the limit is now.
	Renew(ctx context.Context, name, permitID string, ttl time.Duration) (time.Time, error)
	// Get reads the semaphore's state.
	Get(ctx context.Context, name string) (Info, error)
	// Revoke gives back a grant to permitID whose outcome its caller could
	// not learn: it releases the permit if held, and makes sure that an
	// acquisition by permitID still on its way to the store is refused. It
	// is idempotent, and nil when nothing was or will be held.
	Revoke(ctx context.Context, name, permitID string) error
	// LeaveQueue takes this sidecar out of name's FIFO of waiting sidecars
	// (its last waiter gave up), waking the next ones.
	LeaveQueue(ctx context.Context, name string) error
	// WatchRelease subscribes to releases of name's permits and raises of
	// its limit. Every one that happens after it returns is signalled on
	// the channel (buffered, coalesced) until stop is called, which is
	// idempotent.
	WatchRelease(ctx context.Context, name string) (released <-chan struct{}, stop func(), err error)
}

// AcquireOptions are the parameters of one acquisition.
type AcquireOptions struct {
	Limit int           // > 0
	TTL   time.Duration // > 0
	Wait  time.Duration // 0: try once
	Owner string
	// Stop, when closed, ends a wait with ErrShutdown; nil never does.
	Stop <-chan struct{}
}

// Service grants permits from a Store. It is safe for concurrent use.
//
// Callers of one Service waiting for one semaphore form a FIFO (queue.go):
// only its head tries the store, when a release is announced, when a
// permit would expire, or when the caller before it was granted; a release
// thus costs one try per sidecar with waiters, whatever the number of
// callers. Close ends the sessions' renewals and gives back what is left.
type Service struct {
	store   Store
	entropy io.Reader
	log     *slog.Logger
	// releaseTimeout bounds releases made on a caller's behalf.
	releaseTimeout time.Duration
	// handBack gives back the grants whose outcome is unknown or that could
	// not be delivered, until the store confirms.
	handBack *handback.Queue

	mu       sync.Mutex
	waits    map[string]*nameQueue
	sessions map[*Session]struct{}
	closed   bool
}

// NewService returns a Service on store. entropy is read for permit ids
// (crypto/rand when nil).
func NewService(store Store, entropy io.Reader, log *slog.Logger) *Service {
	if entropy == nil {
		entropy = rand.Reader
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{store: store, entropy: entropy, log: log, releaseTimeout: 2 * time.Second,
		waits: map[string]*nameQueue{}, sessions: map[*Session]struct{}{}}
	s.handBack = handback.New("semaphore", store.Revoke, s.releaseTimeout, log)
	return s
}

// Close stops the renewal of the sessions still open (their permits then
// expire by their TTL), makes Hold fail with ErrShutdown, and tries once
// more to give back the grants not yet confirmed given back. It is
// idempotent.
func (s *Service) Close() {
	s.mu.Lock()
	s.closed = true
	open := make([]*Session, 0, len(s.sessions))
	for se := range s.sessions {
		open = append(open, se)
	}
	s.mu.Unlock()
	for _, se := range open {
		se.stopRenewal()
	}
	s.handBack.Close()
}

// newPermitID returns a fresh 128-bit id as 32 lowercase hex digits.
func (s *Service) newPermitID() (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(s.entropy, b[:]); err != nil {
		return "", fmt.Errorf("semaphore: permit id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Acquire takes a permit of name. When none is free it waits up to
// opts.Wait in line, woken by releases, expiries and raised limits, and
// then returns a Result with Acquired false. Without a wait it tries once
// and never jumps callers waiting in this sidecar. Cancelling ctx ends the
// wait with ctx's error.
//
// A call that fails leaves nothing held: a grant whose outcome is unknown
// (the store failed, or ctx ended mid-call), or made too close to ctx's
// deadline to reach the caller (handback.Margin), is given back until the
// store confirms.
func (s *Service) Acquire(ctx context.Context, name string, opts AcquireOptions) (Result, error) {
	id, err := s.newPermitID()
	if err != nil {
		return Result{}, err
	}
	if opts.Wait > 0 {
		return s.wait(ctx, name, id, opts)
	}
	if n := s.Waiters(name); n > 0 {
		info, err := s.store.Get(ctx, name)
		if err != nil {
			return Result{}, err
		}
		return Result{Held: info.Held, Limit: info.Limit}, nil
	}
	r, err := s.store.TryAcquire(ctx, name, id, opts.Owner, opts.Limit, opts.TTL, nil)
	return s.settle(ctx, name, id, opts.TTL, r, err)
}

// settle returns the outcome of an attempt by permitID, giving back a
// grant nobody will see: after an error the store may have granted it.
func (s *Service) settle(ctx context.Context, name, permitID string, ttl time.Duration, r Result, err error) (Result, error) {
	if err != nil {
		s.handBack.GiveBack(name, permitID, ttl, err)
		return Result{}, err
	}
	if r.Acquired && !handback.Deliverable(ctx) {
		s.handBack.GiveBack(name, permitID, ttl, nil)
		return Result{}, handback.Undeliverable(ctx)
	}
	return r, nil
}

// Release gives back the permit permitID. ErrLeaseLost when it is not live.
func (s *Service) Release(ctx context.Context, name, permitID string) error {
	return s.store.Release(ctx, name, permitID)
}

// Renew extends the permit to now+ttl. ErrLeaseLost when it is not live.
func (s *Service) Renew(ctx context.Context, name, permitID string, ttl time.Duration) (time.Time, error) {
	return s.store.Renew(ctx, name, permitID, ttl)
}

// Get reads the semaphore's state; Waiters counts this sidecar's waiting
// callers exactly and the other sidecars' as of their latest try.
func (s *Service) Get(ctx context.Context, name string) (Info, error) {
	info, err := s.store.Get(ctx, name)
	if err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	q := s.waits[name]
	local, reported := 0, 0
	if q != nil && !q.closing {
		local, reported = q.n, q.reported
	}
	s.mu.Unlock()
	info.Waiters = max(info.Waiters-reported, 0) + local
	return info, nil
}
