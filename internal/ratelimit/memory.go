package ratelimit

import (
	"context"
	"slices"
	"sort"
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
	// reserved are the fixed window's reservations by later window index.
	reserved map[int64]int64
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
	return m.do(name, key, l, cost, 0), nil
}

// Reserve implements Reserver.
func (m *MemoryStore) Reserve(_ context.Context, name, key string, l Limiter, cost int64, wait time.Duration) (Result, error) {
	return m.do(name, key, l, cost, wait), nil
}

// Get implements Store.
func (m *MemoryStore) Get(_ context.Context, name, key string, l Limiter) (Result, error) {
	return m.do(name, key, l, 0, 0), nil
}

func (m *MemoryStore) do(name, key string, l Limiter, cost int64, wait time.Duration) Result {
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
		st := gcra(now, s.tat, l, cost, usec(wait))
		s.tat, r = st.tat, st.result
		s.expires = s.tat
	case SlidingWindow:
		r = s.slide(now, l, cost, usec(wait))
	default:
		r = s.fixed(now, l, cost, usec(wait))
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

// slide is the sliding window decision (see the Redis script). The log is
// sorted by time; with wait (µs) > 0, a cost that does not fit now but
// fits within wait is reserved: logged at the time it fits.
func (s *memState) slide(now float64, l Limiter, cost int64, wait float64) Result {
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
		r.Allowed, r.Taken = true, cost
		if cost > 0 {
			s.log = s.insert(now, cost)
			s.sum += cost
			s.expires = max(s.expires, now+w)
		}
	} else {
		over := s.sum + need - l.Limit
		var fit float64
		for _, e := range s.log {
			over -= e.cost
			if over <= 0 {
				fit = e.at + w - now
				break
			}
		}
		if cost > 0 && wait > 0 && fit > 0 && fit <= wait+eps {
			s.log = s.insert(now+fit, cost)
			s.sum += cost
			s.expires = max(s.expires, now+fit+w)
			r.Allowed, r.Taken, r.Delay = true, cost, fromUsec(fit)
		} else {
			r.RetryAfter = fromUsec(fit)
		}
	}
	r.Remaining = max(0, l.Limit-s.sum)
	if n := len(s.log); n > 0 {
		r.ResetAfter = fromUsec(s.log[n-1].at + w - now)
	}
	return r
}

// insert logs cost at time at, keeping the log sorted by time (after the
// entries of the same time).
func (s *memState) insert(at float64, cost int64) []logEntry {
	i := sort.Search(len(s.log), func(i int) bool { return s.log[i].at > at })
	return slices.Insert(s.log, i, logEntry{at: at, cost: cost})
}

// fixed is the fixed window decision (see the Redis script). With wait
// (µs) > 0, a cost that does not fit in this window is reserved in the
// first later window, starting within wait, that has room.
func (s *memState) fixed(now float64, l Limiter, cost int64, wait float64) Result {
	w := usec(l.Window)
	idx := int64(now / w)
	if s.window != idx {
		s.window, s.count = idx, s.reserved[idx]
		for j := range s.reserved {
			if j <= idx {
				delete(s.reserved, j)
			}
		}
	}
	end := float64(idx+1) * w
	r := Result{Limit: l.Limit, ResetAfter: fromUsec(end - now)}
	need := max(cost, 1)
	if s.count+need <= l.Limit {
		r.Allowed, r.Taken = true, cost
		if cost > 0 {
			s.count += cost
			s.expires = max(s.expires, end)
		}
	} else if cost > 0 && wait > 0 {
		for j := idx + 1; float64(j)*w-now <= wait+eps; j++ {
			if s.reserved[j]+cost <= l.Limit {
				if s.reserved == nil {
					s.reserved = map[int64]int64{}
				}
				s.reserved[j] += cost
				s.expires = max(s.expires, float64(j+1)*w)
				r.Allowed, r.Taken = true, cost
				r.Delay = fromUsec(float64(j)*w - now)
				break
			}
		}
		if !r.Allowed {
			r.RetryAfter = fromUsec(end - now)
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
