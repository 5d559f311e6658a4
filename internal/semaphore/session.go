package semaphore

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
	// MaxHold bounds how long the session may keep the permit; 0: no bound.
	MaxHold time.Duration
}

// Session keeps one permit alive: a goroutine of its own renews it about
// every TTL/3 until Release is called, the permit is lost, MaxHold elapses
// or the Service closes. Done is closed when the session ended by itself;
// Err then says why (ErrLeaseLost, possibly wrapping a store error, or
// ErrMaxHold).
type Session struct {
	svc     *Service
	ttl     time.Duration
	maxHold time.Duration
	renewed chan time.Time
	done    chan struct{}
	stop    chan struct{} // closed to stop the renewal goroutine
	exited  chan struct{} // closed when it returned

	mu     sync.Mutex
	permit Permit
	err    error
	ended  bool // released or known lost: nothing left to give back

	stopOnce    sync.Once
	releaseOnce sync.Once
	releaseErr  error
}

// Hold acquires a permit like Acquire and, when granted, starts a session
// that keeps it alive; otherwise it returns a nil session and the Result.
// The caller must Release a returned session. After Close it fails with
// ErrShutdown.
func (s *Service) Hold(ctx context.Context, name string, opts HoldOptions) (*Session, Result, error) {
	r, err := s.Acquire(ctx, name, opts.AcquireOptions)
	if err != nil || !r.Acquired {
		return nil, r, err
	}
	se := &Session{svc: s, ttl: opts.TTL, maxHold: opts.MaxHold, permit: r.Permit,
		renewed: make(chan time.Time, 1), done: make(chan struct{}), stop: make(chan struct{}), exited: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.handBack.GiveBack(name, r.Permit.ID, opts.TTL, nil)
		return nil, Result{}, ErrShutdown
	}
	s.sessions[se] = struct{}{}
	s.mu.Unlock()
	go se.renewLoop(time.Now())
	return se, r, nil
}

// Permit returns the permit with its latest expiry.
func (se *Session) Permit() Permit {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.permit
}

// Renewed delivers the new expiry after each renewal (only the latest is
// kept if the reader is slow).
func (se *Session) Renewed() <-chan time.Time { return se.renewed }

// Done is closed when the session ended by itself.
func (se *Session) Done() <-chan struct{} { return se.done }

// Err reports why the session ended by itself; nil while it runs.
func (se *Session) Err() error {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.err
}

// renewLoop renews the permit until stopped, lost or past max hold. The
// local expiry (start + ttl after each renewal) lags the store's by at most
// a round trip; it only bounds how long a failing renewal is retried.
func (se *Session) renewLoop(start time.Time) {
	defer close(se.exited)
	interval := max(se.ttl/3, 10*time.Millisecond)
	localExpiry := start.Add(se.ttl)
	var maxHold <-chan time.Time
	if se.maxHold > 0 {
		t := time.NewTimer(se.maxHold)
		defer t.Stop()
		maxHold = t.C
	}
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		select {
		case <-se.stop:
			return
		case <-maxHold:
			se.finish(ErrMaxHold, true)
			return
		case <-timer.C:
		}
		p := se.Permit()
		at := time.Now()
		ctx, cancel := context.WithDeadline(context.Background(), localExpiry)
		exp, err := se.svc.store.Renew(ctx, p.Name, p.ID, se.ttl)
		cancel()
		switch {
		case err == nil:
			localExpiry = at.Add(se.ttl)
			se.mu.Lock()
			se.permit.ExpireTime = exp
			se.mu.Unlock()
			select { // keep only the latest expiry
			case <-se.renewed:
			default:
			}
			se.renewed <- exp
			timer.Reset(interval)
		case errors.Is(err, ErrLeaseLost):
			se.finish(err, false)
			return
		default:
			left := time.Until(localExpiry)
			if left <= 0 {
				se.finish(fmt.Errorf("%w: renewal failed until expiry: %w", ErrLeaseLost, err), false)
				return
			}
			timer.Reset(min(interval/3+time.Millisecond, left))
		}
	}
}

// finish ends the session by itself with err, giving the permit back when
// giveBack (max hold); it does nothing after Release.
func (se *Session) finish(err error, giveBack bool) {
	se.mu.Lock()
	if se.ended {
		se.mu.Unlock()
		return
	}
	se.err, se.ended = err, true
	p := se.permit
	se.mu.Unlock()
	if giveBack {
		se.svc.handBack.GiveBack(p.Name, p.ID, se.ttl, nil)
	}
	close(se.done)
}

// stopRenewal stops the renewal goroutine and waits for it.
func (se *Session) stopRenewal() {
	se.stopOnce.Do(func() { close(se.stop) })
	<-se.exited
}

// Release stops renewal and gives the permit back. It returns ErrLeaseLost
// if the permit had already been lost, and the store's error if the
// release could not be confirmed (the permit is then given back in the
// background, or expires by its TTL). It is idempotent and bounded by ctx.
func (se *Session) Release(ctx context.Context) error {
	se.releaseOnce.Do(func() {
		se.stopRenewal()
		se.svc.mu.Lock()
		delete(se.svc.sessions, se)
		se.svc.mu.Unlock()
		se.mu.Lock()
		ended, p, cause := se.ended, se.permit, se.err
		se.ended = true
		se.mu.Unlock()
		if ended {
			if cause != nil && !errors.Is(cause, ErrMaxHold) {
				se.releaseErr = cause
			}
			return
		}
		se.releaseErr = se.svc.store.Release(ctx, p.Name, p.ID)
		if se.releaseErr != nil && !errors.Is(se.releaseErr, ErrLeaseLost) {
			se.svc.handBack.GiveBack(p.Name, p.ID, se.ttl, se.releaseErr)
		}
	})
	return se.releaseErr
}
