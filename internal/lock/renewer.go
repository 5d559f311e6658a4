package lock

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// renewer keeps the sessions of one Service alive. One goroutine serves all
// of them: it runs while there is something to renew and exits when idle,
// so an idle Service owns no goroutine.
//
// Sessions are kept in a heap by the time their renewal is due. A session
// may be renewed up to a quarter of its period early, so each tick takes
// every session due within that slack and renews them all in one
// RenewMany (one pipeline). Sessions renewed together are due together
// again, so sessions settle into a few groups per period: the number of
// round trips grows with the spread of the TTLs, not with the sessions.
type renewer struct {
	svc  *Service
	kick chan struct{} // buffered 1: the schedule changed

	mu      sync.Mutex
	due     sessionHeap
	running bool
	closed  bool
	exited  chan struct{} // of the running goroutine
}

func newRenewer(s *Service) *renewer {
	return &renewer{svc: s, kick: make(chan struct{}, 1)}
}

func (r *renewer) signal() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// startLocked starts the goroutine if it is not running. r.mu is held.
func (r *renewer) startLocked() {
	if r.running || r.closed {
		return
	}
	r.running = true
	r.exited = make(chan struct{})
	go r.loop(r.exited)
}

// add schedules se; false after close.
func (r *renewer) add(se *Session) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	heap.Push(&r.due, se)
	r.startLocked()
	r.signal()
	return true
}

// remove unschedules se (a no-op if it is being renewed right now: the
// result is then dropped because the session is stopped).
func (r *renewer) remove(se *Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if se.idx >= 0 {
		heap.Remove(&r.due, se.idx)
		r.signal()
	}
}

// close stops the goroutine and waits for it.
func (r *renewer) close() {
	r.mu.Lock()
	r.closed = true
	exited := r.exited
	running := r.running
	r.mu.Unlock()
	r.signal()
	if running {
		<-exited
	}
}

func (r *renewer) loop(exited chan struct{}) {
	defer close(exited)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		r.mu.Lock()
		if r.closed || len(r.due) == 0 {
			r.running = false
			r.mu.Unlock()
			return
		}
		now := time.Now()
		var batch []*Session
		for len(r.due) > 0 && !r.due[0].due.Add(-r.due[0].slack).After(now) {
			batch = append(batch, heap.Pop(&r.due).(*Session))
		}
		if len(batch) == 0 {
			next := r.due[0].due
			r.mu.Unlock()
			timer.Reset(time.Until(next))
			select {
			case <-timer.C:
			case <-r.kick:
			}
			continue
		}
		r.mu.Unlock()
		r.renew(batch, now)
	}
}

// renew renews the sessions of one tick and reschedules them.
func (r *renewer) renew(batch []*Session, now time.Time) {
	var (
		renewals []Renewal
		sessions []*Session
		deadline time.Time
	)
	for _, se := range batch {
		if !se.maxHoldAt.IsZero() && !now.Before(se.maxHoldAt) {
			// Rare, and a release is a round trip: off the ticking goroutine.
			go se.expireMaxHold()
			continue
		}
		lease := se.Lease()
		renewals = append(renewals, Renewal{Key: lease.Key, LeaseID: lease.LeaseID, TTL: se.ttl})
		sessions = append(sessions, se)
		deadline = later(deadline, se.localExpiry)
	}
	if len(sessions) == 0 {
		return
	}
	start := time.Now()
	results := r.svc.renewMany(deadline, renewals, sessions)
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, se := range sessions {
		res := results[i]
		se.mu.Lock()
		if se.stopped || se.ended {
			se.mu.Unlock()
			continue
		}
		if res.Err == nil {
			se.lease.ExpireTime = res.ExpireTime
		}
		se.mu.Unlock()
		switch {
		case res.Err == nil:
			se.localExpiry = start.Add(se.ttl)
			select { // keep only the latest expiry
			case <-se.renewed:
			default:
			}
			se.renewed <- res.ExpireTime
			se.schedule(start.Add(se.interval), se.interval/4)
		case errors.Is(res.Err, ErrLeaseLost):
			se.end(res.Err)
			continue
		default:
			// Transient: retry sooner, until the lease would have expired.
			left := time.Until(se.localExpiry)
			if left <= 0 {
				se.end(fmt.Errorf("%w: renewal failed until expiry: %w", ErrLeaseLost, res.Err))
				continue
			}
			se.schedule(time.Now().Add(min(se.interval/3+time.Millisecond, left)), 0)
		}
		heap.Push(&r.due, se)
	}
}

// renewMany renews in one RenewMany when the store has it, else one Renew
// at a time, each bounded by its session's local expiry.
func (s *Service) renewMany(deadline time.Time, rs []Renewal, sessions []*Session) []RenewResult {
	if s.batch != nil {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		return s.batch.RenewMany(ctx, rs)
	}
	out := make([]RenewResult, len(rs))
	for i, x := range rs {
		ctx, cancel := context.WithDeadline(context.Background(), sessions[i].localExpiry)
		out[i].ExpireTime, out[i].Err = s.store.Renew(ctx, x.Key, x.LeaseID, x.TTL)
		cancel()
	}
	return out
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// sessionHeap orders sessions by due time.
type sessionHeap []*Session

func (h sessionHeap) Len() int           { return len(h) }
func (h sessionHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h sessionHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *sessionHeap) Push(x any) {
	se := x.(*Session)
	se.idx = len(*h)
	*h = append(*h, se)
}
func (h *sessionHeap) Pop() any {
	old := *h
	se := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	se.idx = -1
	return se
}
