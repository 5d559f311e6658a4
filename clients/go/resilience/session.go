package resilience

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// errAcquireBound is the cause that ends a session whose acquire was not
// answered within WithLock's bound.
var errAcquireBound = errors.New("acquire not answered in time")

// WithLock runs fn while holding key through a HoldLock session: the
// sidecar renews the lease every TTL/3, and fn's context is cancelled with
// a *LeaseLostError (errors.Is ErrLeaseLost; context.Cause says which) the
// moment the lease is lost. The client does not wait to be told: after
// the grant and after each renewal confirmation it receives, the lease
// has a local deadline of TTL minus max(TTL/10, 100ms) on this process's
// clock, and when that passes without a newer confirmation the lease is
// lost with reason RENEWAL_OVERDUE, before the lock expires in the store
// and someone else can take it (a frozen or partitioned sidecar says
// nothing). The sidecar also releases the lock if this process dies.
//
// WithLock never hangs. Acquiring is bounded by ctx's deadline or, when
// ctx has none, by the WithWait time plus WithLockCallTimeout: then it
// returns an error matching ErrDeadlineExceeded. After fn returns, the
// release waits at most until the lease's local deadline or
// WithLockCallTimeout, whichever comes first; if the sidecar has not
// confirmed it by then, WithLock returns, with an error matching
// ErrReleaseUnconfirmed (the lock expires on its own).
//
// It returns a *NotAcquiredError (errors.Is ErrNotAcquired) when the wait
// ended without the lock, fn's error otherwise, and a *LeaseLostError
// (joined with fn's error, if any) when the lease was lost while fn ran,
// even if fn returned nil: the critical section may have run without
// exclusion.
func WithLock(ctx context.Context, c v1.LockServiceClient, key string, fn func(ctx context.Context, lease Lease) error, opts ...LockOption) error {
	o := newLockOptions(opts)
	s, err := openSession(ctx, c, key, o)
	if err != nil {
		return err
	}
	defer s.close()
	return s.release(fn(s.ctx, s.lease))
}

// session is one HoldLock (WithLock) or HoldPermit (WithPermit) stream.
// Its reader goroutine is the stream's only reader; it ends with the
// stream, which close ends.
type session struct {
	what        string // "lock" or "permit": for messages
	key         string
	ttl         time.Duration
	callTimeout time.Duration
	stream      holdStream
	end         context.CancelCauseFunc // ends the stream
	ctx         context.Context         // fn's
	cancel      context.CancelCauseFunc // cancels fn's context
	lease       Lease
	done        chan struct{} // closed when the reader returns

	mu            sync.Mutex
	lastConfirmed time.Time // the grant's or the last renewal's arrival
	deadline      time.Time // lastConfirmed + leaseLifetime(ttl)
	overdue       *time.Timer
	lost          *LeaseLostError
	releasing     bool // fn returned: the release was asked for
	released      bool // the sidecar confirmed the release
}

// holdStream is the part of a HoldLock or HoldPermit stream a session
// uses once the lease is granted.
type holdStream interface {
	// recv returns the next event of the stream.
	recv() (holdEvent, error)
	// sendRelease asks the sidecar to release the lease.
	sendRelease() error
}

// holdEvent is a session event after the grant.
type holdEvent struct {
	renewed, released, lost bool
	reason, message         string // of lost; reason without "REASON_"
}

// lockStream is a HoldLock stream as a holdStream.
type lockStream struct{ v1.LockService_HoldLockClient }

func (s lockStream) recv() (holdEvent, error) {
	m, err := s.Recv()
	if err != nil {
		return holdEvent{}, err
	}
	l := m.GetLost()
	return holdEvent{
		renewed: m.GetRenewed() != nil, released: m.GetReleased() != nil, lost: l != nil,
		reason: strings.TrimPrefix(l.GetReason().String(), "REASON_"), message: l.GetMessage(),
	}, nil
}

func (s lockStream) sendRelease() error {
	return s.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Release_{Release: &v1.HoldLockRequest_Release{}}})
}

