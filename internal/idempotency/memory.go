package idempotency

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"
)

// MemoryStore is the embedded, single-process Store. It has the same
// semantics as the Redis store but is not shared between processes and not
// durable.
type MemoryStore struct {
	now func() time.Time

	mu       sync.Mutex
	records  map[string]*memRecord
	watchers map[string]map[chan struct{}]struct{}
	lastScan time.Time
}

type memRecord struct {
	completed   bool
	fingerprint string
	leaseID     string
	leaseExpire time.Time     // in progress
	leaseTTL    time.Duration // in progress
	retention   time.Duration
	attempts    int
	created     time.Time
	updated     time.Time
	completedAt time.Time
	checkpoint  *Checkpoint // in progress
	result      Result      // completed
	expire      time.Time   // when the record is forgotten
}

// NewMemoryStore returns an empty store reading time from now (time.Now
// when nil).
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryStore{now: now, records: map[string]*memRecord{}, watchers: map[string]map[chan struct{}]struct{}{}}
}

// getLocked returns key's record, dropping it when its retention is over.
func (m *MemoryStore) getLocked(key string, now time.Time) *memRecord {
	r := m.records[key]
	if r != nil && !r.expire.After(now) {
		delete(m.records, key)
		return nil
	}
	return r
}

// CheckOrRecord implements Store.
func (m *MemoryStore) CheckOrRecord(ctx context.Context, key, leaseID string, opts Options) (Claim, error) {
	if err := ctx.Err(); err != nil {
		return Claim{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.evictLocked(now)
	r := m.getLocked(key, now)
	if r == nil {
		r = &memRecord{fingerprint: opts.Fingerprint, created: now}
		m.records[key] = r
		return m.startLocked(r, leaseID, opts, now), nil
	}
	if r.fingerprint != opts.Fingerprint {
		return Claim{}, ErrKeyMismatch
	}
	if r.completed {
		return Claim{Outcome: Completed, Result: copyResult(r.result), CompleteTime: r.completedAt}, nil
	}
	live := r.leaseExpire.After(now)
	if live && r.leaseID == leaseID {
		return Claim{Outcome: Started, LeaseID: leaseID, Attempt: r.attempts, LeaseExpireTime: r.leaseExpire, Checkpoint: copyCheckpoint(r.checkpoint)}, nil
	}
	if live {
		return Claim{Outcome: InProgress, Attempt: r.attempts, LeaseExpireTime: r.leaseExpire, LeaseRemaining: r.leaseExpire.Sub(now)}, nil
	}
	return m.startLocked(r, leaseID, opts, now), nil
}

// startLocked gives r a new lease: a first start or a takeover.
func (m *MemoryStore) startLocked(r *memRecord, leaseID string, opts Options, now time.Time) Claim {
	r.attempts++
	r.leaseID, r.leaseTTL, r.retention = leaseID, opts.LeaseTTL, opts.Retention
	r.leaseExpire, r.updated = now.Add(opts.LeaseTTL), now
	r.expire = r.leaseExpire.Add(r.retention)
	return Claim{Outcome: Started, LeaseID: leaseID, Attempt: r.attempts, LeaseExpireTime: r.leaseExpire, Checkpoint: copyCheckpoint(r.checkpoint)}
}

// ownedLocked returns the in-progress record leaseID owns, or nil.
func (m *MemoryStore) ownedLocked(key, leaseID string, now time.Time) *memRecord {
	r := m.getLocked(key, now)
	if r == nil || r.completed || r.leaseID != leaseID {
		return nil
	}
	return r
}

// Complete implements Store.
func (m *MemoryStore) Complete(ctx context.Context, key, leaseID string, res Result) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	r := m.getLocked(key, now)
	if r != nil && r.completed && r.leaseID == leaseID {
		return r.expire, nil
	}
	if r = m.ownedLocked(key, leaseID, now); r == nil {
		return time.Time{}, ErrLeaseLost
	}
	r.completed, r.result, r.completedAt, r.updated = true, copyResult(res), now, now
	r.checkpoint, r.leaseExpire, r.leaseTTL = nil, time.Time{}, 0
	r.expire = now.Add(r.retention)
	m.notifyLocked(key)
	return r.expire, nil
}

// Checkpoint implements Store.
func (m *MemoryStore) Checkpoint(ctx context.Context, key, leaseID string, cp Checkpoint) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	r := m.ownedLocked(key, leaseID, now)
	if r == nil {
		return time.Time{}, ErrLeaseLost
	}
	cp.Time = now
	r.checkpoint = copyCheckpoint(&cp)
	r.leaseExpire, r.updated = now.Add(r.leaseTTL), now
	r.expire = r.leaseExpire.Add(r.retention)
	return r.leaseExpire, nil
}

// Release implements Store.
func (m *MemoryStore) Release(ctx context.Context, key, leaseID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ownedLocked(key, leaseID, m.now()) == nil {
		return ErrLeaseLost
	}
	delete(m.records, key)
	m.notifyLocked(key)
	return nil
}

// Revoke implements Store. Calls on the embedded store are atomic and
// synchronous, so no claim can still be on its way: releasing is enough.
func (m *MemoryStore) Revoke(ctx context.Context, key, leaseID string) error {
	if err := m.Release(ctx, key, leaseID); err != nil && !errors.Is(err, ErrLeaseLost) {
		return err
	}
	return nil
}

// Get implements Store.
func (m *MemoryStore) Get(ctx context.Context, key string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	r := m.getLocked(key, now)
	if r == nil {
		return Info{State: Absent}, nil
	}
	info := Info{
		Fingerprint: r.fingerprint,
		Attempts:    r.attempts,
		CreateTime:  r.created,
		UpdateTime:  r.updated,
		ExpireTime:  r.expire,
	}
	switch {
	case r.completed:
		info.State, info.CompleteTime = Done, r.completedAt
	case r.leaseExpire.After(now):
		info.State = Running
	default:
		info.State = LeaseExpired
	}
	if !r.completed {
		info.LeaseExpireTime = r.leaseExpire
		if r.checkpoint != nil {
			info.RecoveryPoint = r.checkpoint.RecoveryPoint
		}
	}
	return info, nil
}

// WatchDone implements Store.
func (m *MemoryStore) WatchDone(ctx context.Context, key string) (<-chan struct{}, func(), error) {
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

func (m *MemoryStore) notifyLocked(key string) {
	for ch := range m.watchers[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// evictLocked drops records whose retention is over, scanning at most once
// a minute so that memory stays bounded by the live records.
func (m *MemoryStore) evictLocked(now time.Time) {
	if now.Sub(m.lastScan) < time.Minute {
		return
	}
	m.lastScan = now
	for k, r := range m.records {
		if !r.expire.After(now) {
			delete(m.records, k)
		}
	}
}

// Len returns the number of records held, expired or not (for tests).
func (m *MemoryStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.records)
}

// Ping implements store.Pinger: the embedded store is always reachable.
func (m *MemoryStore) Ping(context.Context) error { return nil }

// copyResult copies r so that neither caller nor store shares its memory.
func copyResult(r Result) Result {
	var out Result
	if len(r.Data) > 0 {
		out.Data = slices.Clone(r.Data)
	}
	if len(r.Metadata) > 0 {
		out.Metadata = maps.Clone(r.Metadata)
	}
	return out
}

func copyCheckpoint(cp *Checkpoint) *Checkpoint {
	if cp == nil {
		return nil
	}
	c := *cp
	c.Data = nil
	if len(cp.Data) > 0 {
		c.Data = slices.Clone(cp.Data)
	}
	return &c
}
