package resilience_test

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/testkit"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// The explicit handle: Lock gives a fencing token and Locked is true;
// Extend moves the local deadline; another handle is told who holds the
// lock; Unlock frees it (Locked false, token 0) for the next holder, whose
// token is greater.
func TestMutexExplicitHandle(t *testing.T) {
	scenario(t, "lock-explicit-handle")
	locks := v1.NewLockServiceClient(dial(t, redisSidecars(t, 1)[0].Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key := "handle/" + rand.Text()

	m := resilience.NewMutex(locks, key, resilience.WithTTL(5*time.Second), resilience.WithOwner("handle-1"))
	if m.Locked() || m.FencingToken() != 0 || !m.Until().IsZero() || m.Key() != key {
		t.Fatalf("before Lock: locked %v, token %d, until %v, key %q", m.Locked(), m.FencingToken(), m.Until(), m.Key())
	}
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	token := m.FencingToken()
	info, err := locks.GetLock(ctx, &v1.GetLockRequest{Key: key})
	if err != nil || !m.Locked() || token == 0 || !info.GetHeld() || info.GetHolder().GetFencingToken() != token || info.GetHolder().GetOwner() != "handle-1" {
		t.Fatalf("after Lock: locked %v, token %d; sidecar says %v, %v", m.Locked(), token, info, err)
	}

	until := m.Until()
	time.Sleep(10 * time.Millisecond) // real time: so that the extended deadline is later
	if err := m.Extend(ctx); err != nil {
		t.Fatal(err)
	}
	if !m.Until().After(until) || !m.Locked() || m.FencingToken() != token {
		t.Fatalf("after Extend: until %v (was %v), locked %v, token %d", m.Until(), until, m.Locked(), m.FencingToken())
	}

	other := resilience.NewMutex(locks, key, resilience.WithOwner("handle-2"))
	var na *resilience.NotAcquiredError
	if err := other.Lock(ctx); !errors.As(err, &na) || na.Holder != "handle-1" || na.Token != token {
		t.Fatalf("second handle: %v; want not acquired, held by handle-1 with token %d", err, token)
	}

	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if m.Locked() || m.FencingToken() != 0 {
		t.Fatalf("after Unlock: locked %v, token %d", m.Locked(), m.FencingToken())
	}
	if info, err := locks.GetLock(ctx, &v1.GetLockRequest{Key: key}); err != nil || info.GetHeld() {
		t.Fatalf("after Unlock the sidecar says %v, %v", info, err)
	}
	if err := m.Unlock(ctx); !errors.Is(err, resilience.ErrNotLocked) {
		t.Fatalf("second Unlock: %v; want ErrNotLocked", err)
	}
	if err := m.Extend(ctx); !errors.Is(err, resilience.ErrNotLocked) {
		t.Fatalf("Extend after Unlock: %v; want ErrNotLocked", err)
	}
	if err := other.Lock(ctx); err != nil || other.FencingToken() <= token {
		t.Fatalf("next holder: %v, token %d after %d", err, other.FencingToken(), token)
	}
	if err := other.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// A Mutex not extended in time is not Locked once its local deadline
// (TTL minus 100ms here) passes; Extend then reports RENEWAL_OVERDUE
// without asking the sidecar. An Unlock after someone else took
// the expired lock reports LEASE_LOST: the critical section was not
// protected to the end.
func TestMutexNotExtendedIsLost(t *testing.T) {
	locks := v1.NewLockServiceClient(dial(t, redisSidecars(t, 1)[0].Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key := "handle/" + rand.Text()
	const ttl = 500 * time.Millisecond

	m := resilience.NewMutex(locks, key, resilience.WithTTL(ttl))
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if got := time.Until(m.Until()); got > ttl-100*time.Millisecond {
		t.Fatalf("local deadline %v away; want at most TTL - 100ms", got)
	}
	testkit.Eventually(t, 10*time.Second, "the Mutex to count itself unlocked", func() bool { return !m.Locked() })
	var lle *resilience.LeaseLostError
	if err := m.Extend(ctx); !errors.As(err, &lle) || lle.Reason != resilience.LostRenewalOverdue || !errors.Is(err, resilience.ErrLeaseLost) {
		t.Fatalf("Extend after the local deadline: %v; want RENEWAL_OVERDUE", err)
	}

	next := resilience.NewMutex(locks, key, resilience.WithWait(10*time.Second))
	if err := next.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Unlock(ctx); !errors.As(err, &lle) || lle.Reason != resilience.ReasonLeaseLost {
		t.Fatalf("Unlock of the lost lease: %v; want LEASE_LOST", err)
	}
	if !next.Locked() {
		t.Fatal("the failed Unlock touched the next holder's lock")
	}
	if err := next.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}