// boundedAcquire runs open (which opens a session's stream and returns its
// first answer) within WithLock's acquire bound: ctx's deadline, the wait
// it is given being cut to fit (waitWithin), or else the WithWait time
// plus WithLockCallTimeout. It returns the first answer, when it arrived,
// and the function that ends the stream; on error the stream is ended.
func boundedAcquire[R any](ctx context.Context, o lockOptions, what string, open func(ctx context.Context, wait time.Duration) (R, error)) (R, time.Time, context.CancelCauseFunc, error) {
	streamCtx, end := context.WithCancelCause(ctx)
	wait := o.wait
	stopBound := func() bool { return true }
	bound := o.wait + o.callTimeout
	if _, ok := ctx.Deadline(); ok {
		wait = waitWithin(ctx, o.wait)
	} else if o.callTimeout > 0 {
		stopBound = time.AfterFunc(bound, func() { end(errAcquireBound) }).Stop
	}
	first, err := open(streamCtx, wait)
	now := time.Now()
	if !stopBound() || context.Cause(streamCtx) == errAcquireBound {
		end(nil)
		return first, now, nil, deadlineError("%s: the sidecar did not answer the acquire within %v", what, bound)
	}
	if err != nil {
		end(nil)
		return first, now, nil, FromError(err)
	}
	return first, now, end, nil
}

// openSession opens a HoldLock stream and acquires key, bounded as
// WithLock says. It returns a running session, or the reason there is none.
func openSession(ctx context.Context, c v1.LockServiceClient, key string, o lockOptions) (*session, error) {
	var stream v1.LockService_HoldLockClient
	first, now, end, err := boundedAcquire(ctx, o, fmt.Sprintf("lock %q", key), func(ctx context.Context, wait time.Duration) (*v1.HoldLockResponse, error) {
		var first *v1.HoldLockResponse
		var err error
		first, stream, err = acquire(ctx, c, &v1.HoldLockRequest_Acquire{
			Key: key, Ttl: optDuration(o.ttl), WaitTimeout: optDuration(wait), Owner: o.owner, MaxHold: optDuration(o.maxHold),
		})
		return first, err
	})
	if err != nil {
		return nil, err
	}
	if na := first.GetNotAcquired(); na != nil {
		end(nil)
		return nil, &NotAcquiredError{Key: key, Holder: na.GetHolder().GetOwner(), Token: na.GetHolder().GetFencingToken()}
	}
	l := first.GetAcquired()
	if l == nil {
		end(nil)
		return nil, fmt.Errorf("resilience: lock %q: unexpected first session event %v", key, first)
	}
	lease := Lease{Key: l.GetKey(), FencingToken: l.GetFencingToken(), ExpireTime: l.GetExpireTime().AsTime(), Owner: l.GetOwner()}
	return startSession(ctx, "lock", lockStream{stream}, end, lease, o, now), nil
}

// startSession starts the session of a lease granted at now (when the
// grant was received) on stream.
func startSession(ctx context.Context, what string, stream holdStream, end context.CancelCauseFunc, lease Lease, o lockOptions, now time.Time) *session {
	s := &session{
		what: what, key: lease.Key, ttl: o.ttl, callTimeout: o.callTimeout, stream: stream, end: end,
		lease: lease, done: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancelCause(ctx)
	s.mu.Lock()
	s.confirmLocked(now)
	s.overdue = time.AfterFunc(leaseLifetime(o.ttl), s.checkOverdue)
	s.mu.Unlock()
	go s.read()
	return s
}

// acquire opens the stream and sends the acquire; it returns the first
// answer.
func acquire(ctx context.Context, c v1.LockServiceClient, a *v1.HoldLockRequest_Acquire) (*v1.HoldLockResponse, v1.LockService_HoldLockClient, error) {
	stream, err := c.HoldLock(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := stream.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: a}}); err != nil {
		return nil, nil, recvErr(stream, err)
	}
	first, err := stream.Recv()
	return first, stream, err
}

