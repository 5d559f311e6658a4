package lock

import (
	"context"
	"errors"
	"sync"
	"time"
)

// MemoryStore is the embedded, single-process Store. It has the same
// semantics as the Redis store, including time-floored fencing tokens, but
// is not shared between processes and not durable.
type MemoryStore struct {
	now func() time.Time

	mu       sync.Mutex
	locks    map[string]*memLock
	watchers map[string]map[chan struct{}]struct{}
	lastScan time.Time
}

type memLock struct {
	leaseID string
	owner   string
	expire  time.Time
	fence   uint64
	touched time.Time
}

// idleRetention is how long an unheld lock's bookkeeping is kept. Dropping
// it later is safe: fencing tokens are floored by the clock.
const idleRetention = time.Hour

// NewMemoryStore returns an empty store reading time from now (time.Now
// when nil).
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryStore{now: now, locks: map[string]*memLock{}, watchers: map[string]map[chan struct{}]struct{}{}}
}

func (m *MemoryStore) liveLocked(l *memLock, now time.Time) bool {
	return l != nil && l.leaseID != "" && l.expire.After(now)
}

// TryAcquire implements Store.
func (m *MemoryStore) TryAcquire(ctx context.Context, key, leaseID, owner string, ttl time.Duration) (Lease, Holder, bool, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, Holder{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.evictLocked(now)
	l := m.locks[key]
	if m.liveLocked(l, now) && l.leaseID != leaseID {
		return Lease{}, Holder{Owner: l.owner, FencingToken: l.fence, ExpireTime: l.expire}, false, nil
	}
	if l == nil {
		l = &memLock{}
		m.locks[key] = l
	}
	if l.leaseID != leaseID || !l.expire.After(now) {
		l.fence = nextFence(l.fence, now)
	}
	l.leaseID, l.owner, l.expire, l.touched = leaseID, owner, now.Add(ttl), now
	return Lease{Key: key, LeaseID: leaseID, Owner: owner, FencingToken: l.fence, ExpireTime: l.expire}, Holder{}, true, nil
}

// nextFence is the token after last: strictly greater, and never below the
// clock in microseconds, so a forgotten counter cannot go backwards.
func nextFence(last uint64, now time.Time) uint64 {
	return max(last+1, uint64(now.UnixMicro()))
}

// Release implements Store.
func (m *MemoryStore) Release(ctx context.Context, key, leaseID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	l := m.locks[key]
	if l == nil || l.leaseID != leaseID {
		return ErrLeaseLost
	}
	live := m.liveLocked(l, now)
	l.leaseID, l.owner, l.touched = "", "", now
	if !live {
		return ErrLeaseLost
	}
	for ch := range m.watchers[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return nil
}

// Revoke implements Store. Calls on the embedded store are atomic and
// synchronous, so no acquisition can still be on its way: releasing is
// enough.
func (m *MemoryStore) Revoke(ctx context.Context, key, leaseID string) error {
	if err := m.Release(ctx, key, leaseID); err != nil && !errors.Is(err, ErrLeaseLost) {
		return err
	}
	return nil
}

// Renew implements Store.
func (m *MemoryStore) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	l := m.locks[key]
	if !m.liveLocked(l, now) || l.leaseID != leaseID {
		return time.Time{}, ErrLeaseLost
	}
	l.expire, l.touched = now.Add(ttl), now
	return l.expire, nil
}

// Get implements Store.
func (m *MemoryStore) Get(ctx context.Context, key string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.locks[key]
	if l == nil {
		return Info{}, nil
	}
	info := Info{LastFencingToken: l.fence}
	if m.liveLocked(l, m.now()) {
		info.Held = true
		info.Holder = Holder{Owner: l.owner, FencingToken: l.fence, ExpireTime: l.expire}
	}
	return info, nil
}

// WatchRelease implements Store.
func (m *MemoryStore) WatchRelease(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	set := m.watchers[key]
	if set == nil {
		set = map[chan struct{}]struct{}{}
		m.watchers[key] = set
	}
	set[ch] = struct{}{}
	m.mu.Unlock()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			delete(m.watchers[key], ch)
			if len(m.watchers[key]) == 0 {
				delete(m.watchers, key)
			}
		})
	}
	return ch, stop, nil
}

// Evict drops key's bookkeeping, as memory pressure might; fencing tokens
// must stay increasing afterwards.
func (m *MemoryStore) Evict(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.locks, key)
}

// evictLocked drops unheld locks idle for idleRetention, scanning at most
// once a minute so that memory stays bounded by the active keys.
func (m *MemoryStore) evictLocked(now time.Time) {
	if now.Sub(m.lastScan) < time.Minute {
		return
	}
	m.lastScan = now
	for k, l := range m.locks {
		if !m.liveLocked(l, now) && now.Sub(l.touched) > idleRetention {
			delete(m.locks, k)
		}
	}
}

// Ping implements store.Pinger: the embedded store is always reachable.
func (m *MemoryStore) Ping(context.Context) error { return nil }

// RenewMany implements BatchRenewer: every renewal under one lock.
func (m *MemoryStore) RenewMany(ctx context.Context, rs []Renewal) []RenewResult {
	out := make([]RenewResult, len(rs))
	if err := ctx.Err(); err != nil {
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for i, r := range rs {
		l := m.locks[r.Key]
		if !m.liveLocked(l, now) || l.leaseID != r.LeaseID {
			out[i].Err = ErrLeaseLost
			continue
		}
		l.expire, l.touched = now.Add(r.TTL), now
		out[i].ExpireTime = l.expire
	}
	return out
}

var _ BatchRenewer = (*MemoryStore)(nil)
