package events

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"
)

// MemoryStore is the Store of the embedded in-memory backend: one process,
// nothing survives a restart. Event ids follow Redis's "<ms>-<seq>" shape.
type MemoryStore struct {
	now func() time.Time

	mu     sync.Mutex
	topics map[string]*memTopic
}

type memTopic struct {
	log    []memEntry // ascending ids
	last   memID
	groups map[string]*memGroup
	dedup  map[string]memDedup
	// sweepAt is the dedup size at which expired keys are swept next.
	sweepAt int
	// changed is closed and replaced on every append and every wake-up
	// of one of its groups.
	changed chan struct{}
}

type memID struct{ ms, seq uint64 }

func (a memID) less(b memID) bool { return a.ms < b.ms || a.ms == b.ms && a.seq < b.seq }
func (a memID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}

func parseMemID(s string) (memID, bool) {
	if !ValidEventID(s) {
		return memID{}, false
	}
	ms, seq, _ := cutDash(s)
	a, _ := strconv.ParseUint(ms, 10, 64)
	b, _ := strconv.ParseUint(seq, 10, 64)
	return memID{a, b}, true
}

func cutDash(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

type memEntry struct {
	id memID
	ev Event
}

type memDedup struct {
	id      string
	expires time.Time
}

type memGroup struct {
	next      memID // deliver entries with id >= next
	pending   map[memID]*memPending
	consumers map[string]struct{}
	// reads are the records of the reads that named themselves
	// (ReadOptions.ReadID), for Return; swept when they expire.
	reads      map[string]*memRead
	readsSweep int
	// wakes counts the group's wake-ups (nacks, hand-backs): Read reports
	// it as WakeID, and Wait returns at once when it moved on.
	wakes uint64
}

// memRead is what a read handed out: event -> the delivery's visibleAt.
// An empty record is a read handed back before it ran.
type memRead struct {
	ids     map[memID]time.Time
	expires time.Time
}

type memPending struct {
	consumer string
	// visibleAt: claimable from then on.
	visibleAt time.Time
	count     int
	first     time.Time
}

// NewMemoryStore returns an empty store; now is the clock (time.Now when
// nil).
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryStore{now: now, topics: map[string]*memTopic{}}
}

// Ping always answers: the store is in-process.
func (m *MemoryStore) Ping(context.Context) error { return nil }

func (m *MemoryStore) topicLocked(name string) *memTopic {
	t := m.topics[name]
	if t == nil {
		t = &memTopic{groups: map[string]*memGroup{}, dedup: map[string]memDedup{}, changed: make(chan struct{})}
		m.topics[name] = t
	}
	return t
}

func (m *MemoryStore) appendLocked(t *memTopic, ev Event, maxLen int64, now time.Time) string {
	ms := uint64(max(now.UnixMilli(), 0))
	id := memID{ms, 0}
	if !t.last.less(id) {
		id = memID{t.last.ms, t.last.seq + 1}
	}
	t.last = id
	ev.ID = id.String()
	ev.PublishedAt = time.UnixMilli(int64(id.ms))
	t.log = append(t.log, memEntry{id: id, ev: ev})
	// Trimmed in batches, like Redis's MAXLEN ~: the log holds at most
	// about an eighth more than maxLen, and appends stay O(1) amortised.
	if maxLen > 0 && int64(len(t.log)) > maxLen+maxLen/8 {
		t.log = slices.Delete(t.log, 0, len(t.log)-int(maxLen))
	}
	t.notify()
	return ev.ID
}

// notify wakes the topic's Waits.
func (t *memTopic) notify() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// wake records a wake-up of group g of t and wakes the topic's Waits.
func (t *memTopic) wake(g *memGroup) {
	g.wakes++
	t.notify()
}

