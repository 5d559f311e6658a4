package clock

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
)

// ULIDs is a generator of ULIDs strictly increasing across all its callers.
// It is safe for concurrent use: calls are serialized by a mutex, the same
// composition as ulid.LockedMonotonicReader, but around the whole
// generation so that the millisecond is chosen under the lock too.
//
// A ULID is 48 bits of milliseconds since the Unix epoch followed by 80
// random bits. Within one millisecond the generator uses oklog/ulid's
// monotonic entropy: the random part of each ULID is the previous one plus a
// random increment. Two rules make the sequence strictly increasing whatever
// the wall clock and the entropy source do:
//
//   - the millisecond is never lower than the last one issued, so a wall
//     clock that steps back keeps the last millisecond (and its monotonic
//     entropy) until it catches up;
//   - when the random part would overflow within a millisecond, or a new
//     ULID is otherwise not above the last (a degenerate entropy source),
//     the generator moves to the next millisecond and draws fresh entropy.
//     It neither waits for the wall clock nor fails: with the default
//     increments, overflow takes about 2^48 ULIDs in one millisecond, so in
//     practice a ULID is never more than a millisecond ahead of the clock.
type ULIDs struct {
	now func() time.Time

	mu      sync.Mutex
	entropy *ulid.MonotonicEntropy
	last    ulid.ULID
	// scratch receives each ULID's random part: a slice handed to the
	// entropy reader escapes, and a field does not cost an allocation per
	// ULID as a local would.
	scratch [10]byte
}

// NewULIDs returns a generator reading time from now (time.Now when nil)
// and randomness from entropy (crypto/rand when nil). entropy need not be
// safe for concurrent use.
func NewULIDs(now func() time.Time, entropy io.Reader) *ULIDs {
	if now == nil {
		now = time.Now
	}
	if entropy == nil {
		entropy = rand.Reader
	}
	return &ULIDs{now: now, entropy: ulid.Monotonic(entropy, 0)}
}

// ErrULIDTime: the millisecond to use is past ulid.MaxTime (year 10889).
var ErrULIDTime = errors.New("clock: ulid time out of range")

// Next returns n ULIDs (n >= 1), strictly increasing and each greater than
// every ULID the generator returned before. It fails only when the entropy
// source fails (its error, wrapped) or the clock is past year 10889
// (ErrULIDTime); nothing is issued then.
func (g *ULIDs) Next(n int) ([]ulid.ULID, error) {
	if n < 1 {
		return nil, fmt.Errorf("clock: ulid: count %d out of range", n)
	}
	wall := max(g.now().UnixMilli(), 0)
	out := make([]ulid.ULID, 0, n)
	g.mu.Lock()
	defer g.mu.Unlock()
	ms := max(uint64(wall), g.last.Time())
	last := g.last
	for len(out) < n {
		if ms > ulid.MaxTime() {
			return nil, ErrULIDTime
		}
		id, err := g.newLocked(ms)
		switch {
		case err == nil && id.Compare(last) > 0:
			out = append(out, id)
			last = id
			continue
		case err != nil && !errors.Is(err, ulid.ErrMonotonicOverflow):
			// Nothing issued: the state stays at g.last. The entropy
			// reader's state for ms may have advanced, which only skips
			// values.
			return nil, fmt.Errorf("clock: ulid: %w", err)
		}
		// Overflow, or not above the last ULID: fresh entropy in the next
		// millisecond.
		ms++
	}
	g.last = last
	return out, nil
}

// newLocked is ulid.New(ms, g.entropy) without its allocation.
func (g *ULIDs) newLocked(ms uint64) (ulid.ULID, error) {
	var id ulid.ULID
	if err := id.SetTime(ms); err != nil {
		return id, err
	}
	if err := g.entropy.MonotonicRead(ms, g.scratch[:]); err != nil {
		return id, err
	}
	copy(id[6:], g.scratch[:])
	return id, nil
}
