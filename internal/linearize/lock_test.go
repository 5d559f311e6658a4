package linearize

import (
	"testing"
	"time"
)

const slack = 2 * time.Millisecond

func acq(ttl time.Duration) LockAcquire { return LockAcquire{Key: "k", TTL: ttl} }
func rel(lease string) LockRelease      { return LockRelease{Key: "k", Lease: lease} }
func renew(lease string, ttl time.Duration) LockRenew {
	return LockRenew{Key: "k", Lease: lease, TTL: ttl}
}
func granted(lease string, token uint64) Granted { return Granted{Lease: lease, Token: token} }

func TestLockLinearizable(t *testing.T) {
	// A holds; B waits and gets the lock after A's release, with a higher
	// token; C's try in between is refused naming A.
	newWritten().
		add(0, 0, 2, acq(time.Second), granted("a", 10)).
		add(1, 1, 8, acq(time.Second), granted("b", 11)).
		add(2, 3, 4, acq(time.Second), NotGranted{HolderToken: 10}).
		add(0, 5, 6, rel("a"), OK{}).
		add(1, 9, 10, rel("b"), OK{}).
		add(2, 11, 12, acq(time.Second), NotGranted{}). // free, kept for a waiter
		wantOK(t, Locks(slack))
}

func TestLockOrderFromTokens(t *testing.T) {
	// Both grants overlap in time; the tokens say B came first, so A can
	// only have been granted after B's release.
	build := func(aReturns int64) *written {
		return newWritten().
			add(0, 0, aReturns, acq(time.Second), granted("a", 11)).
			add(1, 0, 10, acq(time.Second), granted("b", 10)).
			add(1, 11, 12, rel("b"), OK{}).
			add(0, 30, 31, rel("a"), OK{})
	}
	build(20).wantOK(t, Locks(slack))
	// A answered before B released: both held the lock (or, placed
	// first, its token is above B's).
	build(10).wantIllegal(t, Locks(slack))
}

func TestLockDoubleGrant(t *testing.T) {
	newWritten().
		add(0, 0, 1, acq(time.Second), granted("a", 10)).
		add(1, 2, 3, acq(time.Second), granted("b", 11)).
		add(0, 4, 5, rel("a"), OK{}).
		wantIllegal(t, Locks(slack), "two holders at once", `key "k"`)
}

func TestLockTokenBackwards(t *testing.T) {
	newWritten().
		add(0, 0, 1, acq(time.Second), granted("a", 10)).
		add(0, 2, 3, rel("a"), OK{}).
		add(1, 4, 5, acq(time.Second), granted("b", 9)).
		wantIllegal(t, Locks(slack), "granted a token 10", "the grant of token 9 must come first",
			"which the order of the model puts after this call, invoked after 0.001000s:\n    [client 1] 0.004000s..0.005000s acquire(ttl 1s) -> granted b token 9")
}

func TestLockTokenRepeated(t *testing.T) {
	newWritten().
		add(0, 0, 1, acq(time.Second), granted("a", 10)).
		add(0, 2, 3, rel("a"), OK{}).
		add(1, 4, 5, acq(time.Second), granted("b", 10)).
		wantIllegal(t, Locks(slack), "token 10 is not above 10")
}

func TestLockExpiry(t *testing.T) {
	// A's lease (100ms, granted in [0, 1]) expires in [100, 101]: B may
	// take the lock from 98 (the slack) on, and A's late release is
	// LEASE_LOST.
	build := func(bCall, bRet int64) *written {
		return newWritten().
			add(0, 0, 1, acq(100*time.Millisecond), granted("a", 10)).
			add(1, bCall, bRet, acq(time.Second), granted("b", 11)).
			add(0, 200, 201, rel("a"), LeaseLost{})
	}
	build(150, 151).wantOK(t, Locks(slack))
	build(60, 99).wantOK(t, Locks(slack)) // a waiter woken by the expiry
	build(50, 51).wantIllegal(t, Locks(slack), "two holders at once", "expiring in [0.100000s, 0.101000s]")

	// A release that succeeds after the lease expired is wrong.
	newWritten().
		add(0, 0, 1, acq(100*time.Millisecond), granted("a", 10)).
		add(0, 300, 301, rel("a"), OK{}).
		wantIllegal(t, Locks(slack), "expired by 0.101000s")
	// LEASE_LOST before the lease can have expired: the store forgot it.
	newWritten().
		add(0, 0, 1, acq(time.Second), granted("a", 10)).
		add(0, 10, 11, rel("a"), LeaseLost{}).
		wantIllegal(t, Locks(slack), "cannot have expired before 1.000000s")
	// LEASE_LOST for a lease that never held the lock is right.
	newWritten().
		add(0, 0, 1, acq(time.Second), granted("a", 10)).
		add(1, 10, 11, rel("x"), LeaseLost{}).
		add(0, 12, 13, rel("a"), OK{}).
		wantOK(t, Locks(slack))
}

