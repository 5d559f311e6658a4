package linearize

import "testing"

func next(n uint64) LamportNext        { return LamportNext{Clock: "c", Count: n} }
func observe(ts uint64) LamportObserve { return LamportObserve{Clock: "c", Timestamp: ts} }
func values(first, last uint64) Values { return Values{First: first, Last: last} }
func get() LamportGet                  { return LamportGet{Clock: "c"} }

func TestLamportLinearizable(t *testing.T) {
	newWritten().
		add(0, 0, 5, next(3), values(4, 6)). // concurrent with B, which came first
		add(1, 1, 3, next(3), values(1, 3)).
		add(2, 6, 7, get(), Value{V: 6}).
		add(3, 8, 9, observe(10), Value{V: 11}).
		add(4, 8, 9, observe(2), Value{V: 12}). // max(11, 2) + 1
		add(0, 10, 11, next(1), values(13, 13)).
		add(1, 12, 13, next(2), values(14, 15)).
		wantOK(t, Lamport())
	// The service hands out the next values: a gap is refused.
	newWritten().
		add(0, 0, 1, next(2), values(1, 2)).
		add(1, 2, 3, next(2), values(5, 6)).
		wantIllegal(t, Lamport(), "5..6 does not follow the clock is 2")
}

func TestLamportDuplicate(t *testing.T) {
	newWritten().
		add(0, 0, 5, next(2), values(1, 2)).
		add(1, 1, 6, next(2), values(2, 3)).
		wantIllegal(t, Lamport(), "a value handed out again, or going backwards")
}

func TestLamportBackwards(t *testing.T) {
	// Unique, but B started after A ended and got a lower value.
	newWritten().
		add(0, 0, 1, next(1), values(2, 2)).
		add(1, 2, 3, next(1), values(1, 1)).
		wantIllegal(t, Lamport(), "2..2 does not follow the clock is 0")
	newWritten().
		add(0, 0, 1, next(2), values(1, 2)).
		add(1, 2, 3, next(1), values(1, 1)).
		wantIllegal(t, Lamport(), "1..1 is not above the clock is 2")
	newWritten().
		add(0, 0, 1, next(5), values(1, 5)).
		add(1, 2, 3, get(), Value{V: 4}).
		wantIllegal(t, Lamport(), "read 4, but the clock is 5")
}

func TestLamportObserve(t *testing.T) {
	newWritten().
		add(0, 0, 1, next(5), values(1, 5)).
		add(1, 2, 3, observe(3), Value{V: 3}).
		wantIllegal(t, Lamport(), "3 is not above the observed 3")
	newWritten().
		add(0, 0, 1, next(5), values(1, 5)).
		add(1, 2, 3, observe(3), Value{V: 5}).
		wantIllegal(t, Lamport(), "5 is not max(clock, 3) + 1")
	newWritten().
		add(0, 0, 1, next(5), values(1, 5)).
		add(1, 2, 3, observe(3), Value{V: 7}).
		wantIllegal(t, Lamport(), "7 is not max(clock, 3) + 1")
	newWritten().
		add(0, 0, 1, next(5), values(1, 5)).
		add(1, 2, 3, observe(3), Value{V: 6}).
		wantOK(t, Lamport())
}

func TestLamportBlockSize(t *testing.T) {
	newWritten().
		add(0, 0, 1, next(3), values(1, 2)).
		wantIllegal(t, Lamport(), "1..2 is not a block of 3")
}

func TestLamportUnknownOutcomes(t *testing.T) {
	// A NextLamport that failed may have consumed its values.
	newWritten().
		add(0, 0, inf, next(5), nil).
		add(1, 1, 2, get(), Value{V: 5}).
		add(2, 3, 4, next(1), values(6, 6)).
		wantOK(t, Lamport())
	newWritten().
		add(1, 1, 2, get(), Value{V: 5}).
		wantIllegal(t, Lamport(), "read 5, but the clock is 0")
	// An ObserveLamport that failed may have moved the clock...
	newWritten().
		add(0, 0, 1, next(1), values(1, 1)).
		add(0, 2, inf, observe(100), nil).
		add(1, 3, 4, observe(50), Value{V: 102}).
		wantOK(t, Lamport())
	// Skipping the values of unknown calls, not more.
	skip := func(first uint64) *written {
		return newWritten().
			add(0, 0, 1, next(1), values(1, 1)).
			add(1, 2, inf, next(2), nil).
			add(0, 3, 4, next(1), values(first, first))
	}
	skip(2).wantOK(t, Lamport())
	skip(4).wantOK(t, Lamport())
	skip(5).wantIllegal(t, Lamport(), "5..5 does not follow the clock is 1, or up to 2 more")
	newWritten().
		add(0, 0, 1, next(1), values(1, 1)).
		add(1, 2, inf, next(2), nil).
		add(0, 3, 4, get(), Value{V: 2}).
		add(0, 5, 6, next(1), values(4, 4)). // the other value came later
		add(0, 7, 8, next(1), values(6, 6)).
		wantIllegal(t, Lamport(), "6..6 does not follow the clock is 4")
	// ... but never backwards, and never after a read showed it did not.
	newWritten().
		add(0, 0, 1, next(1), values(1, 1)).
		add(0, 2, inf, observe(100), nil).
		add(1, 3, 4, next(1), values(1, 1)).
		wantIllegal(t, Lamport())
}
