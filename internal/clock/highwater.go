package clock

import (
	"container/list"
	"sync"
)

// highWater remembers the highest value seen per clock for the most
// recently used clocks, at most max of them, so memory stays bounded
// whatever clock names callers use. A forgotten clock reads 0, which only
// weakens the check for it.
type highWater struct {
	max int

	mu    sync.Mutex
	marks map[string]*list.Element // of *mark
	order *list.List               // front: most recently used
}

type mark struct {
	clock string
	value uint64
}

func newHighWater(max int) *highWater {
	return &highWater{max: max, marks: map[string]*list.Element{}, order: list.New()}
}

// get returns clock's mark (0 when unknown).
func (h *highWater) get(clock string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.marks[clock]; ok {
		h.order.MoveToFront(e)
		return e.Value.(*mark).value
	}
	return 0
}

// raise sets clock's mark to v if v is higher, evicting the least recently
// used clock when the set is full.
func (h *highWater) raise(clock string, v uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.marks[clock]; ok {
		m := e.Value.(*mark)
		m.value = max(m.value, v)
		h.order.MoveToFront(e)
		return
	}
	if h.order.Len() >= h.max {
		oldest := h.order.Back()
		h.order.Remove(oldest)
		delete(h.marks, oldest.Value.(*mark).clock)
	}
	h.marks[clock] = h.order.PushFront(&mark{clock: clock, value: v})
}

// len returns how many clocks are remembered.
func (h *highWater) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.order.Len()
}
