package resilience

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Mutex is an explicit lock handle, like go-redsync's Mutex: Lock takes
// the lock with a lease of WithTTL, Extend renews the lease, Unlock
// releases it. Nothing renews it in the background: call Extend before
// Until, or use WithLock, whose session the sidecar keeps alive.
//
// The lease is judged by this process's clock, as in WithLock: it is held
// until a local deadline of TTL minus max(TTL/10, 100ms) after the grant
// or the last Extend was received, and Locked reports false once that
// passed, before the lock can expire in the store.
//
// Every call is bounded by ctx's deadline or, when ctx has none, by
// WithLockCallTimeout (plus the WithWait time for Lock). A Mutex is safe
// for concurrent use; it holds at most one lease at a time.
type Mutex struct {
	c   v1.LockServiceClient
	key string
	o   lockOptions

	mu       sync.Mutex
	lease    *v1.Lease // nil when the Mutex holds none
	last     time.Time // when the grant or the last renewal was received
	deadline time.Time // last + leaseLifetime(ttl)
}

// NewMutex returns a Mutex for key; it takes the lock on Lock. WithMaxHold
// does not apply to it.
func NewMutex(c v1.LockServiceClient, key string, opts ...LockOption) *Mutex {
	return &Mutex{c: c, key: key, o: newLockOptions(opts)}
}

// Key returns the lock's key.
func (m *Mutex) Key() string { return m.key }

// Lock acquires the lock, waiting up to the WithWait time for a held
// one. It returns a *NotAcquiredError (errors.Is ErrNotAcquired) when the
// wait ended without the lock; that is also the answer for a lock this
// Mutex already holds.
func (m *Mutex) Lock(ctx context.Context) error {
	ctx, cancel := bounded(ctx, m.o.wait+m.o.callTimeout)
	defer cancel()
	r, err := m.c.AcquireLock(ctx, &v1.AcquireLockRequest{
		Key: m.key, Ttl: optDuration(m.o.ttl), WaitTimeout: optDuration(waitWithin(ctx, m.o.wait)), Owner: m.o.owner,
	})
	now := time.Now()
	if err != nil {
		return FromError(err)
	}
	if !r.GetAcquired() {
		return &NotAcquiredError{Key: m.key, Holder: r.GetHolder().GetOwner(), Token: r.GetHolder().GetFencingToken()}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lease = r.GetLease()
	m.confirmLocked(now)
	return nil
}

func (m *Mutex) confirmLocked(now time.Time) {
	m.last = now
	m.deadline = now.Add(leaseLifetime(m.o.ttl))
}

// Locked reports whether the Mutex holds the lock by its own clock: it
// was acquired, not released, and its local deadline has not passed.
func (m *Mutex) Locked() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease != nil && time.Now().Before(m.deadline)
}

// FencingToken returns the fencing token of the lease the Mutex holds (0
// when it holds none). Pass it to the resource the lock protects.
func (m *Mutex) FencingToken() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease.GetFencingToken()
}

// Until returns the lease's local deadline (zero when the Mutex holds
// none): Extend before it.
func (m *Mutex) Until() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lease == nil {
		return time.Time{}
	}
	return m.deadline
}

// Extend renews the lease for another TTL. It returns ErrNotLocked when
// the Mutex holds no lease, and a *LeaseLostError when the lease is lost:
// RENEWAL_OVERDUE when its local deadline passed before Extend was called
// or answered (the Mutex keeps the lease for Unlock, which releases it if
// the sidecar still has it), LEASE_LOST when the sidecar found it expired
// or taken. Other errors (the sidecar unreachable, the deadline) leave
// the lease as it was, until its local deadline.
func (m *Mutex) Extend(ctx context.Context) error {
	m.mu.Lock()
	lease, last, deadline := m.lease, m.last, m.deadline
	m.mu.Unlock()
	if lease == nil {
		return ErrNotLocked
	}
	if !time.Now().Before(deadline) {
		return m.overdue(last)
	}
	ctx, cancel := bounded(ctx, m.o.callTimeout)
	defer cancel()
	_, err := m.c.RenewLock(ctx, &v1.RenewLockRequest{Key: m.key, LeaseId: lease.GetLeaseId(), Ttl: optDuration(m.o.ttl)})
	now := time.Now()
	if err != nil {
		err = FromError(err)
		if errors.Is(err, ErrLeaseLost) {
			m.drop(lease)
			return &LeaseLostError{Key: m.key, Reason: ReasonLeaseLost, Message: "the sidecar found the lease expired or taken", LastConfirmed: last, Err: err}
		}
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lease != lease { // released or replaced meanwhile
		return ErrNotLocked
	}
	if !now.Before(m.deadline) {
		return m.overdue(m.last)
	}
	m.confirmLocked(now)
	return nil
}

func (m *Mutex) overdue(last time.Time) error {
	return &LeaseLostError{Key: m.key, Reason: LostRenewalOverdue, LastConfirmed: last,
		Message: fmt.Sprintf("not extended within %v (TTL %v)", leaseLifetime(m.o.ttl), m.o.ttl)}
}

// drop forgets lease if it is still the one held.
func (m *Mutex) drop(lease *v1.Lease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lease == lease {
		m.lease = nil
	}
}

// Unlock releases the lock; the Mutex holds no lease afterwards, whatever
// the outcome. It returns ErrNotLocked when the Mutex held none, a
// *LeaseLostError (LEASE_LOST) when the sidecar found the lease expired or
// taken (the critical section may have run without exclusion), and an
// error matching ErrReleaseUnconfirmed when the sidecar did not answer
// (the lease then expires on its own).
func (m *Mutex) Unlock(ctx context.Context) error {
	m.mu.Lock()
	lease, last := m.lease, m.last
	m.lease = nil
	m.mu.Unlock()
	if lease == nil {
		return ErrNotLocked
	}
	ctx, cancel := bounded(ctx, m.o.callTimeout)
	defer cancel()
	_, err := m.c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: m.key, LeaseId: lease.GetLeaseId()})
	if err == nil {
		return nil
	}
	err = FromError(err)
	if errors.Is(err, ErrLeaseLost) {
		return &LeaseLostError{Key: m.key, Reason: ReasonLeaseLost, Message: "the sidecar found the lease expired or taken when releasing it", LastConfirmed: last, Err: err}
	}
	return fmt.Errorf("%w: lock %q: %w", ErrReleaseUnconfirmed, m.key, err)
}
