package breaker

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// cell is one in-memory breaker: a machine behind a mutex, driven by a
// clock.
type cell struct {
	mu sync.Mutex
	m  *machine
}

func newCell(now time.Time, outstanding *atomic.Int64) *cell {
	return &cell{m: newMachine(ms(now), outstanding)}
}

func (c *cell) allow(now time.Time, p Policy, a AllowArgs, maxTotal int64) (Allowance, error) {
	prm := p.params()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := ms(now)
	r := c.m.allow(n, &prm, permitKey{a.Reporter, a.Nonce}, max(durMS(a.TTL), 1), MaxPermitsPerBreaker, maxTotal)
	if r.limited {
		return Allowance{}, ErrLimitExceeded
	}
	out := Allowance{Allowed: r.allowed, State: c.m.state, Generation: c.m.gen, Issued: fromMS(n)}
	if !r.allowed {
		out.RetryAfter = msDur(r.retryMS)
	}
	return out, nil
}

func (c *cell) report(now time.Time, p Policy, ref PermitRef, o Outcome, dur time.Duration) (Recorded, error) {
	prm := p.params()
	c.mu.Lock()
	defer c.mu.Unlock()
	d := int64(-1)
	if dur >= 0 {
		d = durMS(dur)
	}
	switch c.m.report(ms(now), &prm, ref.Generation, permitKey{ref.Reporter, ref.Nonce}, ms(ref.Issued), o, d) {
	case reportUnknown:
		return Recorded{State: c.m.state}, ErrPermitUnknown
	case reportStale:
		return Recorded{State: c.m.state}, nil
	}
	return Recorded{Counted: true, State: c.m.state}, nil
}

func (c *cell) release(now time.Time, p Policy, a AllowArgs) bool {
	prm := p.params()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.release(ms(now), &prm, permitKey{a.Reporter, a.Nonce}, max(durMS(a.TTL), 0), MaxPermitsPerBreaker)
}

func (c *cell) snapshot(now time.Time, p Policy) Snapshot {
	prm := p.params()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := ms(now)
	return c.m.snapshot(n, &prm).public(n)
}

func (c *cell) reset(now time.Time, p Policy) Snapshot {
	prm := p.params()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m.reset()
	n := ms(now)
	return c.m.snapshot(n, &prm).public(n)
}

func (c *cell) idle(now time.Time, p Policy) bool {
	prm := p.params()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.idle(ms(now), &prm)
}

// discard forgets the cell's outstanding permits in the shared count; the
// cell is not used afterwards.
func (c *cell) discard() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m.newGeneration(Closed)
}

// pristine is the snapshot of a breaker that does not exist yet.
func pristine(now time.Time) Snapshot {
	return Snapshot{State: Closed, Now: now}
}

// MemoryStore is the in-memory Store: the same semantics as the Redis
// store, in one process, not durable. Shared breakers of a sidecar on the
// embedded store do not use it (they run as local breakers); it is the
// executable reference the Redis store is tested against, and a Store for
// programs that embed the package. It is safe for concurrent use.
type MemoryStore struct {
	now         func() time.Time
	outstanding atomic.Int64

	mu    sync.Mutex
	cells map[string]*cell
}

// NewMemoryStore returns an empty store reading time from now (time.Now
// when nil).
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryStore{now: now, cells: map[string]*cell{}}
}

func (s *MemoryStore) cell(name string, create bool) *cell {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cells[name]
	if c == nil && create {
		c = newCell(s.now(), &s.outstanding)
		s.cells[name] = c
	}
	return c
}

// Allow implements Store.
func (s *MemoryStore) Allow(ctx context.Context, name string, p Policy, a AllowArgs) (Allowance, error) {
	if err := ctx.Err(); err != nil {
		return Allowance{}, err
	}
	return s.cell(name, true).allow(s.now(), p, a, DefaultMaxPermits)
}

// Report implements Store.
func (s *MemoryStore) Report(ctx context.Context, name string, p Policy, ref PermitRef, o Outcome, dur time.Duration) (Recorded, error) {
	if err := ctx.Err(); err != nil {
		return Recorded{}, err
	}
	c := s.cell(name, false)
	if c == nil {
		return Recorded{State: Closed}, ErrPermitUnknown
	}
	return c.report(s.now(), p, ref, o, dur)
}

// Release implements Store.
func (s *MemoryStore) Release(ctx context.Context, name string, p Policy, a AllowArgs) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	c := s.cell(name, a.TTL > 0) // a mark needs the breaker
	if c == nil {
		return false, nil
	}
	return c.release(s.now(), p, a), nil
}

// Get implements Store.
func (s *MemoryStore) Get(ctx context.Context, name string, p Policy) (Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return Snapshot{}, err
	}
	c := s.cell(name, false)
	if c == nil {
		return pristine(s.now()), nil
	}
	return c.snapshot(s.now(), p), nil
}

// Reset implements Store.
func (s *MemoryStore) Reset(ctx context.Context, name string, p Policy) (Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return Snapshot{}, err
	}
	c := s.cell(name, false)
	if c == nil {
		return pristine(s.now()), nil
	}
	return c.reset(s.now(), p), nil
}

// Ping implements Store: the memory store always answers.
func (s *MemoryStore) Ping(context.Context) error { return nil }

// Evict forgets a breaker, as Redis key expiry might.
func (s *MemoryStore) Evict(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.cells[name]; c != nil {
		c.discard()
		delete(s.cells, name)
	}
}
