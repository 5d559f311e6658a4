// Package lock grants distributed locks with TTLs, waiting, renewal,
// sessions and fencing tokens, over a Store (Redis or in-memory).
//
// Safety rests on two guarantees of every Store: at most one live lease per
// key at any instant (by the store's clock), and fencing tokens strictly
// increasing per key across all grants, even after the lock expired and its
// bookkeeping was evicted. A lock can still expire while its holder runs
// (a GC pause, a partition), so resources should check the fencing token.
package lock

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
	// ErrLeaseLost: the lease expired, was released, or belongs to someone
	// else. Anything done under it may have run without mutual exclusion.
	ErrLeaseLost = errors.New("lock: lease lost")
	// ErrMaxHold: a HoldLock session reached its max_hold and was released.
	ErrMaxHold = errors.New("lock: max hold reached")
	// ErrShutdown: the sidecar is shutting down: a wait was ended
	// (AcquireOptions.Stop), or a session's lock released.
	ErrShutdown = errors.New("lock: shutting down")
)

// Lease is proof of holding a lock. LeaseID is a secret.
type Lease struct {
	Key          string
	LeaseID      string
	Owner        string
	FencingToken uint64
	ExpireTime   time.Time
}

// Holder is the public view of a lease: no LeaseID.
type Holder struct {
	Owner        string
	FencingToken uint64
	ExpireTime   time.Time
}

// Info describes a lock's state.
type Info struct {
	Held   bool
	Holder Holder
	// LastFencingToken is the highest token the store remembers for the key
	// (0 if none); the next grant is strictly greater.
	LastFencingToken uint64
}

// Store keeps lock state. Implementations must make each method atomic.
type Store interface {
	// TryAcquire grants the lock to leaseID if it is free or expired, or if
	// leaseID already holds it (so a retried call is harmless). Otherwise it
	// returns acquired=false and the current holder.
	TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (lease Lease, holder Holder, acquired bool, err error)
	// Release frees the lock if leaseID holds it and it has not expired,
	// and wakes the watchers of key. ErrLeaseLost otherwise.
	Release(ctx context.Context, key, leaseID string) error
	// Renew sets the expiry of a live lease to now+ttl. ErrLeaseLost otherwise.
	Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (time.Time, error)
	// Get reads the lock's state.
	Get(ctx context.Context, key string) (Info, error)
	// Revoke gives back a grant to leaseID whose outcome its caller could
	// not learn: it releases the lock if leaseID holds it, and makes sure
	// that an acquisition by leaseID still on its way to the store is
	// refused. It is idempotent, and nil when nothing was or will be held.
	Revoke(ctx context.Context, key, leaseID string) error
	// WatchRelease subscribes to releases of key. Every release that happens
	// after it returns is signalled on the channel (buffered, coalesced)
	// until stop is called, except on a store that is also a Queue, which
	// may stop signalling after a grant made while nobody was in key's
	// queue (RedisStore: see its WatchRelease); waiters queue themselves
	// and use Queue.WatchQueued. stop is idempotent.
	WatchRelease(ctx context.Context, key string) (released <-chan struct{}, stop func(), err error)
}

// Renewal is one lease to renew in a batch.
type Renewal struct {
	Key     string
	LeaseID string
	TTL     time.Duration
}

// RenewResult is the outcome of one Renewal: the new expiry, or Renew's
// error (ErrLeaseLost, or a store failure).
type RenewResult struct {
	ExpireTime time.Time
	Err        error
}

// BatchRenewer is implemented by stores that renew many leases in one round
// trip. RenewMany returns one result per renewal, in order; each renewal is
// atomic on its own, the batch is not. A Service renews its sessions through
// it when the store has it, and one Renew at a time otherwise.
type BatchRenewer interface {
	RenewMany(ctx context.Context, rs []Renewal) []RenewResult
}

// Queue is implemented by stores shared between sidecars that keep, per key,
// a FIFO of the sidecars with callers waiting for it (docs/locks.md). While
// that queue is not empty, a free lock is kept for the sidecar at its head
// for a short grace, after which a head that did not take it is skipped;
// TryAcquire (a caller that does not wait) never jumps the queue.
type Queue interface {
	// TryAcquireQueued is TryAcquire for a caller that waits: when it is
	// refused, this sidecar is put in the key's queue (or its entry
	// refreshed) for stay, the longest its callers still wait. When
	// granted, the sidecar leaves the queue, and is put back at its tail
	// if more says other callers of this sidecar still wait. retryAt is
	// when to try again if no release arrives first: the holder's expiry,
	// or the end of the head's grace when the lock is free but kept for
	// another sidecar (the holder is then empty).
	TryAcquireQueued(ctx context.Context, key, leaseID, owner string, ttl time.Duration, more bool, stay time.Duration) (lease Lease, holder Holder, acquired bool, retryAt time.Time, err error)
	// LeaveQueue takes this sidecar out of key's queue (its last waiter
	// gave up), waking the next sidecar if this one was at the head.
	LeaveQueue(ctx context.Context, key string) error
	// WatchQueued is WatchRelease for a caller that relies on the
	// signals only after TryAcquireQueued has refused it (so queued it):
	// it signals every release that happens while this sidecar is in key's
	// queue, and may skip what WatchRelease does for the others.
	WatchQueued(ctx context.Context, key string) (released <-chan struct{}, stop func(), err error)
}