// recvErr returns the stream's status when Send failed because the stream
// ended (Send reports only io.EOF then).
func recvErr[T any](stream interface{ Recv() (T, error) }, sendErr error) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return sendErr
}

// read follows the session's events until the stream ends.
func (s *session) read() {
	defer close(s.done)
	for {
		ev, err := s.stream.recv()
		now := time.Now()
		switch {
		case err != nil:
			s.streamEnded(err)
			return
		case ev.renewed:
			s.mu.Lock()
			if s.lost == nil {
				s.confirmLocked(now)
				s.overdue.Reset(leaseLifetime(s.ttl))
			}
			s.mu.Unlock()
		case ev.lost:
			s.lose(ev.reason, ev.message, nil)
			return
		case ev.released:
			s.mu.Lock()
			s.released = true
			s.overdue.Stop()
			s.mu.Unlock()
			return
		}
	}
}

func (s *session) confirmLocked(now time.Time) {
	s.lastConfirmed = now
	s.deadline = now.Add(leaseLifetime(s.ttl))
}

// checkOverdue runs when the local deadline may have passed: it loses the
// lease unless a confirmation moved the deadline meanwhile, or fn has
// returned (then the lease no longer protects anything: the release
// wait is bounded by the deadline instead).
func (s *session) checkOverdue() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.releasing || s.released || time.Now().Before(s.deadline) {
		return
	}
	s.loseLocked(LostRenewalOverdue, fmt.Sprintf("no renewal confirmed for %v (TTL %v): the %s may expire before the sidecar is heard again", leaseLifetime(s.ttl), s.ttl, s.what), nil)
}

// streamEnded handles the end of the stream without released or lost: a
// lost lease while fn runs, an unconfirmed release after.
func (s *session) streamEnded(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.releasing {
		return
	}
	s.loseLocked(LostStreamEnded, "the session's stream ended without a release", FromError(err))
}

func (s *session) lose(reason, msg string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loseLocked(reason, msg, err)
}

func (s *session) loseLocked(reason, msg string, err error) {
	if s.lost != nil {
		return
	}
	s.lost = &LeaseLostError{what: s.what, Key: s.key, Reason: reason, Message: msg, LastConfirmed: s.lastConfirmed, Err: err}
	s.overdue.Stop()
	s.cancel(s.lost)
}

// release ends the session after fn returned fnErr and says how it ended.
func (s *session) release(fnErr error) error {
	s.mu.Lock()
	now := time.Now()
	if !now.Before(s.deadline) { // fn ran past the deadline before the timer fired
		s.loseLocked(LostRenewalOverdue, fmt.Sprintf("no renewal confirmed for %v (TTL %v) when the critical section ended", leaseLifetime(s.ttl), s.ttl), nil)
	}
	s.releasing = true
	lost := s.lost
	wait := s.deadline.Sub(now)
	if s.callTimeout > 0 {
		wait = min(wait, s.callTimeout)
	}
	s.mu.Unlock()
	if lost == nil && wait > 0 {
		// A failed Send ends the stream, which the reader sees.
		_ = s.stream.sendRelease()
		t := time.NewTimer(wait)
		select {
		case <-s.done:
		case <-t.C:
		}
		t.Stop()
	}
	s.close()

	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.lost != nil && fnErr != nil:
		return errors.Join(fnErr, s.lost)
	case s.lost != nil:
		return s.lost
	case !s.released:
		return errors.Join(fnErr, fmt.Errorf("%w: %s %q: no answer from the sidecar within %v", ErrReleaseUnconfirmed, s.what, s.key, wait))
	}
	return fnErr
}

// close ends the stream (the sidecar then releases the lease, if it still
// can), waits for the reader and cancels fn's context.
func (s *session) close() {
	s.end(nil)
	<-s.done
	s.mu.Lock()
	s.overdue.Stop()
	s.mu.Unlock()
	s.cancel(nil)
}
