package linearize

import (
	"testing"
	"time"
)

func claim(fp string, ttl time.Duration) IdemCheck {
	return IdemCheck{Key: "k", Fingerprint: fp, LeaseTTL: ttl}
}
func complete(lease, res string) IdemComplete {
	return IdemComplete{Key: "k", Lease: lease, Result: res}
}
func release(lease string) IdemRelease { return IdemRelease{Key: "k", Lease: lease} }

func TestIdempotencyLinearizable(t *testing.T) {
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(1, 2, 3, claim("fp", time.Second), InProgress{Attempt: 1}).
		add(2, 2, 9, claim("fp", time.Second), Completed{Result: "r"}). // waited for the completion
		add(0, 4, 5, complete("a", "r"), OK{}).
		add(1, 6, 7, claim("fp", time.Second), Completed{Result: "r"}).
		add(0, 8, 9, complete("a", "r"), OK{}). // repeating is harmless
		add(3, 10, 11, claim("other", time.Second), Mismatch{}).
		wantOK(t, Idempotency(slack))
}

func TestIdempotencyDuplicateRun(t *testing.T) {
	newWritten().
		add(0, 0, 1, claim("fp", 30*time.Second), Started{Lease: "a", Attempt: 1}).
		add(1, 2, 3, claim("fp", 30*time.Second), Started{Lease: "b", Attempt: 1}).
		wantIllegal(t, Idempotency(slack), "two owners at once")
	// Concurrent duplicates: still only one may start.
	newWritten().
		add(0, 0, 10, claim("fp", 30*time.Second), Started{Lease: "a", Attempt: 1}).
		add(1, 0, 10, claim("fp", 30*time.Second), Started{Lease: "b", Attempt: 1}).
		wantIllegal(t, Idempotency(slack))
	// Starting again after a completion runs it twice.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(0, 2, 3, complete("a", "r"), OK{}).
		add(1, 4, 5, claim("fp", time.Second), Started{Lease: "b", Attempt: 1}).
		wantIllegal(t, Idempotency(slack), "STARTED, but the key is completed")
}

func TestIdempotencyResults(t *testing.T) {
	// A duplicate sees another result than the recorded one.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(0, 2, 3, complete("a", "r"), OK{}).
		add(1, 4, 5, claim("fp", time.Second), Completed{Result: "x"}).
		wantIllegal(t, Idempotency(slack), `the recorded result is "r"`)
	// A duplicate is told IN_PROGRESS after the completion responded.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(0, 2, 3, complete("a", "r"), OK{}).
		add(1, 4, 5, claim("fp", time.Second), InProgress{Attempt: 1}).
		wantIllegal(t, Idempotency(slack), "IN_PROGRESS, but the key is completed")
	// COMPLETED before anyone completed.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(1, 2, 3, claim("fp", time.Second), Completed{Result: "r"}).
		add(0, 4, 5, complete("a", "r"), OK{}).
		wantIllegal(t, Idempotency(slack))
	// A completion by a lease that does not own the key.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(1, 2, 3, complete("b", "r"), OK{}).
		wantIllegal(t, Idempotency(slack), "completed with lease b")
	// LEASE_LOST for the owner.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(0, 2, 3, complete("a", "r"), LeaseLost{}).
		wantIllegal(t, Idempotency(slack), "LEASE_LOST for lease a")
	// A mismatch for the record's own fingerprint.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(1, 2, 3, claim("fp", time.Second), Mismatch{}).
		wantIllegal(t, Idempotency(slack), "IDEMPOTENCY_KEY_MISMATCH")
}

