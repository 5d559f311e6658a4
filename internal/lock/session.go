package lock

import (
	"context"
	"errors"
	"sync"
	"time"
)

// HoldOptions are the parameters of a session.
type HoldOptions struct {
	AcquireOptions
	// MaxHold bounds how long the session may keep the lock; 0: no bound.
	MaxHold time.Duration
}

// Session keeps one lease alive. The Service's renewer renews it, in a
// batch with the Service's other sessions, about every TTL/3 until Release
// is called, the lease is lost, or MaxHold elapses; a session costs no
// goroutine of its own. Done is closed when the session ended by itself;
// Err then says why (ErrLeaseLost, possibly wrapping store.ErrUnavailable,
// or ErrMaxHold).
type Session struct {
	svc      *Service
	ttl      time.Duration
	interval time.Duration
	renewed  chan time.Time
	done     chan struct{}

	// Guarded by the renewer's mutex.
	idx         int       // in the renewer's heap; -1 when not scheduled
	due         time.Time // next action: renewal or max hold
	slack       time.Duration
	renewAt     time.Time
	maxHoldAt   time.Time // zero: no bound
	localExpiry time.Time // the lease's expiry by our clock, at the latest

	mu      sync.Mutex
	lease   Lease
	err     error
	ended   bool // the lease is released or known lost: nothing left to release
	stopped bool // Release was called: renewal results are dropped

	releaseOnce sync.Once
	releaseErr  error
}

// Hold acquires key like Acquire and, when granted, starts a session that
// keeps the lease alive. When not granted it returns a nil session and the
// holder. The caller must call Release on a returned session. After Close
// it fails with ErrShutdown.
func (s *Service) Hold(ctx context.Context, key string, opts HoldOptions) (*Session, Holder, bool, error) {
	lease, holder, ok, err := s.Acquire(ctx, key, opts.AcquireOptions)
	if err != nil || !ok {
		return nil, holder, false, err
	}
	now := time.Now()
	sess := &Session{
		svc:      s,
		ttl:      opts.TTL,
		interval: max(opts.TTL/3, 10*time.Millisecond),
		lease:    lease,
		renewed:  make(chan time.Time, 1),
		done:     make(chan struct{}),
		idx:      -1,
		// The local deadline lags the store's expiry by at most one round
		// trip; it only decides when to stop retrying a failing renewal.
		localExpiry: now.Add(opts.TTL),
	}
	if opts.MaxHold > 0 {
		sess.maxHoldAt = now.Add(opts.MaxHold)
	}
	sess.schedule(now.Add(sess.interval), sess.interval/4)
	if !s.renew.add(sess) {
		s.handBack.GiveBack(lease.Key, lease.LeaseID, opts.TTL, nil)
		return nil, Holder{}, false, ErrShutdown
	}
	return sess, Holder{}, true, nil
}

// schedule sets the next renewal at renewAt, which may run up to slack
// early to join a batch, or the max hold if it comes first.
func (se *Session) schedule(renewAt time.Time, slack time.Duration) {
	se.renewAt, se.due, se.slack = renewAt, renewAt, slack
	if !se.maxHoldAt.IsZero() && !se.maxHoldAt.After(renewAt.Add(-slack)) {
		se.due, se.slack = se.maxHoldAt, 0
	}
}

// Lease returns the lease with its latest expiry.
func (se *Session) Lease() Lease {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.lease
}

// Renewed delivers the new expiry after each successful renewal (only the
// latest is kept if the reader is slow).
func (se *Session) Renewed() <-chan time.Time { return se.renewed }

// Done is closed when the session ended by itself (lease lost, max hold).
func (se *Session) Done() <-chan struct{} { return se.done }

// Err reports why the session ended by itself; nil while it runs.
func (se *Session) Err() error {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.err
}

// Release stops renewal and frees the lock. It returns ErrLeaseLost if the
// lease had already been lost, and the store's error if the release could
// not be confirmed (the lease then expires by its TTL). It is idempotent and
// bounded by ctx.
func (se *Session) Release(ctx context.Context) error {
	se.releaseOnce.Do(func() {
		se.mu.Lock()
		ended, lease, cause := se.ended, se.lease, se.err
		se.ended, se.stopped = true, true
		se.mu.Unlock()
		se.svc.renew.remove(se)
		if ended {
			if cause != nil && !errors.Is(cause, ErrMaxHold) {
				se.releaseErr = cause
			}
			return
		}
		se.releaseErr = se.svc.store.Release(ctx, lease.Key, lease.LeaseID)
		if se.releaseErr != nil && !errors.Is(se.releaseErr, ErrLeaseLost) {
			// Unconfirmed: keep trying in the background rather than leave
			// the lock held until its TTL.
			se.svc.handBack.GiveBack(lease.Key, lease.LeaseID, se.ttl, se.releaseErr)
		}
	})
	return se.releaseErr
}

// end records why the session ended by itself and closes Done, unless it
// already ended.
func (se *Session) end(err error) {
	se.mu.Lock()
	if se.ended {
		se.mu.Unlock()
		return
	}
	se.err, se.ended = err, true
	se.mu.Unlock()
	close(se.done)
}

// expireMaxHold releases the lock of a session that reached its max hold,
// then ends it.
func (se *Session) expireMaxHold() {
	se.mu.Lock()
	if se.ended {
		se.mu.Unlock()
		return
	}
	se.err, se.ended = ErrMaxHold, true
	lease := se.lease
	se.mu.Unlock()
	se.svc.handBack.GiveBack(lease.Key, lease.LeaseID, se.ttl, nil)
	close(se.done)
}
