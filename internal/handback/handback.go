// Package handback gives back grants whose outcome the sidecar could not
// learn or could not deliver: a lock or an idempotency claim granted under a
// lease id that no caller received (the call timed out, was cancelled, or
// the store's reply was lost). The sidecar mints every lease id, so it
// always knows what it may have granted; a Queue revokes each such id until
// the store confirms, so nothing stays held until its TTL.
//
// The store's revoke must be idempotent and must also defeat a grant still
// on its way (a script queued behind a paused Redis): revoking releases the
// grant if it exists, else leaves a tombstone that refuses it.
package handback

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/store"
)

// RevokeFunc gives back what leaseID may hold on key. It returns nil once
// the store confirmed that leaseID holds nothing and never will.
type RevokeFunc func(ctx context.Context, key, leaseID string) error

// Queue retries revocations in the background, with backoff, until each is
// confirmed or its deadline passes (after which the grant, if any, has
// expired by itself). Its goroutine runs only while revocations are
// pending. It is safe for concurrent use.
type Queue struct {
	revoke  RevokeFunc
	timeout time.Duration
	log     *slog.Logger
	name    string

	mu       sync.Mutex
	pending  []item
	inflight int // taken from pending by the loop, being tried
	running  bool
	closed   bool
	idle     chan struct{} // closed when the goroutine exits; nil when none
	kick     chan struct{}
}

type item struct {
	key, leaseID string
	until        time.Time // give up after: the grant expired anyway
	next         time.Time
	backoff      time.Duration
}

// MaxPending bounds the revocations kept; past it the oldest are dropped
// (logged), and those grants expire by their TTL.
const MaxPending = 1 << 16

// Parallelism bounds the revocations in flight at once.
const Parallelism = 64

// Backoff bounds: the first retry comes soon, and a store coming back is
// noticed within MaxBackoff.
const (
	MinBackoff = 25 * time.Millisecond
	MaxBackoff = 250 * time.Millisecond
)

// New returns a Queue that calls revoke with a context bounded by timeout.
// name labels its log lines ("lock", "idempotency").
func New(name string, revoke RevokeFunc, timeout time.Duration, log *slog.Logger) *Queue {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Queue{name: name, revoke: revoke, timeout: timeout, log: log, kick: make(chan struct{}, 1)}
}

// Add schedules the revocation of leaseID on key, tried at once and
// retried until it is confirmed or until passes.
func (q *Queue) Add(key, leaseID string, until time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) >= MaxPending {
		q.log.Warn(q.name+": too many grants to hand back; the oldest will expire by its TTL",
			"pending", len(q.pending))
		q.pending = q.pending[1:]
	}
	q.pending = append(q.pending, item{key: key, leaseID: leaseID, until: until, backoff: MinBackoff})
	if q.closed {
		return
	}
	if !q.running {
		q.running = true
		q.idle = make(chan struct{})
		go q.loop(q.idle)
	}
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// Give revokes leaseID on key at once, bounded by the revoke timeout, and
// schedules retries (Add) if the store did not confirm. Use it when the
// store is presumably healthy (the caller gave up), so that the grant is
// gone by the time the failed call returns; use Add after a store failure,
// so that a call does not wait for a second one.
func (q *Queue) Give(key, leaseID string, until time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), q.timeout)
	err := q.revoke(ctx, key, leaseID)
	cancel()
	if err != nil {
		q.Add(key, leaseID, until)
	}
}

// Slack is how long after a grant's TTL a give-back is still tried: it
// covers the store timeout and the store's LateGrace, past which nothing
// granted in the failed call can still be held.
const Slack = 45 * time.Second

// GiveBack gives back what leaseID may hold on key for ttl after a call
// that failed with cause (nil: the caller gave up and the store is
// presumably healthy). After a store failure (cause wraps
// store.ErrUnavailable) the first try is made in the background (Add), so
// that the failed call returns at once; otherwise (the caller gave up, or
// replicas did not acknowledge a write the master made) it is made before
// GiveBack returns (Give). Either way it is retried until the store
// confirms or until ttl+Slack.
func (q *Queue) GiveBack(key, leaseID string, ttl time.Duration, cause error) {
	until := time.Now().Add(ttl + Slack)
	if errors.Is(cause, store.ErrUnavailable) && !errors.Is(cause, store.ErrNotReplicated) {
		q.Add(key, leaseID, until)
		return
	}
	q.Give(key, leaseID, until)
}

// Pending returns how many revocations wait for confirmation, including
// those being tried.
func (q *Queue) Pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending) + q.inflight
}

// Close tries the pending revocations once more, for at most the revoke
// timeout, and stops the goroutine. Later Adds are kept but not tried.
func (q *Queue) Close() {
	q.mu.Lock()
	q.closed = true
	idle := q.idle
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
	if idle != nil {
		<-idle
	}
	q.mu.Lock()
	last := q.pending
	q.pending = nil
	q.mu.Unlock()
	if len(last) > 0 {
		q.run(last)
	}
}

func (q *Queue) loop(idle chan struct{}) {
	defer close(idle)
	t := time.NewTimer(MaxBackoff)
	defer t.Stop()
	for {
		q.mu.Lock()
		if q.closed || len(q.pending) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		now := time.Now()
		var due, later []item
		wake := MaxBackoff
		for _, it := range q.pending {
			switch {
			case !now.Before(it.until):
				// The grant, if it happened, has expired.
			case !now.Before(it.next):
				due = append(due, it)
			default:
				later = append(later, it)
				wake = min(wake, it.next.Sub(now))
			}
		}
		q.pending, q.inflight = later, len(due)
		q.mu.Unlock()

		failed := q.run(due)
		now = time.Now()
		q.mu.Lock()
		q.inflight = 0
		for _, it := range failed {
			it.next = now.Add(it.backoff)
			it.backoff = min(2*it.backoff, MaxBackoff)
			q.pending = append(q.pending, it)
			wake = min(wake, it.backoff)
		}
		n := len(q.pending)
		q.mu.Unlock()
		if n == 0 {
			continue
		}
		t.Reset(wake)
		select {
		case <-t.C:
		case <-q.kick:
			t.Stop()
		}
	}
}

// run revokes items, at most Parallelism at once, and returns those the
// store did not confirm.
func (q *Queue) run(items []item) []item {
	var (
		mu     sync.Mutex
		failed []item
		wg     sync.WaitGroup
		sem    = make(chan struct{}, Parallelism)
	)
	for _, it := range items {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), q.timeout)
			err := q.revoke(ctx, it.key, it.leaseID)
			cancel()
			if err != nil {
				mu.Lock()
				failed = append(failed, it)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed
}

// Margin is the least time before a caller's deadline for a grant to be
// handed to it: a reply sent later may reach the caller after it gave up,
// and the grant would be left behind. A grant made later is given back and
// the call fails with the caller's deadline.
const Margin = 10 * time.Millisecond

// Deliverable reports whether a grant made now can still be handed to the
// caller of ctx: ctx is not done and, if it has a deadline, at least Margin
// remains.
func Deliverable(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	d, ok := ctx.Deadline()
	return !ok || time.Until(d) >= Margin
}

// Undeliverable is the error for a grant Deliverable refused: ctx's error,
// or context.DeadlineExceeded when ctx is not done yet.
func Undeliverable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return context.DeadlineExceeded
}
