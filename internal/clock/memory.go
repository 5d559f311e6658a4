package clock

import (
	"context"
	"sync"
)

// MemoryStore is the embedded, single-process Store: same semantics as the
// Redis store, not shared between processes and not durable. Clocks are
// never forgotten (forgetting one would let it go backwards), so memory
// grows with the number of distinct clock names.
type MemoryStore struct {
	mu     sync.Mutex
	clocks map[string]uint64
}

// NewMemoryStore returns an empty store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{clocks: map[string]uint64{}}
}

// Next implements Store.
func (m *MemoryStore) Next(ctx context.Context, clock string, count uint64) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.clocks[clock]
	if count > MaxLamport-cur {
		return 0, ErrExhausted
	}
	cur += count
	m.clocks[clock] = cur
	return cur, nil
}

// Observe implements Store.
func (m *MemoryStore) Observe(ctx context.Context, clock string, ts uint64) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := max(m.clocks[clock], ts)
	if cur >= MaxLamport {
		return 0, ErrExhausted
	}
	cur++
	m.clocks[clock] = cur
	return cur, nil
}

// Get implements Store.
func (m *MemoryStore) Get(ctx context.Context, clock string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.clocks[clock], nil
}

// Set forces clock to v, as a store that lost writes would; for tests of
// the regression check.
func (m *MemoryStore) Set(clock string, v uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.clocks[clock] = v
}

// Ping implements store.Pinger: the embedded store is always reachable.
func (m *MemoryStore) Ping(context.Context) error { return nil }