func TestIdempotencyTakeoverAndRelease(t *testing.T) {
	takeover := func(bCall int64, attempt int) *written {
		return newWritten().
			add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
			add(0, 10, 11, IdemCheckpoint{Key: "k", Lease: "a"}, OK{}). // lease now ends in [1010, 1011]
			add(1, bCall, bCall+1, claim("fp", time.Second), Started{Lease: "b", Attempt: attempt}).
			add(0, 2000, 2001, complete("a", "late"), LeaseLost{}).
			add(1, 2002, 2003, complete("b", "r"), OK{}).
			add(2, 2004, 2005, claim("fp", time.Second), Completed{Result: "r"})
	}
	takeover(1500, 2).wantOK(t, Idempotency(slack))
	takeover(1500, 1).wantIllegal(t, Idempotency(slack), "STARTED attempt 1, want 2")
	takeover(900, 2).wantIllegal(t, Idempotency(slack), "two owners at once") // the checkpoint extended it
	// A release deletes the record: the next caller starts afresh.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(0, 2, 3, release("a"), OK{}).
		add(1, 4, 5, claim("fp", time.Second), Started{Lease: "b", Attempt: 1}).
		add(0, 6, 7, release("a"), LeaseLost{}).
		wantOK(t, Idempotency(slack))
}

func TestIdempotencyUnknownOutcomes(t *testing.T) {
	// A claim that failed may have started the key for a while, until the
	// sidecar gave it back.
	newWritten().
		add(0, 0, inf, claim("fp", time.Second), nil).
		add(1, 1, 2, claim("fp", time.Second), InProgress{Attempt: 1}).
		add(2, 3, 4, claim("fp", time.Second), Started{Lease: "c", Attempt: 1}).
		wantOK(t, Idempotency(slack))
	newWritten().
		add(1, 1, 2, claim("fp", time.Second), InProgress{Attempt: 1}).
		wantIllegal(t, Idempotency(slack), "IN_PROGRESS attempt 1, but the key has no record")
	// Each claim of unknown outcome may have started and let expire one
	// attempt.
	attempts := func(attempt int) *written {
		return newWritten().
			add(0, 0, inf, claim("fp", time.Second), nil).
			add(1, 3000, 3001, claim("fp", time.Second), Started{Lease: "b", Attempt: attempt})
	}
	attempts(1).wantOK(t, Idempotency(slack))
	attempts(2).wantOK(t, Idempotency(slack))
	attempts(3).wantIllegal(t, Idempotency(slack), "STARTED attempt 3, want 1")
	// A lease can be lost to a claim of unknown outcome once it may have
	// expired, and not before.
	lostTo := func(at int64) *written {
		return newWritten().
			add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
			add(1, 2, inf, claim("fp", time.Second), nil).
			add(0, at, at+1, complete("a", "r"), LeaseLost{}).
			add(2, at+2, at+3, claim("fp", time.Second), InProgress{Attempt: 2})
	}
	lostTo(1500).wantOK(t, Idempotency(slack))
	lostTo(500).wantIllegal(t, Idempotency(slack), "LEASE_LOST for lease a")
	// The owner's release that failed may have deleted the record.
	newWritten().
		add(0, 0, 1, claim("fp", time.Hour), Started{Lease: "a", Attempt: 1}).
		add(0, 2, inf, release("a"), nil).
		add(1, 3, 4, claim("fp", time.Hour), Started{Lease: "b", Attempt: 1}).
		wantOK(t, Idempotency(slack))
	// A completion of unknown outcome may have recorded its result, and
	// its retry then succeeds.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(0, 2, inf, complete("a", "r"), nil).
		add(1, 3, 4, claim("fp", time.Second), Completed{Result: "r"}).
		add(0, 5, 6, complete("a", "r"), OK{}).
		wantOK(t, Idempotency(slack))
	// ... but not another result than its own.
	newWritten().
		add(0, 0, 1, claim("fp", time.Second), Started{Lease: "a", Attempt: 1}).
		add(0, 2, inf, complete("a", "r"), nil).
		add(1, 3, 4, claim("fp", time.Second), Completed{Result: "s"}).
		wantIllegal(t, Idempotency(slack))
}
