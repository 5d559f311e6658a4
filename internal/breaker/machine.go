package breaker

import (
	"container/heap"
	"sync/atomic"
)

// windowBuckets is how many buckets the sliding window is kept in: the
// window slides by Window/windowBuckets.
const windowBuckets = 10

// machine is one breaker's state machine, in the integer time (Unix
// milliseconds) of the clock that drives it. It is the reference for the
// Redis scripts in redis.go, which implement the same transitions; the
// conformance suite runs both. It is not safe for concurrent use.
//
// Every operation first settles expired permits (lazy accounting): each
// counts as a failure of its generation, so a dead probe cannot wedge
// half-open. Every state change starts a new generation and forgets the
// outstanding permits, whose reports are then stale.
type machine struct {
	state       State
	gen         uint64
	openUntil   int64 // ms; meaningful when open
	consecutive int64
	hin, hok    int64 // half-open: probes in flight, probe successes
	buckets     [windowBuckets]bucket
	reporters   map[Reporter]int64 // last bad outcome, ms
	permits     map[permitKey]*permitEntry
	expiry      permitHeap
	// released are permits handed back before they were granted (release
	// with a mark), until when: their allow grants nothing.
	released map[permitKey]int64
	// outstanding counts the permits of every machine sharing it, for a
	// process-wide bound.
	outstanding *atomic.Int64
}

type bucket struct {
	idx                int64
	calls, fails, slow int64
}

type permitKey struct {
	reporter Reporter
	nonce    Nonce
}

type permitEntry struct {
	key    permitKey
	expire int64
	index  int
}

// permitHeap orders permits by expiry (container/heap).
type permitHeap []*permitEntry

