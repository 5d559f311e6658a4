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

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// The bulkhead-limit-holds scenario: workers on two sidecars of one Redis,
// each over its own connection, run through WithPermit with a limit of 2:
// never more than 2 inside at once, 2 reached, every worker served, no
// fencing token twice; a call that does not wait on a full bulkhead gets
// a BulkheadFullError and does not run.
func TestBulkheadLimitHolds(t *testing.T) {
	scenario(t, "bulkhead-limit-holds")
	scs := redisSidecars(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := "bulkhead/" + rand.Text()
	const limit = 2

	var (
		mu             sync.Mutex
		inside, most   int
		tokens         = map[uint64]bool{}
		errOverLimit   error
		workers, calls = 6, 4
	)
	work := func(ctx context.Context, p resilience.Permit) error {
		mu.Lock()
		inside++
		most = max(most, inside)
		if inside > limit && errOverLimit == nil {
			errOverLimit = fmt.Errorf("%d inside a bulkhead of %d (token %d)", inside, limit, p.FencingToken)
		}
		dup := tokens[p.FencingToken]
		tokens[p.FencingToken] = true
		mu.Unlock()
		time.Sleep(20 * time.Millisecond) // real time: the others queue up meanwhile
		mu.Lock()
		inside--
		mu.Unlock()
		if dup {
			return fmt.Errorf("token %d granted twice", p.FencingToken)
		}
		return ctx.Err()
	}
	errs := make(chan error, workers*calls)
	var wg sync.WaitGroup
	for w := range workers {
		c := v1.NewSemaphoreServiceClient(dial(t, scs[w%2].Addr()))
		wg.Go(func() {
			for range calls {
				errs <- resilience.WithPermit(ctx, c, name, limit, work, resilience.WithWait(time.Minute), resilience.WithOwner(fmt.Sprintf("worker-%d", w)))
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
	if errOverLimit != nil {
		t.Fatal(errOverLimit)
	}
	if most != limit || len(tokens) != workers*calls {
		t.Fatalf("at most %d inside, %d grants; want %d and %d", most, len(tokens), limit, workers*calls)
	}

	// Full: two holders inside, a third that does not wait is refused.
	sem := v1.NewSemaphoreServiceClient(dial(t, scs[0].Addr()))
	held, release := make(chan struct{}), make(chan struct{})
	holders := make(chan error, limit)
	for range limit {
		go func() {
			holders <- resilience.WithPermit(ctx, sem, name, limit, func(context.Context, resilience.Permit) error {
				held <- struct{}{}
				<-release
				return nil
			})
		}()
		<-held
	}
	ran := false
	err := resilience.WithPermit(ctx, sem, name, limit, func(context.Context, resilience.Permit) error { ran = true; return nil })
	var full *resilience.BulkheadFullError
	if !errors.Is(err, resilience.ErrBulkheadFull) || !errors.As(err, &full) || full.Held != limit || full.Limit != limit || ran {
		t.Fatalf("WithPermit on a full bulkhead = %v (ran: %v); want a BulkheadFullError with 2 of 2 held", err, ran)
	}
	close(release)
	for range limit {
		if err := <-holders; err != nil {
			t.Fatal(err)
		}
	}
	info, err := sem.GetSemaphore(ctx, &v1.GetSemaphoreRequest{Name: name})
	if err != nil || info.GetHeld() != 0 {
		t.Fatalf("after every WithPermit returned: %v, %v; want no permit held", info, err)
	}
}

// WithPermit reports a permit the sidecar took back (max hold) as a lost
// lease, cancelling fn's context with it, and gives back fn's error.
func TestWithPermitLostAndErrors(t *testing.T) {
	sem := v1.NewSemaphoreServiceClient(dial(t, redisSidecars(t, 1)[0].Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := "bulkhead/" + rand.Text()
	err := resilience.WithPermit(ctx, sem, name, 1, func(ctx context.Context, _ resilience.Permit) error {
		<-ctx.Done() // the sidecar ends the session at max_hold
		var lle *resilience.LeaseLostError
		if !errors.As(context.Cause(ctx), &lle) || lle.Reason != "MAX_HOLD" {
			t.Errorf("cause = %v; want a LeaseLostError with reason MAX_HOLD", context.Cause(ctx))
		}
		return nil
	}, resilience.WithTTL(time.Second), resilience.WithMaxHold(300*time.Millisecond))
	if !errors.Is(err, resilience.ErrLeaseLost) {
		t.Fatalf("WithPermit = %v; want ErrLeaseLost", err)
	}
	boom := errors.New("boom")
	if err := resilience.WithPermit(ctx, sem, name, 1, func(context.Context, resilience.Permit) error { return boom }); !errors.Is(err, boom) || errors.Is(err, resilience.ErrLeaseLost) {
		t.Fatalf("WithPermit = %v; want boom only", err)
	}
	err = resilience.WithPermit(ctx, sem, name, 0, func(context.Context, resilience.Permit) error { return nil })
	if !errors.Is(err, resilience.ErrInvalidArgument) {
		t.Fatalf("WithPermit with limit 0 = %v; want ErrInvalidArgument", err)
	}
}

// The bulkhead-permit-lost-by-client-clock scenario: sidecars A and B on
// one Redis; a permit of a bulkhead of 1 held through A with TTL 2s; A is
// frozen (SIGSTOP). The client's own clock ends the permit
// (RENEWAL_OVERDUE) within 2.2s of the last renewal it received and before
// a second client gets the permit through B; WithPermit then returns at
// once, and a WithPermit through the frozen A ends at its bound.
func TestBulkheadPermitLostByClientClock(t *testing.T) {
	scenario(t, "bulkhead-permit-lost-by-client-clock")
	scs := redisSidecars(t, 2)
	a, b := scs[0], scs[1]
	semA := v1.NewSemaphoreServiceClient(dial(t, a.Addr()))
	semB := v1.NewSemaphoreServiceClient(dial(t, b.Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := "bulkhead/" + rand.Text()
	const ttl, callTimeout = 2 * time.Second, 3 * time.Second

	type loss struct {
		at    time.Time
		cause error
	}
	held := make(chan struct{})
	lost := make(chan loss, 1)
	returned := make(chan error, 1)
	go func() {
		returned <- resilience.WithPermit(ctx, semA, name, 1, func(ctx context.Context, _ resilience.Permit) error {
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
		g.err = resilience.WithPermit(ctx, semB, name, 1, func(context.Context, resilience.Permit) error {
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
	t.Logf("permit lost %v after the last renewal received", gap.Round(time.Millisecond))
	if !lle.LastConfirmed.After(grantSeen) {
		t.Errorf("last confirmation %v is not a renewal after the grant (%v)", lle.LastConfirmed, grantSeen)
	}
	if gap > 2200*time.Millisecond {
		t.Errorf("permit lost %v after the last renewal; want within 2.2s (TTL 2s)", gap)
	}
	g := <-acquiredB
	if g.err != nil {
		t.Fatalf("WithPermit through B: %v", g.err)
	}
	t.Logf("B got the permit %v after A's client let go", g.at.Sub(l.at).Round(time.Millisecond))
	if !l.at.Before(g.at) {
		t.Errorf("B acquired the permit at %v, before A's client saw the loss at %v", g.at, l.at)
	}
	var werr error
	select {
	case werr = <-returned:
	case <-time.After(callTimeout):
		t.Fatalf("WithPermit still blocked %v after its callback returned", callTimeout)
	}
	if !errors.As(werr, &lle) || lle.Reason != resilience.LostRenewalOverdue {
		t.Errorf("WithPermit = %v; want the RENEWAL_OVERDUE LeaseLostError", werr)
	}
	err := returnsWithin(t, time.Second, "WithPermit acquire through the frozen A (bound: WithLockCallTimeout)", func() error {
		return resilience.WithPermit(context.Background(), semA, name+"/other", 1, func(context.Context, resilience.Permit) error {
			return errors.New("must not run")
		}, resilience.WithLockCallTimeout(time.Second))
	})
	if !errors.Is(err, resilience.ErrDeadlineExceeded) {
		t.Errorf("WithPermit acquire: %v; want ErrDeadlineExceeded", err)
	}
}
