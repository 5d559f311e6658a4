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
)

// Errors callers switch on.
var (
	// ErrLeaseLost: the lease expired, was released, or belongs to someone
	// else. Anything done under it may have run without mutual exclusion.
	ErrLeaseLost = errors.New("lock: lease lost")
	// ErrMaxHold: a HoldLock session reached its max_hold and was released.
	ErrMaxHold = errors.New("lock: max hold reached")
	// ErrShutdown: the sidecar released a session's lock because it is
	// shutting down.
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
	// WatchRelease subscribes to releases of key. Every release that happens
	// after it returns is signalled on the channel (buffered, coalesced)
	// until stop is called. stop is idempotent.
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
// that queue is not empty, a free lock goes only to the sidecar at its head;
// TryAcquire (a caller that does not wait) never jumps it.
type Queue interface {
	// TryAcquireQueued is TryAcquire for a caller that waits: when it is
	// refused, this sidecar is put in the key's queue (or its entry
	// refreshed). When granted, the sidecar leaves the queue, and is put
	// back at its tail if more says other callers of this sidecar still
	// wait. retryAt is when to try again if no release arrives first: the
	// holder's expiry, or the expiry of the head's entry when the lock is
	// free but kept for another sidecar (the holder is then empty).
	TryAcquireQueued(ctx context.Context, key, leaseID, owner string, ttl time.Duration, more bool) (lease Lease, holder Holder, acquired bool, retryAt time.Time, err error)
	// LeaveQueue takes this sidecar out of key's queue (its last waiter
	// gave up), waking the next sidecar if this one was at the head.
	LeaveQueue(ctx context.Context, key string) error
	// RefreshQueues extends this sidecar's entries in the queues of keys,
	// in one round trip. An entry not refreshed for QueueTTL is dropped.
	RefreshQueues(ctx context.Context, keys []string) error
	// QueueTTL is the lifetime of an entry without a refresh.
	QueueTTL() time.Duration
}

// AcquireOptions are the parameters of one acquisition.
type AcquireOptions struct {
	TTL   time.Duration // lease lifetime; must be > 0
	Wait  time.Duration // 0: try once
	Owner string        // label shown to others
}

// Service grants locks from a Store. It is safe for concurrent use.
//
// Callers waiting for one key form a FIFO in the Service: only the head
// tries the store, when a release is announced or the holder's lease
// expires; the others wait their turn (queue.go). One goroutine, started
// when needed and gone when idle, renews every HoldLock session in batches
// and refreshes this sidecar's entries in the store's wait queues
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
	s.queue, _ = store.(Queue)
	s.batch, _ = store.(BatchRenewer)
	s.renew = newRenewer(s)
	return s
}

// Close stops the renewal of sessions and of queue entries; call it after
// the sessions ended. Sessions still open stop being renewed, and Hold
// fails with ErrShutdown afterwards. It is idempotent.
func (s *Service) Close() { s.renew.close() }

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
// wait, takes the caller out of the queue and returns ctx's error; a lock
// granted to a caller that gave up at that moment is released again, so
// nothing is left held.
func (s *Service) Acquire(ctx context.Context, key string, opts AcquireOptions) (Lease, Holder, bool, error) {
	leaseID, err := s.NewLeaseID()
	if err != nil {
		return Lease{}, Holder{}, false, err
	}
	if opts.Wait > 0 {
		return s.wait(ctx, key, leaseID, opts)
	}
	if s.Waiters(key) > 0 {
		info, err := s.store.Get(ctx, key)
		if err != nil {
			return Lease{}, Holder{}, false, err
		}
		return Lease{}, info.Holder, false, nil
	}
	lease, holder, ok, err := s.store.TryAcquire(ctx, key, leaseID, opts.Owner, opts.TTL)
	return s.settle(ctx, lease, holder, ok, err)
}

// settle returns the outcome of a try, releasing a grant nobody will see.
func (s *Service) settle(ctx context.Context, lease Lease, holder Holder, ok bool, err error) (Lease, Holder, bool, error) {
	if err != nil {
		return Lease{}, Holder{}, false, err
	}
	if ok && ctx.Err() != nil {
		s.releaseDetached(lease)
		return Lease{}, Holder{}, false, ctx.Err()
	}
	return lease, holder, ok, nil
}

// releaseDetached releases lease with its own deadline, for cleanups that
// must happen after the caller's context is gone.
func (s *Service) releaseDetached(lease Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), s.releaseTimeout)
	defer cancel()
	if err := s.store.Release(ctx, lease.Key, lease.LeaseID); err != nil && !errors.Is(err, ErrLeaseLost) {
		s.log.Warn("lock: cleanup release failed; the lease will expire by its TTL",
			"key_len", len(lease.Key), "error", err)
	}
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
