package lock

import (
	"context"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
)

// The callers of one Service waiting for one key form a FIFO, a keyQueue.
// Only its head is active: it holds the key's release subscription (kept
// for the queue's whole life), tries the store when a release is announced
// or when the holder's lease would expire, and on leaving (granted, timed
// out, cancelled, failed) hands the head to the next waiter together with
// what it learnt. Since the subscription never lapses while the queue lives,
// every release after the last try is still in the channel, so a new head
// need not try at once. A release thus costs one try per Service (sidecar)
// with waiters, whatever the number of callers.
//
// On a store with a shared Queue, the head's tries also keep this sidecar
// in the key's queue of sidecars (for as long as its longest waiter waits),
// and the store keeps a free lock for the sidecar at that queue's head for a
// short grace: the lock passes between sidecars in the order they started
// waiting, and a sidecar that died in the queue is skipped after the grace.

// minRetry floors the wake-up timer, so that a clock difference between
// sidecar and store cannot turn the wait into a busy loop.
const minRetry = 5 * time.Millisecond

// keyQueue is the FIFO of callers waiting for one key. waiters, holder and
// closing are guarded by Service.mu; the other fields belong to the current
// head, and pass to the next one through Service.mu.
type keyQueue struct {
	key         string
	first, last *waiter // the FIFO, head first
	n           int     // waiters in it
	holder      Holder  // the holder seen by the latest try
	// closing: the last waiter left, and a new queue waits for closed,
	// which is made then and closed once the queue is torn down.
	closing bool
	closed  chan struct{}

	released  <-chan struct{} // release subscription, nil until the first wait
	stopWatch func()
	tried     bool      // a try was made while subscribed: wakeAt is valid
	wakeAt    time.Time // when to try again if no release arrives
	enqueued  bool      // this sidecar stands in the store's queue for key
}

// waiter is one caller in a keyQueue; turn is closed when it becomes head.
type waiter struct {
	turn       chan struct{}
	prev, next *waiter
	deadline   time.Time // when its wait ends
}

// yourTurn is the turn of a caller that is head on arrival.
var yourTurn = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Waiters returns how many callers of this Service wait for key.
func (s *Service) Waiters(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q := s.waits[key]; q != nil && !q.closing {
		return q.n
	}
	return 0
}

// join appends a waiter to key's queue, creating the queue if needed.
func (s *Service) join(ctx context.Context, key string, deadline time.Time) (*keyQueue, *waiter, error) {
	for {
		s.mu.Lock()
		q := s.waits[key]
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
		created := q == nil
		if created {
			q = &keyQueue{key: key}
			s.waits[key] = q
		}
		w := &waiter{turn: yourTurn, deadline: deadline}
		if q.last != nil {
			w.turn = make(chan struct{})
			w.prev, q.last.next = q.last, w
		} else {
			q.first = w
		}
		q.last = w
		q.n++
		s.mu.Unlock()
		return q, w, nil
	}
}

// leave takes w out of q: the next waiter becomes head if w was, and the
// last one to leave tears the queue down (unsubscribes, and takes this
// sidecar out of the store's queue unless a grant already did). It returns
// the holder last seen.
func (s *Service) leave(q *keyQueue, w *waiter) Holder {
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
	holder := q.holder
	last := q.n == 0
	if last {
		q.closing, q.closed = true, make(chan struct{})
	} else if wasHead {
		close(q.first.turn)
	}
	s.mu.Unlock()
	if !last {
		return holder
	}
	// Only the head touches these, and w is the last waiter: if it was not
	// the head, the head left before it, handing over through s.mu.
	if q.stopWatch != nil {
		q.stopWatch()
	}
	if s.queue != nil {
		if q.enqueued {
			ctx, cancel := context.WithTimeout(context.Background(), s.releaseTimeout)
			if err := s.queue.LeaveQueue(ctx, q.key); err != nil {
				s.log.Warn("lock: leaving the wait queue failed; the entry expires by itself",
					"key_len", len(q.key), "error", err)
			}
			cancel()
		}
	}
	s.mu.Lock()
	if s.waits[q.key] == q {
		delete(s.waits, q.key)
	}
	close(q.closed)
	s.mu.Unlock()
	return holder
}

// wait is Acquire with opts.Wait > 0.
func (s *Service) wait(ctx context.Context, key string, opts AcquireOptions) (Lease, Holder, bool, error) {
	// A waiter counts under max_waiters from here until it returns; past
	// the limit it is refused before it joins the queue.
	done, err := admission.BeginWait(ctx)
	if err != nil {
		return Lease{}, Holder{}, false, err
	}
	defer done()
	leaseID, err := s.NewLeaseID()
	if err != nil {
		return Lease{}, Holder{}, false, err
	}
	o := s.waitTurn(ctx, key, leaseID, &opts)
	return o.lease, o.holder, o.ok, o.err
}

// outcome is how a wait ended.
type outcome struct {
	lease  Lease
	holder Holder
	ok     bool
	err    error
}