func TestLockRenew(t *testing.T) {
	build := func(bCall int64) *written {
		return newWritten().
			add(0, 0, 1, acq(100*time.Millisecond), granted("a", 10)).
			add(0, 50, 51, renew("a", 100*time.Millisecond), OK{}).
			add(1, bCall, bCall+1, acq(time.Second), granted("b", 11))
	}
	build(200).wantOK(t, Locks(slack))
	// Renewed at 50 for 100ms: held until at least 150.
	build(120).wantIllegal(t, Locks(slack), "two holders at once")
	// Renewing an expired lease must fail...
	newWritten().
		add(0, 0, 1, acq(100*time.Millisecond), granted("a", 10)).
		add(0, 300, 301, renew("a", time.Second), OK{}).
		wantIllegal(t, Locks(slack), "renewed a lease that expired")
	// ... and does, after which it cannot be released either.
	newWritten().
		add(0, 0, 1, acq(100*time.Millisecond), granted("a", 10)).
		add(0, 300, 301, renew("a", time.Second), LeaseLost{}).
		add(0, 302, 303, rel("a"), LeaseLost{}).
		wantOK(t, Locks(slack))
}

func TestLockNotGrantedNamesTheHolder(t *testing.T) {
	// Naming a holder while the lock is free, or the wrong one, or one
	// whose lease is over, is wrong.
	newWritten().
		add(0, 0, 1, acq(time.Second), NotGranted{HolderToken: 7}).
		wantIllegal(t, Locks(slack), "names a holder with token 7, but the lock is free")
	newWritten().
		add(0, 0, 1, acq(time.Second), granted("a", 10)).
		add(1, 2, 3, acq(time.Second), NotGranted{HolderToken: 9}).
		wantIllegal(t, Locks(slack), "names a holder with token 9")
	newWritten().
		add(0, 0, 1, acq(100*time.Millisecond), granted("a", 10)).
		add(1, 200, 201, acq(time.Second), NotGranted{HolderToken: 10}).
		wantIllegal(t, Locks(slack), "whose lease expired by 0.101000s")
}

func TestLockUnknownOutcomes(t *testing.T) {
	// An acquisition that failed may have held the lock for a while (a
	// ghost) until the sidecar gave it back: B's refusal names it.
	newWritten().
		add(0, 0, inf, acq(time.Second), nil).
		add(1, 2, 3, acq(time.Second), NotGranted{HolderToken: 77}).
		add(2, 4, 5, acq(time.Second), granted("c", 80)).
		wantOK(t, Locks(slack))
	// Without it, the refusal is wrong.
	newWritten().
		add(1, 2, 3, acq(time.Second), NotGranted{HolderToken: 77}).
		add(2, 4, 5, acq(time.Second), granted("c", 80)).
		wantIllegal(t, Locks(slack), "but the lock is free")
	// A ghost cannot take a live lease over before it expires.
	newWritten().
		add(0, 0, 1, acq(time.Second), granted("a", 10)).
		add(1, 2, inf, acq(time.Second), nil).
		add(2, 3, 4, acq(time.Second), NotGranted{HolderToken: 99}).
		wantIllegal(t, Locks(slack), "not granted, held with token 99", "refused: ")
	// A release of unknown outcome may have freed the lock...
	newWritten().
		add(0, 0, 1, acq(time.Hour), granted("a", 10)).
		add(0, 2, inf, rel("a"), nil).
		add(1, 5, 6, acq(time.Second), granted("b", 11)).
		wantOK(t, Locks(slack))
	// ... but not before it was invoked.
	newWritten().
		add(0, 0, 1, acq(time.Hour), granted("a", 10)).
		add(1, 5, 6, acq(time.Second), granted("b", 11)).
		add(0, 7, inf, rel("a"), nil).
		wantIllegal(t, Locks(slack), "two holders at once")
	// A lease nobody learned is granted after every grant before.
	newWritten().
		add(0, 0, inf, acq(time.Second), nil).
		add(1, 1, 2, acq(time.Second), granted("b", 50)).
		add(1, 3, 4, rel("b"), OK{}).
		add(2, 5, 6, acq(time.Second), NotGranted{HolderToken: 40}).
		wantIllegal(t, Locks(slack), "names a holder with token 40, not above 50")
	// A release that failed and was retried: the lock may have been free
	// since the first try.
	newWritten().
		add(0, 0, 1, acq(time.Hour), granted("a", 10)).
		add(0, 2, inf, rel("a"), nil).
		add(1, 3, 4, acq(time.Second), granted("b", 11)).
		add(0, 5, 6, rel("a"), LeaseLost{}).
		wantOK(t, Locks(slack))
	// A renewal that failed may have extended the lease.
	newWritten().
		add(0, 0, 1, acq(100*time.Millisecond), granted("a", 10)).
		add(0, 50, inf, renew("a", time.Hour), nil).
		add(0, 500, 501, rel("a"), OK{}).
		wantOK(t, Locks(slack))
	// A refused call changes nothing.
	newWritten().
		add(0, 0, 1, acq(time.Hour), granted("a", 10)).
		add(0, 2, 3, rel("a"), Refused{Err: "INVALID_ARGUMENT"}).
		add(1, 5, 6, acq(time.Second), granted("b", 11)).
		wantIllegal(t, Locks(slack), "two holders at once")
}
