package semaphore

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/memwatch"
)

// MemoryStore is the embedded, single-process Store. It has the Redis
// store's semantics, time-floored fencing tokens included, but is neither
// shared between processes nor durable; its only waiting sidecar is its
// own, so it keeps no queue of sidecars (the Service's FIFO is enough).
type MemoryStore struct {
	now func() time.Time

	mu       sync.Mutex
	sems     map[string]*memSem
	lastScan time.Time

	watchers memwatch.Set
}

// idleRetention is how long the bookkeeping of a semaphore without live
// permits is kept. Dropping it later is safe: tokens are floored by the
// clock.
const idleRetention = time.Hour

type memSem struct {
	touched time.Time
	limit   int
	fence   uint64
	permits map[string]*memPermit
}

type memPermit struct {
	owner  string
	fence  uint64
	expire time.Time
}

// NewMemoryStore returns an empty store reading time from now (time.Now
// when nil).
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryStore{now: now, sems: map[string]*memSem{}}
}

// reclaimLocked drops sem's expired permits.
func reclaimLocked(sem *memSem, now time.Time) {
	for id, p := range sem.permits {
		if !p.expire.After(now) {
			delete(sem.permits, id)
		}
	}
}

// earliest is the soonest expiry of sem's permits (zero when none).
func earliest(sem *memSem) time.Time {
	var e time.Time
	for _, p := range sem.permits {
		if e.IsZero() || p.expire.Before(e) {
			e = p.expire
		}
	}
	return e
}

// TryAcquire implements Store.
func (m *MemoryStore) TryAcquire(ctx context.Context, name, permitID, owner string, limit int, ttl time.Duration, q *Queueing) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.evictLocked(now)
	sem := m.sems[name]
	if sem == nil {
		sem = &memSem{permits: map[string]*memPermit{}}
		m.sems[name] = sem
	}
	sem.touched = now
	reclaimLocked(sem, now)
	if q != nil && q.Follow && sem.limit > 0 {
		limit = sem.limit
	}
	raised := limit > sem.limit && sem.limit > 0
	sem.limit = limit
	if raised {
		m.watchers.Signal(name)
	}
	if p := sem.permits[permitID]; p != nil {
		return Result{Acquired: true, Permit: Permit{Name: name, ID: permitID, Owner: p.owner, FencingToken: p.fence, ExpireTime: p.expire},
			Held: len(sem.permits), Limit: limit}, nil
	}
	if len(sem.permits) >= limit {
		return Result{Held: len(sem.permits), Limit: limit, RetryAt: earliest(sem)}, nil
	}
	sem.fence = max(sem.fence+1, uint64(now.UnixMicro()))
	p := &memPermit{owner: owner, fence: sem.fence, expire: now.Add(ttl)}
	sem.permits[permitID] = p
	return Result{Acquired: true, Permit: Permit{Name: name, ID: permitID, Owner: owner, FencingToken: p.fence, ExpireTime: p.expire},
		Held: len(sem.permits), Limit: limit}, nil
}

// evictLocked drops the semaphores idle for idleRetention, scanning at
// most once a minute, so that memory stays bounded by the active ones.
func (m *MemoryStore) evictLocked(now time.Time) {
	if now.Sub(m.lastScan) < time.Minute {
		return
	}
	m.lastScan = now
	for name, sem := range m.sems {
		reclaimLocked(sem, now)
		if len(sem.permits) == 0 && now.Sub(sem.touched) > idleRetention {
			delete(m.sems, name)
		}
	}
}

// Release implements Store.
func (m *MemoryStore) Release(ctx context.Context, name, permitID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	sem := m.sems[name]
	if sem == nil || sem.permits[permitID] == nil {
		return ErrLeaseLost
	}
	p := sem.permits[permitID]
	delete(sem.permits, permitID)
	if !p.expire.After(m.now()) {
		return ErrLeaseLost
	}
	m.watchers.Signal(name)
	return nil
}

// Revoke implements Store. Calls on the embedded store are synchronous, so
// no acquisition can still be on its way: releasing is enough.
func (m *MemoryStore) Revoke(ctx context.Context, name, permitID string) error {
	if err := m.Release(ctx, name, permitID); err != nil && !errors.Is(err, ErrLeaseLost) {
		return err
	}
	return nil
}

// Renew implements Store.
func (m *MemoryStore) Renew(ctx context.Context, name, permitID string, ttl time.Duration) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	sem := m.sems[name]
	if sem == nil || sem.permits[permitID] == nil || !sem.permits[permitID].expire.After(now) {
		return time.Time{}, ErrLeaseLost
	}
	p := sem.permits[permitID]
	p.expire, sem.touched = now.Add(ttl), now
	return p.expire, nil
}

// Get implements Store.
func (m *MemoryStore) Get(ctx context.Context, name string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	sem := m.sems[name]
	if sem == nil {
		return Info{}, nil
	}
	now := m.now()
	info := Info{Limit: sem.limit, LastFencingToken: sem.fence}
	for _, p := range sem.permits {
		if p.expire.After(now) {
			info.Held++
			info.Holders = append(info.Holders, Holder{Owner: p.owner, FencingToken: p.fence, ExpireTime: p.expire})
		}
	}
	sort.Slice(info.Holders, func(i, j int) bool {
		a, b := info.Holders[i], info.Holders[j]
		return a.ExpireTime.Before(b.ExpireTime) || a.ExpireTime.Equal(b.ExpireTime) && a.FencingToken < b.FencingToken
	})
	if len(info.Holders) > MaxListed {
		info.Holders = info.Holders[:MaxListed]
	}
	return info, nil
}

// LeaveQueue implements Store: the embedded store keeps no queue.
func (m *MemoryStore) LeaveQueue(ctx context.Context, _ string) error { return ctx.Err() }

// WatchRelease implements Store.
func (m *MemoryStore) WatchRelease(ctx context.Context, name string) (<-chan struct{}, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ch, stop := m.watchers.Watch(name)
	return ch, stop, nil
}

// Evict drops name's bookkeeping, as memory pressure might; fencing tokens
// must stay increasing afterwards.
func (m *MemoryStore) Evict(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.sems, name)
}
