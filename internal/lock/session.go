package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// HoldOptions are the parameters of a session.
type HoldOptions struct {
	AcquireOptions
	// MaxHold bounds how long the session may keep the lock; 0: no bound.
	MaxHold time.Duration
}

// Session keeps one lease alive. It owns one goroutine that renews the
// lease about every TTL/3 until Release is called, the lease is lost, or
// MaxHold elapses. Done is closed when the session ended by itself; Err then
// says why (ErrLeaseLost, possibly wrapping store.ErrUnavailable, or
// ErrMaxHold).
type Session struct {
	svc     *Service
	ttl     time.Duration
	renewed chan time.Time
	done    chan struct{}
	stop    chan struct{}
	exited  chan struct{}

	mu    sync.Mutex
	lease Lease
	err   error
	ended bool // the lease is released or known lost: nothing left to release

	releaseOnce sync.Once
	releaseErr  error
}

// Hold acquires key like Acquire and, when granted, starts a session that
// keeps the lease alive. When not granted it returns a nil session and the
// holder. The caller must call Release on a returned session.
func (s *Service) Hold(ctx context.Context, key string, opts HoldOptions) (*Session, Holder, bool, error) {
	lease, holder, ok, err := s.Acquire(ctx, key, opts.AcquireOptions)
	if err != nil || !ok {
		return nil, holder, false, err
	}
	sess := &Session{
		svc:     s,
		ttl:     opts.TTL,
		lease:   lease,
		renewed: make(chan time.Time, 1),
		done:    make(chan struct{}),
		stop:    make(chan struct{}),
		exited:  make(chan struct{}),
	}
	// The local deadline lags the store's expiry by at most one round trip;
	// it only decides when to stop retrying a failing renewal.
	go sess.run(time.Now().Add(opts.TTL), opts.MaxHold)
	return sess, Holder{}, true, nil
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
		close(se.stop)
		<-se.exited
		se.mu.Lock()
		ended, lease, cause := se.ended, se.lease, se.err
		se.ended = true
		se.mu.Unlock()
		if ended {
			if cause != nil && !errors.Is(cause, ErrMaxHold) {
				se.releaseErr = cause
			}
			return
		}
		se.releaseErr = se.svc.store.Release(ctx, lease.Key, lease.LeaseID)
	})
	return se.releaseErr
}

func (se *Session) end(err error) {
	se.mu.Lock()
	se.err, se.ended = err, true
	se.mu.Unlock()
	close(se.done)
}

func (se *Session) run(localExpiry time.Time, maxHold time.Duration) {
	defer close(se.exited)
	interval := max(se.ttl/3, 10*time.Millisecond)
	renewTimer := time.NewTimer(interval)
	defer renewTimer.Stop()
	var maxHoldC <-chan time.Time
	if maxHold > 0 {
		t := time.NewTimer(maxHold)
		defer t.Stop()
		maxHoldC = t.C
	}
	var lastErr error
	for {
		select {
		case <-se.stop:
			return
		case <-maxHoldC:
			se.svc.releaseDetached(se.Lease())
			se.end(ErrMaxHold)
			return
		case <-renewTimer.C:
		}
		lease := se.Lease()
		start := time.Now()
		ctx, cancel := context.WithDeadline(context.Background(), localExpiry)
		exp, err := se.svc.store.Renew(ctx, lease.Key, lease.LeaseID, se.ttl)
		cancel()
		switch {
		case err == nil:
			localExpiry = start.Add(se.ttl)
			se.mu.Lock()
			se.lease.ExpireTime = exp
			se.mu.Unlock()
			select { // keep only the latest expiry
			case <-se.renewed:
			default:
			}
			se.renewed <- exp
			renewTimer.Reset(interval)
		case errors.Is(err, ErrLeaseLost):
			se.end(err)
			return
		default:
			// Transient: retry sooner, until the lease would have expired.
			lastErr = err
			left := time.Until(localExpiry)
			if left <= 0 {
				se.end(fmt.Errorf("%w: renewal failed until expiry: %w", ErrLeaseLost, lastErr))
				return
			}
			renewTimer.Reset(min(interval/3+time.Millisecond, left))
		}
	}
}
