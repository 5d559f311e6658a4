package resilience_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

func locks(t *testing.T) v1.LockServiceClient {
	t.Helper()
	conn, err := resilience.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return v1.NewLockServiceClient(conn)
}

func TestWithLockCancelsCallbackWhenLeaseIsLost(t *testing.T) {
	c := locks(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key := "client/maxhold-" + t.Name() + time.Now().Format("150405.000000000")
	err := resilience.WithLock(ctx, c, key, func(ctx context.Context, lease resilience.Lease) error {
		<-ctx.Done() // the sidecar ends the session at max_hold
		if !errors.Is(context.Cause(ctx), resilience.ErrLeaseLost) {
			t.Errorf("cause = %v, want ErrLeaseLost", context.Cause(ctx))
		}
		return nil
	}, resilience.WithTTL(time.Second), resilience.WithMaxHold(300*time.Millisecond))
	if !errors.Is(err, resilience.ErrLeaseLost) {
		t.Fatalf("WithLock = %v, want ErrLeaseLost", err)
	}
	// The lock is free again.
	r, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key})
	if err != nil || !r.GetAcquired() {
		t.Fatalf("after lost session: %v %v", r, err)
	}
}

func TestWithLockReleasesAndReturnsCallbackError(t *testing.T) {
	c := locks(t)
	ctx := context.Background()
	boom := errors.New("boom")
	var token uint64
	err := resilience.WithLock(ctx, c, "client/err", func(_ context.Context, l resilience.Lease) error {
		token = l.FencingToken
		return boom
	})
	if !errors.Is(err, boom) || errors.Is(err, resilience.ErrLeaseLost) {
		t.Fatalf("WithLock = %v, want boom only", err)
	}
	info, err := c.GetLock(ctx, &v1.GetLockRequest{Key: "client/err"})
	if err != nil || info.GetHeld() || info.GetLastFencingToken() != token {
		t.Fatalf("after WithLock: %v %v", info, err)
	}
}

func TestTypedErrors(t *testing.T) {
	c := locks(t)
	ctx := context.Background()
	_, err := c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "client/none", LeaseId: "0123456789abcdef0123456789abcdef"})
	if !errors.Is(err, resilience.ErrLeaseLost) {
		t.Fatalf("release of unknown lease = %v, want ErrLeaseLost", err)
	}
	_, err = c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: ""})
	var e *resilience.Error
	if !errors.Is(err, resilience.ErrInvalidArgument) || !errors.As(err, &e) || e.Violations["key"] == "" {
		t.Fatalf("empty key = %v, want ErrInvalidArgument naming key", err)
	}
	err = resilience.WithLock(ctx, c, "", func(context.Context, resilience.Lease) error { return nil })
	if !errors.Is(err, resilience.ErrInvalidArgument) {
		t.Fatalf("WithLock with empty key = %v", err)
	}
}