func (h permitHeap) Len() int           { return len(h) }
func (h permitHeap) Less(i, j int) bool { return h[i].expire < h[j].expire }
func (h permitHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *permitHeap) Push(x any) {
	e := x.(*permitEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *permitHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

// newMachine returns a closed breaker. The first generation is the clock
// in milliseconds, so a breaker forgotten and made again does not reuse
// the generations of its permits still out there.
func newMachine(now int64, outstanding *atomic.Int64) *machine {
	return &machine{state: Closed, gen: uint64(now), outstanding: outstanding}
}

// allowResult is the machine's answer to allow.
type allowResult struct {
	allowed bool
	retryMS int64 // when refused
	limited bool  // refused because of the permit bound
}

// allow decides a call and, when allowed, records the permit key with its
// expiry. maxPerBreaker and maxTotal bound the outstanding permits.
func (m *machine) allow(now int64, p *params, key permitKey, ttlMS, maxPerBreaker, maxTotal int64) allowResult {
	m.settle(now, p)
	if until, ok := m.released[key]; ok {
		delete(m.released, key)
		if until > now {
			// Handed back already: its caller is gone.
			return allowResult{}
		}
	}
	if m.state == Open {
		if now < m.openUntil {
			return allowResult{retryMS: m.openUntil - now}
		}
		m.toHalfOpen()
	}
	if m.state == HalfOpen && m.hin+m.hok >= p.halfMax {
		retry := int64(1000)
		if len(m.expiry) > 0 {
			retry = max(m.expiry[0].expire-now, 1)
		}
		return allowResult{retryMS: retry}
	}
	if int64(len(m.permits)) >= maxPerBreaker || (m.outstanding != nil && m.outstanding.Load() >= maxTotal) {
		return allowResult{limited: true}
	}
	if m.state == HalfOpen {
		m.hin++
	}
	if old, ok := m.permits[key]; ok {
		// A repeated nonce: keep one entry.
		heap.Remove(&m.expiry, old.index)
		m.dropPermit(old)
	}
	e := &permitEntry{key: key, expire: now + ttlMS}
	if m.permits == nil {
		m.permits = map[permitKey]*permitEntry{}
	}
	m.permits[key] = e
	heap.Push(&m.expiry, e)
	if m.outstanding != nil {
		m.outstanding.Add(1)
	}
	return allowResult{allowed: true}
}

// reportStatus is what became of a report.
type reportStatus int

const (
	reportCounted reportStatus = iota + 1
	reportStale                // an earlier generation: ignored
	reportUnknown              // not outstanding: never issued, reported, or expired
)

// report records the outcome of the permit key of generation gen, issued
// at issuedMS. durMS < 0 means unknown: the time since issue is used.
func (m *machine) report(now int64, p *params, gen uint64, key permitKey, issuedMS int64, o Outcome, durMS int64) reportStatus {
	m.settle(now, p)
	if gen != m.gen {
		return reportStale
	}
	e, ok := m.permits[key]
	if !ok {
		return reportUnknown
	}
	heap.Remove(&m.expiry, e.index)
	m.dropPermit(e)
	if durMS < 0 {
		durMS = max(now-issuedMS, 0)
	}
	m.record(now, p, o, durMS, key.reporter)
	return reportCounted
}

// release hands back the permit key, whatever its generation, counting
// nothing (an Ignored outcome: a probe's slot is free again), and reports
// whether it was outstanding. When it is not and markMS > 0, an allow of
// key in the next markMS grants nothing (a release that overtook its
// allow); at most maxPerBreaker such marks are kept.
func (m *machine) release(now int64, p *params, key permitKey, markMS, maxPerBreaker int64) bool {
	m.settle(now, p)
	if e, ok := m.permits[key]; ok {
		heap.Remove(&m.expiry, e.index)
		m.dropPermit(e)
		m.record(now, p, Ignored, -1, key.reporter)
		return true
	}
	if markMS <= 0 {
		return false
	}
	for k, until := range m.released {
		if until <= now {
			delete(m.released, k)
		}
	}
	if int64(len(m.released)) < maxPerBreaker {
		if m.released == nil {
			m.released = map[permitKey]int64{}
		}
		m.released[key] = now + markMS
	}
	return false
}

func (m *machine) dropPermit(e *permitEntry) {
	delete(m.permits, e.key)
	if m.outstanding != nil {
		m.outstanding.Add(-1)
	}
}

// settle counts every expired permit as a failure, oldest first. A
// transition on the way forgets the rest.
func (m *machine) settle(now int64, p *params) {
	for len(m.expiry) > 0 && m.expiry[0].expire <= now {
		e := heap.Pop(&m.expiry).(*permitEntry)
		m.dropPermit(e)
		m.record(now, p, Failure, -1, e.key.reporter)
	}
}

// record counts one outcome in the current state and makes the
// transition it causes.
func (m *machine) record(now int64, p *params, o Outcome, durMS int64, rep Reporter) {
	slow := p.slowPPM > 0 && durMS >= 0 && durMS >= p.slowMS
	switch m.state {
	case Closed:
		if o == Ignored {
			return
		}
		b := m.bucket(now, p)
		b.calls++
		bad := false
		if o == Failure {
			b.fails++
			m.consecutive++
			bad = true
		} else {
			m.consecutive = 0
		}
		if slow {
			b.slow++
			bad = true
		}
		if bad {
			m.markReporter(now, p, rep)
		}
		if m.shouldTrip(now, p) {
			m.trip(now, p)
		}
	case HalfOpen:
		if m.hin > 0 {
			m.hin--
		}
		switch {
		case o == Ignored:
		case o == Failure || slow:
			m.trip(now, p)
		default:
			m.hok++
			if m.hok >= p.halfMax {
				m.close()
			}
		}
	}
}

func bucketIndex(now int64, p *params) int64 { return now / max(p.windowMS/windowBuckets, 1) }

func (m *machine) bucket(now int64, p *params) *bucket {
	idx := bucketIndex(now, p)
	b := &m.buckets[idx%windowBuckets]
	if b.idx != idx {
		*b = bucket{idx: idx}
	}
	return b
}

func (m *machine) sums(now int64, p *params) (calls, fails, slow int64) {
	cur := bucketIndex(now, p)
	for _, b := range m.buckets {
		if b.idx > cur-windowBuckets && b.idx <= cur {
			calls, fails, slow = calls+b.calls, fails+b.fails, slow+b.slow
		}
	}
	return calls, fails, slow
}

func (m *machine) markReporter(now int64, p *params, rep Reporter) {
	if m.reporters == nil {
		m.reporters = map[Reporter]int64{}
	}
	m.reporters[rep] = now
}

// reporterCount counts the reporters with a bad outcome in the window,
// forgetting older ones.
func (m *machine) reporterCount(now int64, p *params) int64 {
	var n int64
	for r, t := range m.reporters {
		if t > now-p.windowMS {
			n++
		} else {
			delete(m.reporters, r)
		}
	}
	return n
}

func (m *machine) shouldTrip(now int64, p *params) bool {
	if p.minRep > 1 && m.reporterCount(now, p) < p.minRep {
		return false
	}
	if p.consecutive > 0 && m.consecutive >= p.consecutive {
		return true
	}
	if p.ratePPM == 0 && p.slowPPM == 0 {
		return false
	}
	calls, fails, slow := m.sums(now, p)
	if calls == 0 || calls < p.minCalls {
		return false
	}
	return p.ratePPM > 0 && fails*1_000_000 >= p.ratePPM*calls ||
		p.slowPPM > 0 && slow*1_000_000 >= p.slowPPM*calls
}

func (m *machine) trip(now int64, p *params) {
	m.newGeneration(Open)
	m.openUntil = now + p.openMS
}

func (m *machine) toHalfOpen() { m.newGeneration(HalfOpen) }
func (m *machine) close()      { m.newGeneration(Closed) }

// newGeneration moves to state with empty counts and no outstanding
// permits.
func (m *machine) newGeneration(s State) {
	m.state = s
	m.gen++
	m.consecutive, m.hin, m.hok = 0, 0, 0
	m.buckets = [windowBuckets]bucket{}
	m.reporters = nil
	if m.outstanding != nil {
		m.outstanding.Add(-int64(len(m.permits)))
	}
	m.permits = nil
	m.expiry = nil
}

// reset forces the breaker closed (ResetBreaker).
func (m *machine) reset() { m.close() }

// seedOpen opens a fresh breaker until `until`: a shared breaker's local
// fallback starts from the state last seen in the store.
func (m *machine) seedOpen(until int64) {
	m.newGeneration(Open)
	m.openUntil = until
}

// snapshot settles expired permits and describes the breaker. An open
// breaker whose open duration has passed is shown half-open: that is what
// the next allow finds.
func (m *machine) snapshot(now int64, p *params) snapshotMS {
	m.settle(now, p)
	s := snapshotMS{state: m.state, gen: m.gen, consecutive: m.consecutive, hin: m.hin, hok: m.hok,
		outstanding: int64(len(m.permits)), reporters: m.reporterCount(now, p)}
	s.calls, s.fails, s.slow = m.sums(now, p)
	if m.state == Open {
		if now >= m.openUntil {
			s.state = HalfOpen
		} else {
			s.openUntil = m.openUntil
		}
	}
	return s
}

// idle reports whether the breaker is indistinguishable from a fresh one,
// so that forgetting it loses nothing.
func (m *machine) idle(now int64, p *params) bool {
	s := m.snapshot(now, p)
	return s.state == Closed && s.calls == 0 && s.consecutive == 0 && s.outstanding == 0 && s.reporters == 0
}

// snapshotMS is a machine's state in integer time; the Redis Get script
// returns the same fields.
type snapshotMS struct {
	state                  State
	gen                    uint64
	openUntil              int64
	consecutive, hin, hok  int64
	calls, fails, slow     int64
	outstanding, reporters int64
}