// Publish implements Store.
func (m *MemoryStore) Publish(ctx context.Context, msg Message, opts PublishOptions) (Published, error) {
	if err := ctx.Err(); err != nil {
		return Published{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	t := m.topicLocked(msg.Topic)
	if msg.IdempotencyKey != "" {
		if d, ok := t.dedup[msg.IdempotencyKey]; ok && now.Before(d.expires) {
			return Published{EventID: d.id, Duplicate: true}, nil
		}
		if len(t.dedup) >= t.sweepAt {
			for k, d := range t.dedup {
				if !now.Before(d.expires) {
					delete(t.dedup, k)
				}
			}
			t.sweepAt = max(2*len(t.dedup), 1024)
		}
	}
	ev := Event{Topic: msg.Topic, Key: msg.Key, Payload: slices.Clone(msg.Payload), Headers: maps.Clone(msg.Headers), IdempotencyKey: msg.IdempotencyKey}
	id := m.appendLocked(t, ev, opts.MaxLen, now)
	if msg.IdempotencyKey != "" {
		t.dedup[msg.IdempotencyKey] = memDedup{id: id, expires: now.Add(opts.DedupRetention)}
	}
	return Published{EventID: id}, nil
}

// EnsureGroup implements Store.
func (m *MemoryStore) EnsureGroup(ctx context.Context, topic, group, consumer string, opts GroupOptions) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topicLocked(topic)
	g, ok := t.groups[group]
	if !ok {
		g = &memGroup{pending: map[memID]*memPending{}, consumers: map[string]struct{}{}, reads: map[string]*memRead{}}
		if opts.Start == Latest {
			g.next = memID{t.last.ms, t.last.seq + 1}
		}
		t.groups[group] = g
	}
	g.consumers[consumer] = struct{}{}
	return !ok, nil
}

func (t *memTopic) find(id memID) (memEntry, bool) {
	i, ok := slices.BinarySearchFunc(t.log, id, func(e memEntry, id memID) int {
		switch {
		case e.id.less(id):
			return -1
		case id.less(e.id):
			return 1
		}
		return 0
	})
	if !ok {
		return memEntry{}, false
	}
	return t.log[i], true
}

// Read implements Store.
func (m *MemoryStore) Read(ctx context.Context, topic, group, consumer string, opts ReadOptions) (ReadResult, error) {
	if err := ctx.Err(); err != nil {
		return ReadResult{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	t := m.topicLocked(topic)
	g, ok := t.groups[group]
	if !ok {
		// Like Redis: the group must exist (it is created by EnsureGroup).
		return ReadResult{}, ErrNoGroup
	}
	g.consumers[consumer] = struct{}{}
	var res ReadResult
	if opts.ReadID != "" {
		g.sweepReads(now)
		if r, ok := g.reads[opts.ReadID]; ok && now.Before(r.expires) {
			return res, nil // handed back before it ran
		}
	}
	ids := slices.SortedFunc(maps.Keys(g.pending), func(a, b memID) int {
		if a.less(b) {
			return -1
		}
		if b.less(a) {
			return 1
		}
		return 0
	})
	for _, id := range ids {
		if len(res.Deliveries) >= opts.Count {
			break
		}
		p := g.pending[id]
		if now.Before(p.visibleAt) {
			continue
		}
		e, ok := t.find(id)
		if !ok { // trimmed away
			delete(g.pending, id)
			continue
		}
		if opts.MaxDeliveries > 0 && p.count >= opts.MaxDeliveries {
			dt := m.topicLocked(topic + DeadSuffix)
			dev := Event{Topic: topic + DeadSuffix, Key: e.ev.Key, Payload: e.ev.Payload, IdempotencyKey: e.ev.IdempotencyKey,
				Headers: deadHeaders(e.ev.Headers, topic, group, e.ev.ID, p.count)}
			m.appendLocked(dt, dev, opts.DeadMaxLen, now)
			delete(g.pending, id)
			res.DeadLettered = append(res.DeadLettered, e.ev.ID)
			continue
		}
		p.count++
		if p.first.IsZero() {
			p.first = now
		}
		p.consumer = consumer
		p.visibleAt = now.Add(opts.Visibility)
		res.Deliveries = append(res.Deliveries, memDelivery(e.ev, p))
	}
	from, _ := slices.BinarySearchFunc(t.log, g.next, func(e memEntry, id memID) int {
		if e.id.less(id) {
			return -1
		}
		if id.less(e.id) {
			return 1
		}
		return 0
	})
	for _, e := range t.log[from:] {
		if len(res.Deliveries) >= opts.Count {
			break
		}
		p := &memPending{consumer: consumer, visibleAt: now.Add(opts.Visibility), count: 1, first: now}
		g.pending[e.id] = p
		g.next = memID{e.id.ms, e.id.seq + 1}
		res.Deliveries = append(res.Deliveries, memDelivery(e.ev, p))
	}
	if opts.ReadID != "" && len(res.Deliveries) > 0 {
		r := &memRead{ids: make(map[memID]time.Time, len(res.Deliveries)), expires: now.Add(opts.Visibility)}
		for _, d := range res.Deliveries {
			id, _ := parseMemID(d.ID)
			r.ids[id] = g.pending[id].visibleAt
		}
		g.reads[opts.ReadID] = r
	}
	res.LastID = t.last.String()
	res.WakeID = strconv.FormatUint(g.wakes, 10)
	for _, p := range g.pending {
		if d := max(p.visibleAt.Sub(now), time.Millisecond); res.NextDue == 0 || d < res.NextDue {
			res.NextDue = d
		}
	}
	return res, nil
}

func memDelivery(ev Event, p *memPending) Delivery {
	ev.Payload = slices.Clone(ev.Payload)
	ev.Headers = maps.Clone(ev.Headers)
	return Delivery{Event: ev, Count: p.count, FirstDeliveredAt: p.first}
}

// deadHeaders are the headers of an event moved to the dead-letter topic.
func deadHeaders(h map[string]string, topic, group, id string, deliveries int) map[string]string {
	out := maps.Clone(h)
	if out == nil {
		out = map[string]string{}
	}
	out["x-dead-letter-topic"] = topic
	out["x-dead-letter-group"] = group
	out["x-dead-letter-event-id"] = id
	out["x-dead-letter-deliveries"] = strconv.Itoa(deliveries)
	return out
}

// Wait implements Store.
func (m *MemoryStore) Wait(ctx context.Context, topic, group, lastID, wakeID string, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	last, lastOK := parseMemID(lastID)
	for {
		m.mu.Lock()
		t := m.topicLocked(topic)
		if lastOK && last.less(t.last) {
			m.mu.Unlock()
			return nil
		}
		if g := t.groups[group]; g != nil && wakeID != strconv.FormatUint(g.wakes, 10) {
			m.mu.Unlock()
			return nil
		}
		ch := t.changed
		m.mu.Unlock()
		select {
		case <-ch: // an append or a wake-up, maybe of another group: look again
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// Ack implements Store.
func (m *MemoryStore) Ack(ctx context.Context, topic, group, id string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g, mid, ok := m.pendingLocked(topic, group, id)
	if !ok {
		return false, nil
	}
	delete(g.pending, mid)
	return true, nil
}

// Nack implements Store.
func (m *MemoryStore) Nack(ctx context.Context, topic, group, id string, retryAfter time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g, mid, ok := m.pendingLocked(topic, group, id)
	if !ok {
		return false, nil
	}
	g.pending[mid].visibleAt = m.now().Add(retryAfter)
	m.topics[topic].wake(g)
	return true, nil
}

// sweepReads forgets the expired read records, in batches.
func (g *memGroup) sweepReads(now time.Time) {
	if len(g.reads) < g.readsSweep {
		return
	}
	for id, r := range g.reads {
		if !now.Before(r.expires) {
			delete(g.reads, id)
		}
	}
	g.readsSweep = max(2*len(g.reads), 64)
}

// Return implements Store.
func (m *MemoryStore) Return(ctx context.Context, topic, group, consumer, readID string, ids []string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	t := m.topics[topic]
	if t == nil || t.groups[group] == nil {
		return 0, nil
	}
	g := t.groups[group]
	g.sweepReads(now)
	r, ok := g.reads[readID]
	if !ok || !now.Before(r.expires) {
		g.reads[readID] = &memRead{expires: now.Add(ReturnTombstoneTTL)}
		return 0, nil
	}
	var which []memID
	if ids == nil {
		which = slices.Collect(maps.Keys(r.ids))
	} else {
		for _, id := range ids {
			if mid, ok := parseMemID(id); ok {
				which = append(which, mid)
			}
		}
	}
	n := 0
	for _, id := range which {
		want, ok := r.ids[id]
		if !ok {
			continue
		}
		delete(r.ids, id)
		p := g.pending[id]
		if p == nil || p.consumer != consumer || !p.visibleAt.Equal(want) {
			continue
		}
		p.count = max(p.count-1, 0)
		if p.count == 0 {
			p.first = time.Time{}
		}
		p.visibleAt = now
		n++
	}
	if n > 0 {
		t.wake(g)
	}
	return n, nil
}

// ExpireDedup implements Store.
func (m *MemoryStore) ExpireDedup(ctx context.Context, topic string, keys []string, keep time.Duration) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topics[topic]
	if t == nil {
		return 0, nil
	}
	until := m.now().Add(max(keep, time.Millisecond))
	n := 0
	for _, k := range keys {
		if d, ok := t.dedup[k]; ok && d.expires.After(until) {
			d.expires = until
			t.dedup[k] = d
			n++
		}
	}
	return n, nil
}

func (m *MemoryStore) pendingLocked(topic, group, id string) (*memGroup, memID, bool) {
	t, ok := m.topics[topic]
	if !ok {
		return nil, memID{}, false
	}
	g, ok := t.groups[group]
	if !ok {
		return nil, memID{}, false
	}
	mid, ok := parseMemID(id)
	if !ok {
		return nil, memID{}, false
	}
	_, ok = g.pending[mid]
	return g, mid, ok
}
