// Package memwatch is the wake-up channels of the embedded stores: any
// number of watchers per key, each woken (buffered, coalesced) by every
// Signal of its key after it started watching, until it stops.
package memwatch

import "sync"

// Set holds the watchers of every key. The zero value is ready to use;
// it is safe for concurrent use, also while the caller holds its own lock.
type Set struct {
	mu   sync.Mutex
	keys map[string]map[chan struct{}]struct{}
}

// Watch starts watching key. stop is idempotent.
func (s *Set) Watch(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	if s.keys == nil {
		s.keys = map[string]map[chan struct{}]struct{}{}
	}
	set := s.keys[key]
	if set == nil {
		set = map[chan struct{}]struct{}{}
		s.keys[key] = set
	}
	set[ch] = struct{}{}
	s.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			delete(s.keys[key], ch)
			if len(s.keys[key]) == 0 {
				delete(s.keys, key)
			}
		})
	}
}

// Signal wakes key's watchers.
func (s *Set) Signal(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.keys[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Len returns how many keys are watched.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}