// waitTurn waits for key in its queue and tries when the caller's turn
// comes. A caller is parked here for up to minutes, on the stack of every
// frame below it, which the garbage collector scans at each cycle: the
// frames it parks in hold pointers only, and the work with larger locals
// (tries, settling) runs in calls that have returned by the time it parks.
func (s *Service) waitTurn(ctx context.Context, key, leaseID string, opts *AcquireOptions) *outcome {
	deadline := time.Now().Add(opts.Wait)
	q, w, err := s.join(ctx, key, deadline)
	if err != nil {
		return &outcome{err: err}
	}
	timer := time.NewTimer(opts.Wait)
	defer timer.Stop()
	select {
	case <-w.turn:
	case <-timer.C:
		return &outcome{holder: s.leave(q, w)}
	case <-ctx.Done():
		s.leave(q, w)
		return &outcome{err: ctx.Err()}
	case <-opts.Stop:
		s.leave(q, w)
		return &outcome{err: ErrShutdown}
	}

	// w is the head: q's head fields are its own until it leaves.
	skip := q.released != nil && q.tried && (s.queue == nil || q.enqueued)
	if q.released == nil {
		// A fresh queue: try before subscribing, so that a free lock costs
		// no subscription; then subscribe and try again, so that a release
		// between the two is not lost.
		if o := s.attempt(ctx, q, w, key, leaseID, opts); o != nil {
			return o
		}
		if o := s.subscribe(ctx, q, w, key); o != nil {
			return o
		}
	}
	for {
		if !skip {
			if o := s.attempt(ctx, q, w, key, leaseID, opts); o != nil {
				return o
			}
		}
		skip = false
		now := time.Now()
		remaining := deadline.Sub(now)
		if remaining <= 0 {
			return &outcome{holder: s.leave(q, w)}
		}
		// Also wake when the holder's lease would expire (a crashed holder
		// never publishes a release), or when the reservation for another
		// sidecar ends. A release missed while the subscription was down is
		// signalled when it is back (redisx.Watches).
		timer.Reset(min(remaining, max(q.wakeAt.Sub(now), minRetry)))
		select {
		case <-q.released:
		case <-timer.C:
		case <-ctx.Done():
			s.leave(q, w)
			return &outcome{err: ctx.Err()}
		case <-opts.Stop:
			s.leave(q, w)
			return &outcome{err: ErrShutdown}
		}
	}
}

// attempt is one try by the head w; it returns nil when w is to wait on,
// and otherwise takes w out of q and returns how its wait ended.
func (s *Service) attempt(ctx context.Context, q *keyQueue, w *waiter, key, leaseID string, opts *AcquireOptions) *outcome {
	var o outcome
	aside(func() { o.lease, o.holder, o.ok, o.err = s.try(ctx, q, key, leaseID, *opts) })
	if o.err == nil && !o.ok {
		return nil
	}
	s.leave(q, w)
	o.lease, o.holder, o.ok, o.err = s.settle(ctx, key, leaseID, opts.TTL, o.lease, o.holder, o.ok, o.err)
	return &o
}

// subscribe subscribes q's head w to key's releases; after an error it
// takes w out of q and returns how its wait ended.
func (s *Service) subscribe(ctx context.Context, q *keyQueue, w *waiter, key string) *outcome {
	var (
		released <-chan struct{}
		stop     func()
		err      error
	)
	aside(func() {
		if s.queue != nil { // the try after this queues this sidecar
			released, stop, err = s.queue.WatchQueued(ctx, key)
		} else {
			released, stop, err = s.store.WatchRelease(ctx, key)
		}
	})
	if err != nil {
		return &outcome{holder: s.leave(q, w), err: err}
	}
	q.released, q.stopWatch = released, stop
	return nil
}

// aside runs f on a goroutine of its own and waits for it. A waiting
// caller's goroutine is parked for up to minutes and keeps the stack of the
// deepest call it made; store calls and subscriptions run deep (the Redis
// client's hooks, pipeline and slot routing), so they run aside and the
// caller's stack stays small: about half the memory of a waiter
// (docs/locks.md). A panic in f is raised again in the caller, where the
// server's recovery turns it into an error.
func aside(f func()) {
	done := make(chan struct{})
	var p any
	go func() {
		defer func() {
			p = recover()
			close(done)
		}()
		f()
	}()
	<-done
	if p != nil {
		panic(p)
	}
}

// try is one acquisition attempt by q's head. A refusal is recorded in q
// for the waiters after it.
func (s *Service) try(ctx context.Context, q *keyQueue, key, leaseID string, opts AcquireOptions) (Lease, Holder, bool, error) {
	var (
		lease   Lease
		holder  Holder
		ok      bool
		retryAt time.Time
		err     error
	)
	if s.queue != nil {
		s.mu.Lock()
		more := q.n > 1
		var last time.Time // the longest wait of this sidecar's callers
		for w := q.first; w != nil; w = w.next {
			last = later(last, w.deadline)
		}
		s.mu.Unlock()
		stay := max(time.Until(last), minRetry)
		lease, holder, ok, retryAt, err = s.queue.TryAcquireQueued(ctx, key, leaseID, opts.Owner, opts.TTL, more, stay)
		if err == nil {
			q.enqueued = !ok || more
		}
	} else {
		lease, holder, ok, err = s.store.TryAcquire(ctx, key, leaseID, opts.Owner, opts.TTL)
		retryAt = holder.ExpireTime
		if ok {
			retryAt = lease.ExpireTime
		}
	}
	if err != nil {
		return Lease{}, Holder{}, false, err
	}
	q.tried = q.released != nil
	q.wakeAt = retryAt
	s.mu.Lock()
	if ok {
		q.holder = Holder{Owner: lease.Owner, FencingToken: lease.FencingToken, ExpireTime: lease.ExpireTime}
	} else {
		q.holder = holder
	}
	s.mu.Unlock()
	return lease, holder, ok, nil
}
