package ratelimit

import (
	"context"
	"sync"
	"time"
)

// maxMemoryKeys bounds the keys a MemoryStore holds; past it, the keys
// already back to full capacity are dropped (they hold nothing).
const maxMemoryKeys = 100000

// MemoryStore is the Store in this process's memory: the embedded store,
// and the local fallback of store_down local. Time is its now func.
type MemoryStore struct {
	now  func() time.Time
	mu   sync.Mutex
	keys map[memKey]*memState
}

// memKey names one key of one limiter; in the service's memory of
// exhausted keys, rate, burst and limit tell apart takes with different
// overrides.
type memKey struct {
	name, key    string
	rate         float64
	burst, limit int64
}

// memState is one key: a GCRA TAT, a sliding window's log, or a fixed
// window's index and count.
type memState struct {
	expires float64 // µs after which the key holds nothing
	tat     float64
	log     []logEntry
	sum     int64
	window  int64
	count   int64
}

type logEntry struct {
	at   float64
	cost int64
}

// NewMemoryStore returns an empty store on now (time.Now when nil).
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryStore{now: now, keys: map[memKey]*memState{}}
}

// Take implements Store.
func (m *MemoryStore) Take(_ context.Context, name, key string, l Limiter, cost int64) (Result, error) {
	return m.do(name, key, l, cost), nil
}

// Get implements Store.
func (m *MemoryStore) Get(_ context.Context, name, key string, l Limiter) (Result, error) {
	return m.do(name, key, l, 0), nil
}

func (m *MemoryStore) do(name, key string, l Limiter, cost int64) Result {
	now := float64(m.now().UnixMicro())
	m.mu.Lock()
	defer m.mu.Unlock()
	k := memKey{name: name, key: key}
	s := m.keys[k]
	if s != nil && s.expires <= now {
		delete(m.keys, k)
		s = nil
	}
	fresh := s == nil
	if fresh {
		s = &memState{}
	}
	var r Result
	switch l.Algorithm {
	case GCRA:
		st := gcra(now, s.tat, l, cost)
		s.tat, r = st.tat, st.result
		s.expires = s.tat
	case SlidingWindow:
		r = s.slide(now, l, cost)
	default:
		r = s.fixed(now, l, cost)
	}
	if fresh && cost > 0 && r.Allowed {
		if len(m.keys) >= maxMemoryKeys {
			for k, o := range m.keys {
				if o.expires <= now {
					delete(m.keys, k)
				}
			}
		}
		m.keys[k] = s
	}
	return r
}

// slide is the sliding window decision (see the Redis script).
func (s *memState) slide(now float64, l Limiter, cost int64) Result {
	w := usec(l.Window)
	i := 0
	for i < len(s.log) && s.log[i].at <= now-w {
		s.sum -= s.log[i].cost
		i++
	}
	s.log = s.log[i:]
	r := Result{Limit: l.Limit}
	need := cost
	if cost == 0 {
		need = 1
	}
	if s.sum+need <= l.Limit {
		r.Allowed = true
		if cost > 0 {
			s.log = append(s.log, logEntry{at: now, cost: cost})
			s.sum += cost
			s.expires = now + w
		}
	} else {
		over := s.sum + need - l.Limit
		for _, e := range s.log {
			over -= e.cost
			if over <= 0 {
				r.RetryAfter = fromUsec(e.at + w - now)
				break
			}
		}
	}
	r.Remaining = l.Limit - s.sum
	if n := len(s.log); n > 0 {
		r.ResetAfter = fromUsec(s.log[n-1].at + w - now)
	}
	return r
}

// fixed is the fixed window decision (see the Redis script).
func (s *memState) fixed(now float64, l Limiter, cost int64) Result {
	w := usec(l.Window)
	idx := int64(now / w)
	if s.window != idx {
		s.window, s.count = idx, 0
	}
	end := float64(idx+1) * w
	r := Result{Limit: l.Limit, ResetAfter: fromUsec(end - now)}
	need := max(cost, 1)
	if s.count+need <= l.Limit {
		r.Allowed = true
		if cost > 0 {
			s.count += cost
			s.expires = end
		}
	} else {
		r.RetryAfter = fromUsec(end - now)
	}
	r.Remaining = l.Limit - s.count
	if s.count == 0 {
		r.ResetAfter = 0
	}
	return r
}
