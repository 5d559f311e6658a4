package semaphore

import (
	"context"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
)

// The callers of one Service waiting for one semaphore form a FIFO, a
// nameQueue. Only its head is active: it holds the semaphore's release
// subscription (kept while the queue lives, so no release after a try is
// missed), tries the store when a release or a raised limit is announced or
// when the earliest permit would expire, and on leaving hands the head to
// the next caller, which tries at once: after a grant more permits may be
// free. The store keeps the sidecars themselves in a FIFO (Queueing), so
// the permits pass between sidecars in the order they started waiting.

// minRetry floors the wake-up timer, so that a clock difference between
// sidecar and store cannot turn a wait into a busy loop.
const minRetry = 5 * time.Millisecond

// nameQueue is the FIFO of callers waiting for one semaphore. The list,
// n, reported and closing are guarded by Service.mu; the subscription
// fields belong to the current head and pass on through Service.mu.
type nameQueue struct {
	name        string
	first, last *waiter
	n           int
	reported    int // the Waiters of this sidecar's latest try
	// limit is the limit of the latest caller to join, sent the one the
	// latest try set: a try sets the semaphore's limit only when a caller
	// with another limit joined since, and otherwise follows the
	// semaphore's current limit (Queueing.Follow).
	limit, sent int
	// closing: the last waiter left and tears the queue down; a caller
	// arriving meanwhile waits for closed.
	closing bool
	closed  chan struct{}

	// joined is signalled when a caller joins behind the head, which then
	// tries again: the try refreshes this sidecar's entry in the store's
	// line (its callers' count and longest wait). Buffered, coalesced.
	joined chan struct{}

	released  <-chan struct{}
	stopWatch func()
	enqueued  bool // this sidecar may stand in the store's queue
}

// waiter is one caller in a nameQueue; turn is closed when it becomes head.
type waiter struct {
	turn       chan struct{}
	prev, next *waiter
	deadline   time.Time
}

// Waiters returns how many callers of this Service wait for name.
func (s *Service) Waiters(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q := s.waits[name]; q != nil && !q.closing {
		return q.n
	}
	return 0
}

// join appends a caller to name's queue, creating it if needed.
func (s *Service) join(ctx context.Context, name string, limit int, deadline time.Time) (*nameQueue, *waiter, error) {
	for {
		s.mu.Lock()
		q := s.waits[name]
		if q != nil && q.closing {
			closed := q.closed
			s.mu.Unlock()
			select {
			case <-closed:
				continue
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
		}
		if q == nil {
			q = &nameQueue{name: name, joined: make(chan struct{}, 1)}
			s.waits[name] = q
		}
		q.limit = limit
		w := &waiter{turn: make(chan struct{}), deadline: deadline}
		if q.last == nil {
			q.first = w
			close(w.turn)
		} else {
			w.prev, q.last.next = q.last, w
			select {
			case q.joined <- struct{}{}:
			default:
			}
		}
		q.last = w
		q.n++
		s.mu.Unlock()
		return q, w, nil
	}
}

// leave takes w out of q, passing the head on if w had it; the last one
// out unsubscribes and takes this sidecar out of the store's queue.
func (s *Service) leave(q *nameQueue, w *waiter) {
	s.mu.Lock()
	wasHead := q.first == w
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.first = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.last = w.prev
	}
	w.prev, w.next = nil, nil
	q.n--
	last := q.n == 0
	if last {
		q.closing, q.closed = true, make(chan struct{})
	} else if wasHead {
		close(q.first.turn)
	}
	s.mu.Unlock()
	if !last {
		return
	}
	if q.stopWatch != nil {
		q.stopWatch()
	}
	if q.enqueued {
		ctx, cancel := context.WithTimeout(context.Background(), s.releaseTimeout)
		if err := s.store.LeaveQueue(ctx, q.name); err != nil {
			s.log.Warn("semaphore: leaving the wait queue failed; the entry expires by itself",
				"name_len", len(q.name), "error", err)
		}
		cancel()
	}
	s.mu.Lock()
	if s.waits[q.name] == q {
		delete(s.waits, q.name)
	}
	close(q.closed)
	s.mu.Unlock()
}

// wait is Acquire with opts.Wait > 0.
func (s *Service) wait(ctx context.Context, name, id string, opts AcquireOptions) (Result, error) {
	// A waiter counts under max_waiters until it returns; past the limit
	// it is refused before it joins the line.
	done, err := admission.BeginWait(ctx)
	if err != nil {
		return Result{}, err
	}
	defer done()
	deadline := time.Now().Add(opts.Wait)
	q, w, err := s.join(ctx, name, opts.Limit, deadline)
	if err != nil {
		return Result{}, err
	}
	timer := time.NewTimer(opts.Wait)
	defer timer.Stop()
	select {
	case <-w.turn:
	case <-timer.C:
		s.leave(q, w)
		return s.status(ctx, name)
	case <-ctx.Done():
		s.leave(q, w)
		return Result{}, ctx.Err()
	case <-opts.Stop:
		s.leave(q, w)
		return Result{}, ErrShutdown
	}
	// w is the head: q's subscription fields are its own until it leaves.
	for {
		r, err := s.try(ctx, q, name, id, opts)
		if err != nil || r.Acquired {
			s.leave(q, w)
			return s.settle(ctx, name, id, opts.TTL, r, err)
		}
		if q.released == nil {
			// Subscribe after the first try, so that a free permit costs
			// no subscription; then try again, so that a release between
			// the two is not missed.
			ch, stop, err := s.store.WatchRelease(ctx, name)
			if err != nil {
				s.leave(q, w)
				return Result{}, err
			}
			q.released, q.stopWatch = ch, stop
			continue
		}
		now := time.Now()
		remaining := deadline.Sub(now)
		if remaining <= 0 {
			s.leave(q, w)
			return r, nil
		}
		// Also wake when the earliest permit would expire (a crashed
		// holder never releases) or a reservation for another sidecar
		// ends. A release missed while the subscription was down is
		// signalled when it is back (redisx.Watches).
		next := remaining
		if !r.RetryAt.IsZero() {
			next = min(remaining, max(r.RetryAt.Sub(now), minRetry))
		}
		timer.Reset(next)
		select {
		case <-q.released:
		case <-q.joined:
		case <-timer.C:
		case <-ctx.Done():
			s.leave(q, w)
			return Result{}, ctx.Err()
		case <-opts.Stop:
			s.leave(q, w)
			return Result{}, ErrShutdown
		}
	}
}

// status is the Result of a wait that timed out before its turn came.
func (s *Service) status(ctx context.Context, name string) (Result, error) {
	info, err := s.store.Get(ctx, name)
	if err != nil {
		return Result{}, err
	}
	return Result{Held: info.Held, Limit: info.Limit}, nil
}

// try is one attempt by q's head, made on behalf of all of q's callers.
func (s *Service) try(ctx context.Context, q *nameQueue, name, id string, opts AcquireOptions) (Result, error) {
	s.mu.Lock()
	var latest time.Time
	for w := q.first; w != nil; w = w.next {
		if w.deadline.After(latest) {
			latest = w.deadline
		}
	}
	qu := &Queueing{More: q.n > 1, Stay: max(time.Until(latest), minRetry), Waiters: q.n, Follow: q.sent == q.limit}
	limit := q.limit
	q.reported, q.sent = q.n, q.limit
	s.mu.Unlock()
	q.enqueued = true // set before the call: a failed one may have enqueued
	return s.store.TryAcquire(ctx, name, id, opts.Owner, limit, opts.TTL, qu)
}