// WithWait makes WithLock wait for a held lock: it runs fn once the holder
// releases, where a WithLock without it is told at once that the lock is
// held. The sidecar runs on Redis so that the test can see the wait begin:
// a waiting sidecar stands in the key's queue (docs/locks.md), and the
// holder releases only then, so the grant can only come from the wait.
func TestWithLockWithWaitGetsTheLockOnRelease(t *testing.T) {
	rd := testharness.StartRedis(t)
	sc := testharness.StartSidecar(t, testharness.BuildSidecar(t), "--redis-url", rd.URL())
	conn, err := resilience.Dial(resilience.WithAddr(sc.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := v1.NewLockServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const key = "client/wait"
	held, err := c.AcquireLock(ctx, &v1.AcquireLockRequest{Key: key, Ttl: durationpb.New(time.Hour), Owner: "holder"})
	if err != nil || !held.GetAcquired() {
		t.Fatalf("holder: %v %v", held, err)
	}
	noop := func(context.Context, resilience.Lease) error { return nil }
	if err := resilience.WithLock(ctx, c, key, noop); !errors.Is(err, resilience.ErrNotAcquired) {
		t.Fatalf("WithLock without WithWait on a held lock = %v, want ErrNotAcquired", err)
	}

	type result struct {
		lease resilience.Lease
		err   error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.err = resilience.WithLock(ctx, c, key, func(_ context.Context, l resilience.Lease) error {
			r.lease = l
			return nil
		}, resilience.WithWait(time.Minute), resilience.WithOwner("waiter"))
		done <- r
	}()
	// The key's queue, as the sidecar names it (internal/redisx.Key of
	// namespace "default", capability "lock", the key with '/' escaped).
	const queue = "rs:{default/lock/client%2Fwait}:lock:queue"
	testkit.EventuallyNil(t, 30*time.Second, "the waiter in the queue "+queue, func() error {
		n, err := rd.Do(ctx, "ZCARD", queue)
		if err == nil && n != int64(1) {
			err = fmt.Errorf("%v in the queue", n)
		}
		return err
	})
	if _, err := c.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key, LeaseId: held.GetLease().GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.lease.Owner != "waiter" || r.lease.FencingToken <= held.GetLease().GetFencingToken() {
		t.Fatalf("waiter: lease %+v, %v; want the lock after the holder's token %d", r.lease, r.err, held.GetLease().GetFencingToken())
	}
}

// returnsWithin runs f and fails t unless f returns by 1s past bound, the
// deadline f is given: a helper may end when its deadline passes, never
// hang past it. It returns f's error.
func returnsWithin(t *testing.T, bound time.Duration, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- f() }()
	timer := time.NewTimer(bound + time.Second)
	defer timer.Stop()
	select {
	case err := <-done:
		t.Logf("%s returned after %v (deadline %v): %v", what, time.Since(start).Round(time.Millisecond), bound, err)
		return err
	case <-timer.C:
		t.Fatalf("%s still blocked %v after it started, past its deadline %v", what, bound+time.Second, bound)
		return nil
	}
}

// Workers on two sidecars of one Redis, each over its own connection,
// take one lock in turns, half through WithLock and half through a Mutex:
// no two are ever inside at once, and every grant's fencing token is
// greater than the one before.
func TestLockContentionFencing(t *testing.T) {
	scenario(t, "lock-contention-fencing")
	scs := redisSidecars(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	key := "contention/" + rand.Text()

	var (
		mu     sync.Mutex
		inside int
		last   uint64
		grants int
	)
	enter := func(token uint64) error {
		mu.Lock()
		defer mu.Unlock()
		if inside != 0 {
			return fmt.Errorf("token %d entered while another holder was inside", token)
		}
		if token <= last {
			return fmt.Errorf("token %d after %d: not increasing", token, last)
		}
		inside, last, grants = 1, token, grants+1
		return nil
	}
	leave := func() {
		mu.Lock()
		inside = 0
		mu.Unlock()
	}
	hold := func(token uint64) error {
		if err := enter(token); err != nil {
			return err
		}
		time.Sleep(2 * time.Millisecond) // real time: the others queue up meanwhile
		leave()
		return nil
	}

	const workers, rounds = 6, 8
	errs := make(chan error, workers*rounds)
	var wg sync.WaitGroup
	for w := range workers {
		c := v1.NewLockServiceClient(dial(t, scs[w%2].Addr()))
		owner := resilience.WithOwner(fmt.Sprintf("worker-%d", w))
		wait := resilience.WithWait(time.Minute)
		wg.Go(func() {
			for range rounds {
				if w%4 < 2 {
					errs <- resilience.WithLock(ctx, c, key, func(_ context.Context, l resilience.Lease) error {
						return hold(l.FencingToken)
					}, owner, wait)
					continue
				}
				m := resilience.NewMutex(c, key, owner, wait)
				if err := m.Lock(ctx); err != nil {
					errs <- err
					continue
				}
				err := hold(m.FencingToken())
				errs <- errors.Join(err, m.Unlock(ctx))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if grants != workers*rounds {
		t.Fatalf("%d grants, want %d", grants, workers*rounds)
	}
}

// The frozen-sidecar scenario: sidecars A and B on one Redis; a client
// holds a lock through A with TTL 2s, and A is frozen (SIGSTOP). The
// client's own clock ends the lease (RENEWAL_OVERDUE) within 2.2s of the
// last renewal it received and before a second client gets the lock
// through B (which it does once the lease expires in Redis); WithLock
// then returns, and every other helper called through the frozen A
// returns when its deadline passes.
func TestLockFrozenSidecar(t *testing.T) {
	scenario(t, "lock-frozen-sidecar")
	scs := redisSidecars(t, 2)
	a, b := scs[0], scs[1]
	locksA := v1.NewLockServiceClient(dial(t, a.Addr()))
	locksB := v1.NewLockServiceClient(dial(t, b.Addr()))
	// The other helpers go through A on a connection made before the
	// freeze, whose calls have a 1 s default deadline.
	shortA := dial(t, a.Addr(), resilience.WithCallTimeout(time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key := "frozen/" + rand.Text()
	const ttl, callTimeout = 2 * time.Second, 3 * time.Second

	// A Mutex and a WithLock session through A, held before the freeze,
	// to release after it.
	m := resilience.NewMutex(locksA, key+"/mutex", resilience.WithTTL(time.Minute), resilience.WithLockCallTimeout(time.Second))
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	sessionHeld, finish, sessionDone := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		sessionDone <- resilience.WithLock(ctx, locksA, key+"/session", func(context.Context, resilience.Lease) error {
			close(sessionHeld)
			<-finish
			return nil
		}, resilience.WithTTL(time.Minute), resilience.WithLockCallTimeout(time.Second))
	}()
	<-sessionHeld

	type loss struct {
		at    time.Time
		cause error
	}
	held := make(chan struct{})
	lost := make(chan loss, 1)
	returned := make(chan error, 1)
	go func() {
		returned <- resilience.WithLock(ctx, locksA, key, func(ctx context.Context, _ resilience.Lease) error {
			close(held)
			<-ctx.Done()
			lost <- loss{time.Now(), context.Cause(ctx)}
			return nil
		}, resilience.WithTTL(ttl), resilience.WithOwner("A"), resilience.WithLockCallTimeout(callTimeout))
	}()
	<-held
	grantSeen := time.Now()
	time.Sleep(1500 * time.Millisecond) // real time: the sidecar renews (every TTL/3) twice
	a.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { a.Signal(syscall.SIGCONT) })

	type grant struct {
		at  time.Time
		err error
	}
	acquiredB := make(chan grant, 1)
	go func() {
		var g grant
		g.err = resilience.WithLock(ctx, locksB, key, func(context.Context, resilience.Lease) error {
			g.at = time.Now()
			return nil
		}, resilience.WithWait(30*time.Second), resilience.WithOwner("B"))
		acquiredB <- g
	}()

	var l loss
	select {
	case l = <-lost:
	case <-ctx.Done():
		t.Fatal("the callback's context was never cancelled")
	}
	var lle *resilience.LeaseLostError
	if !errors.Is(l.cause, resilience.ErrLeaseLost) || !errors.As(l.cause, &lle) || lle.Reason != resilience.LostRenewalOverdue {
		t.Fatalf("cause %v; want a LeaseLostError with reason RENEWAL_OVERDUE", l.cause)
	}
	gap := l.at.Sub(lle.LastConfirmed)
	t.Logf("lease lost %v after the last renewal received", gap.Round(time.Millisecond))
	if !lle.LastConfirmed.After(grantSeen) {
		t.Errorf("last confirmation %v is not a renewal after the grant (%v)", lle.LastConfirmed, grantSeen)
	}
	if gap > 2200*time.Millisecond {
		t.Errorf("lease lost %v after the last renewal; want within 2.2s (TTL 2s)", gap)
	}
	g := <-acquiredB
	if g.err != nil {
		t.Fatalf("WithLock through B: %v", g.err)
	}
	t.Logf("B got the lock %v after A's client let go", g.at.Sub(l.at).Round(time.Millisecond))
	if !l.at.Before(g.at) {
		t.Errorf("B acquired the lock at %v, before A's client saw the loss at %v", g.at, l.at)
	}

	// WithLock returns once the callback did, without waiting for A: the
	// release wait is bounded by the lease's local deadline, already past.
	var werr error
	select {
	case werr = <-returned:
	case <-time.After(callTimeout):
		t.Fatalf("WithLock still blocked %v after its callback returned", callTimeout)
	}
	if !errors.As(werr, &lle) || lle.Reason != resilience.LostRenewalOverdue {
		t.Errorf("WithLock = %v; want the RENEWAL_OVERDUE LeaseLostError", werr)
	}

	// Every other helper through the frozen A ends at its deadline.
	bg := context.Background()
	err := returnsWithin(t, time.Second, "WithLock acquire (bound: WithLockCallTimeout)", func() error {
		return resilience.WithLock(bg, locksA, key+"/other", func(context.Context, resilience.Lease) error {
			return errors.New("must not run")
		}, resilience.WithLockCallTimeout(time.Second))
	})
	if !errors.Is(err, resilience.ErrDeadlineExceeded) {
		t.Errorf("WithLock acquire: %v; want ErrDeadlineExceeded", err)
	}
	deadline, cancelDeadline := context.WithTimeout(bg, 800*time.Millisecond)
	defer cancelDeadline()
	err = returnsWithin(t, 800*time.Millisecond, "WithLock acquire (bound: ctx)", func() error {
		return resilience.WithLock(deadline, locksA, key+"/other", func(context.Context, resilience.Lease) error {
			return errors.New("must not run")
		}, resilience.WithWait(time.Minute))
	})
	if !errors.Is(err, resilience.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WithLock acquire with a ctx deadline: %v; want ErrDeadlineExceeded", err)
	}
	err = returnsWithin(t, 1500*time.Millisecond, "Mutex.Lock (bound: wait + WithLockCallTimeout)", func() error {
		return resilience.NewMutex(locksA, key+"/other", resilience.WithWait(500*time.Millisecond), resilience.WithLockCallTimeout(time.Second)).Lock(bg)
	})
	if !errors.Is(err, resilience.ErrDeadlineExceeded) {
		t.Errorf("Mutex.Lock: %v; want ErrDeadlineExceeded", err)
	}
	err = returnsWithin(t, time.Second, "Mutex.Extend", func() error { return m.Extend(bg) })
	if !errors.Is(err, resilience.ErrDeadlineExceeded) {
		t.Errorf("Mutex.Extend: %v; want ErrDeadlineExceeded", err)
	}
	err = returnsWithin(t, time.Second, "Mutex.Unlock", func() error { return m.Unlock(bg) })
	if !errors.Is(err, resilience.ErrReleaseUnconfirmed) || !errors.Is(err, resilience.ErrDeadlineExceeded) {
		t.Errorf("Mutex.Unlock: %v; want ErrReleaseUnconfirmed and ErrDeadlineExceeded", err)
	}
	err = returnsWithin(t, time.Second, "WithLock release (bound: WithLockCallTimeout)", func() error {
		close(finish)
		return <-sessionDone
	})
	if !errors.Is(err, resilience.ErrReleaseUnconfirmed) || errors.Is(err, resilience.ErrLeaseLost) {
		t.Errorf("WithLock release: %v; want ErrReleaseUnconfirmed (the lease was not lost while fn ran)", err)
	}

	// Every other helper, bounded by the connection's 1 s call deadline
	// (Subscribe, a stream, by its confirmation timeout); none runs the
	// caller's function.
	mustNotRun := func(context.Context) error { return errors.New("must not run") }
	helpers := []struct {
		name string
		call func() error
	}{
		{"Idempotent", func() error {
			_, err := resilience.Idempotent(bg, v1.NewIdempotencyServiceClient(shortA), key+"/op", "fp", func(context.Context) (resilience.Result, error) {
				return resilience.Result{}, errors.New("must not run")
			}, resilience.WithUnavailableRetries(0))
			return err
		}},
		{"Guard", func() error { return resilience.Guard(bg, v1.NewBreakerServiceClient(shortA), "frozen", mustNotRun) }},
		{"ExecuteCall", func() error {
			_, err := resilience.ExecuteCall(bg, v1.NewBreakerServiceClient(shortA), "none", "GET", "/", nil)
			return err
		}},
		{"StartSaga", func() error {
			_, err := resilience.StartSaga(bg, v1.NewSagaServiceClient(shortA), "frozen-"+rand.Text(), "frozen", time.Minute)
			return err
		}},
		{"LamportClock.Stamp", func() error {
			_, err := resilience.NewLamportClock(v1.NewClockServiceClient(shortA), "frozen").Stamp(bg)
			return err
		}},
		{"Publish", func() error {
			_, _, err := resilience.Publish(bg, v1.NewEventServiceClient(shortA), "go-test.frozen", []byte("x"))
			return err
		}},
		{"Subscribe", func() error {
			return resilience.Subscribe(bg, v1.NewEventServiceClient(shortA), "go-test.frozen", "g", "c",
				func(context.Context, *v1.Event) error { return errors.New("must not run") }, resilience.WithConfirmTimeout(time.Second))
		}},
	}
	for _, h := range helpers {
		if err := returnsWithin(t, time.Second, h.name, h.call); !errors.Is(err, resilience.ErrDeadlineExceeded) {
			t.Errorf("%s through the frozen sidecar: %v; want ErrDeadlineExceeded", h.name, err)
		}
	}
}

// The killed-sidecar scenario: SIGKILL the sidecar mid-hold; the stream
// ends, the callback's context is cancelled with the loss, WithLock
// returns, and a WithLock through the dead sidecar fails as unreachable
// within Dial's connect wait.
func TestLockKilledSidecar(t *testing.T) {
	scenario(t, "lock-killed-sidecar")
	sc := redisSidecars(t, 1)[0]
	locks := v1.NewLockServiceClient(dial(t, sc.Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ttl = 5 * time.Second
	key := "killed/" + rand.Text()

	held := make(chan struct{})
	var cause error
	done := make(chan error, 1)
	go func() {
		done <- resilience.WithLock(ctx, locks, key, func(ctx context.Context, _ resilience.Lease) error {
			close(held)
			<-ctx.Done()
			cause = context.Cause(ctx)
			return nil
		}, resilience.WithTTL(ttl))
	}()
	<-held
	sc.Kill()
	// The stream ends at once; the local deadline (TTL - 10%) is the
	// latest the loss may be signalled.
	var err error
	select {
	case err = <-done:
	case <-time.After(ttl):
		t.Fatalf("WithLock still blocked %v after the sidecar was killed", ttl)
	}
	var lle *resilience.LeaseLostError
	if !errors.As(err, &lle) || !errors.Is(cause, resilience.ErrLeaseLost) {
		t.Fatalf("WithLock = %v, callback's cause %v; want the lease lost", err, cause)
	}
	switch lle.Reason {
	case resilience.LostStreamEnded:
		if !errors.Is(err, resilience.ErrSidecarUnreachable) {
			t.Errorf("STREAM_ENDED: %v; want the stream's error to say the sidecar is unreachable", err)
		}
	case resilience.LostRenewalOverdue:
	default:
		t.Errorf("lost reason %q; want STREAM_ENDED or RENEWAL_OVERDUE", lle.Reason)
	}

	err = returnsWithin(t, resilience.DefaultConnectWait, "WithLock through the killed sidecar", func() error {
		return resilience.WithLock(ctx, locks, key, func(context.Context, resilience.Lease) error {
			return errors.New("must not run")
		})
	})
	if !errors.Is(err, resilience.ErrSidecarUnreachable) {
		t.Fatalf("WithLock through the killed sidecar: %v; want ErrSidecarUnreachable", err)
	}
}