// AcquireOptions are the parameters of one acquisition.
type AcquireOptions struct {
	TTL   time.Duration // lease lifetime; must be > 0
	Wait  time.Duration // 0: try once
	Owner string        // label shown to others
	// Stop, when closed, ends a wait with ErrShutdown (the sidecar is
	// shutting down); nil never does. A channel rather than a context
	// derived per call: a parked waiter then costs no context of its own.
	Stop <-chan struct{}
}

// Service grants locks from a Store. It is safe for concurrent use.
//
// Callers waiting for one key form a FIFO in the Service: only the head
// tries the store, when a release is announced or the holder's lease
// expires; the others wait their turn (queue.go). One goroutine, started
// when needed and gone when idle, renews every HoldLock session in batches
// (renewer.go). Close stops it.
type Service struct {
	store   Store
	queue   Queue        // nil: the store has no shared wait queue
	batch   BatchRenewer // nil: sessions are renewed one Renew at a time
	entropy io.Reader
	log     *slog.Logger
	// releaseTimeout bounds the cleanup release of a lock granted to a
	// caller that had already gone away.
	releaseTimeout time.Duration
	// handBack revokes the grants whose outcome is unknown or that could
	// not be delivered, until the store confirms.
	handBack *handback.Queue

	mu    sync.Mutex
	waits map[string]*keyQueue // keys with waiting callers

	renew *renewer
}

// NewService returns a Service on store. entropy is read for lease ids
// (crypto/rand when nil).
func NewService(store Store, entropy io.Reader, log *slog.Logger) *Service {
	if entropy == nil {
		entropy = rand.Reader
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{store: store, entropy: entropy, log: log, releaseTimeout: 2 * time.Second, waits: map[string]*keyQueue{}}
	s.handBack = handback.New("lock", store.Revoke, s.releaseTimeout, log)
	s.queue, _ = store.(Queue)
	s.batch, _ = store.(BatchRenewer)
	s.renew = newRenewer(s)
	return s
}

// Close stops the renewal of sessions and of queue entries, and tries once
// more to give back the grants not yet confirmed given back; call it after
// the sessions ended. Sessions still open stop being renewed, and Hold
// fails with ErrShutdown afterwards. It is idempotent.
func (s *Service) Close() {
	s.renew.close()
	s.handBack.Close()
}

// NewLeaseID returns a fresh 128-bit lease id as 32 lowercase hex digits.
func (s *Service) NewLeaseID() (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(s.entropy, b[:]); err != nil {
		return "", fmt.Errorf("lock: lease id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Acquire takes the lock on key. When the lock is held it waits up to
// opts.Wait in the key's FIFO of waiters, woken by the release of the lock
// or by its expiry, and then returns acquired=false with the holder it last
// saw. Without a wait it tries once and does not jump waiting callers: it
// returns acquired=false while any wait for key. Cancelling ctx stops the
// wait, takes the caller out of the queue and returns ctx's error.
//
// A call that fails leaves nothing held: a grant whose outcome is unknown
// (the store failed or ctx ended mid-call), or made too close to ctx's
// deadline to reach the caller (handback.Margin), is given back in the
// background until the store confirms.
func (s *Service) Acquire(ctx context.Context, key string, opts AcquireOptions) (Lease, Holder, bool, error) {
	// Each way has its own frame: a waiter is parked on this one.
	if opts.Wait > 0 {
		return s.wait(ctx, key, opts)
	}
	return s.acquireNow(ctx, key, opts)
}

// acquireNow is Acquire without a wait.
func (s *Service) acquireNow(ctx context.Context, key string, opts AcquireOptions) (Lease, Holder, bool, error) {
	if s.Waiters(key) > 0 {
		info, err := s.store.Get(ctx, key)
		if err != nil {
			return Lease{}, Holder{}, false, err
		}
		return Lease{}, info.Holder, false, nil
	}
	leaseID, err := s.NewLeaseID()
	if err != nil {
		return Lease{}, Holder{}, false, err
	}
	lease, holder, ok, err := s.store.TryAcquire(ctx, key, leaseID, opts.Owner, opts.TTL)
	return s.settle(ctx, key, leaseID, opts.TTL, lease, holder, ok, err)
}

// settle returns the outcome of a try by leaseID, giving back a grant
// nobody will see: after an error the store may have granted it.
func (s *Service) settle(ctx context.Context, key, leaseID string, ttl time.Duration, lease Lease, holder Holder, ok bool, err error) (Lease, Holder, bool, error) {
	if err != nil {
		s.handBack.GiveBack(key, leaseID, ttl, err)
		return Lease{}, Holder{}, false, err
	}
	if ok && !handback.Deliverable(ctx) {
		s.handBack.GiveBack(key, leaseID, ttl, nil)
		return Lease{}, Holder{}, false, handback.Undeliverable(ctx)
	}
	return lease, holder, ok, nil
}

// Release frees the lock held by leaseID. ErrLeaseLost when it is not held
// by leaseID any more.
func (s *Service) Release(ctx context.Context, key, leaseID string) error {
	return s.store.Release(ctx, key, leaseID)
}

// Renew extends the lease to now+ttl. ErrLeaseLost when it is not live.
func (s *Service) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (time.Time, error) {
	return s.store.Renew(ctx, key, leaseID, ttl)
}

// Get reads the lock's state without changing it.
func (s *Service) Get(ctx context.Context, key string) (Info, error) {
	return s.store.Get(ctx, key)
}
