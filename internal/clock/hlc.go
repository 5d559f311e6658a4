package clock

import (
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Timestamp is a hybrid logical clock timestamp (Kulkarni et al., "Logical
// Physical Clocks", 2014): a physical part in milliseconds since the Unix
// epoch and a logical counter that orders events within one millisecond.
// Timestamps are ordered by (WallTime, Logical), and Encode keeps that
// order in one uint64:
//
//	 63                                        16 15            0
//	+--------------------------------------------+---------------+
//	|       WallTime, ms since epoch (48 bits)    | Logical (16)  |
//	+--------------------------------------------+---------------+
//
// String writes the uint64 as 16 hexadecimal digits, which sort as text in
// the same order.
type Timestamp struct {
	WallTime int64 // milliseconds since the Unix epoch, 0 to MaxWallTime
	Logical  uint16
}

// MaxWallTime is the highest WallTime a Timestamp can encode (year 10889).
const MaxWallTime = 1<<48 - 1

// Encode returns the timestamp as WallTime<<16 | Logical.
func (t Timestamp) Encode() uint64 { return uint64(t.WallTime)<<16 | uint64(t.Logical) }

// DecodeTimestamp is the inverse of Encode.
func DecodeTimestamp(u uint64) Timestamp {
	return Timestamp{WallTime: int64(u >> 16), Logical: uint16(u)}
}

// String returns Encode as 16 lowercase hexadecimal digits.
func (t Timestamp) String() string { return fmt.Sprintf("%016x", t.Encode()) }

// ParseTimestamp reads String's form: exactly 16 hexadecimal digits (either
// case).
func ParseTimestamp(s string) (Timestamp, error) {
	if len(s) != 16 {
		return Timestamp{}, fmt.Errorf("clock: hlc timestamp must be 16 hexadecimal digits, got %d characters", len(s))
	}
	u, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return Timestamp{}, fmt.Errorf("clock: hlc timestamp must be 16 hexadecimal digits")
	}
	return DecodeTimestamp(u), nil
}

// Time returns the physical part as a time.Time.
func (t Timestamp) Time() time.Time { return time.UnixMilli(t.WallTime) }

// Compare returns -1, 0 or +1 as t is before, equal to or after u.
func (t Timestamp) Compare(u Timestamp) int {
	switch a, b := t.Encode(), u.Encode(); {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// SkewError is ErrClockSkew with the measurements: how far the remote
// timestamp was ahead of the local wall clock, and the allowed maximum.
type SkewError struct {
	Ahead     time.Duration
	MaxOffset time.Duration
}

func (e *SkewError) Error() string {
	return fmt.Sprintf("%v: %v ahead of the local clock, max offset %v", ErrClockSkew, e.Ahead, e.MaxOffset)
}

// Is makes errors.Is(err, ErrClockSkew) hold.
func (e *SkewError) Is(target error) bool { return target == ErrClockSkew }

// DefaultMaxOffset is the maximum offset NewHLC uses when given 0.
const DefaultMaxOffset = 500 * time.Millisecond

// HLC is a hybrid logical clock, following the rules of CockroachDB's hlc
// package: timestamps never go backwards even when the wall clock does, stay
// within the wall clock plus the logical counter, and a remote timestamp
// further ahead of the wall clock than the maximum offset is refused rather
// than adopted, so one node with a runaway clock cannot drag everyone
// forward. It is safe for concurrent use.
//
// When the logical counter would pass 65535 within one millisecond, the
// clock moves to the next millisecond (ahead of the wall clock by at most
// that millisecond until the wall clock catches up) instead of wrapping.
type HLC struct {
	now       func() time.Time
	maxOffset time.Duration
	skewed    atomic.Uint64

	mu   sync.Mutex
	last Timestamp
}

// NewHLC returns a clock reading physical time from now (time.Now when
// nil) that refuses remote timestamps more than maxOffset
// (DefaultMaxOffset when 0) ahead of it.
func NewHLC(now func() time.Time, maxOffset time.Duration) *HLC {
	if now == nil {
		now = time.Now
	}
	if maxOffset <= 0 {
		maxOffset = DefaultMaxOffset
	}
	return &HLC{now: now, maxOffset: maxOffset}
}

// MaxOffset returns the maximum offset the clock accepts.
func (c *HLC) MaxOffset() time.Duration { return c.maxOffset }

// SkewRejections returns how many remote timestamps Update refused for
// being too far ahead, since the clock was made.
func (c *HLC) SkewRejections() uint64 { return c.skewed.Load() }

func (c *HLC) physical() int64 {
	return min(max(c.now().UnixMilli(), 0), MaxWallTime)
}

// Now returns a timestamp for a local or send event: greater than every
// timestamp the clock returned before, and not below the wall clock.
func (c *HLC) Now() Timestamp {
	pt := c.physical()
	c.mu.Lock()
	defer c.mu.Unlock()
	if pt > c.last.WallTime {
		c.last = Timestamp{WallTime: pt}
	} else {
		c.tickLocked(c.last.WallTime, uint32(c.last.Logical)+1)
	}
	return c.last
}

// Update merges a timestamp received from another process (the receive
// rule of Kulkarni et al.) and returns a timestamp greater than both remote
// and every timestamp the clock returned before. A remote timestamp more
// than the maximum offset ahead of the wall clock is refused with a
// *SkewError (errors.Is ErrClockSkew) and leaves the clock unchanged.
func (c *HLC) Update(remote Timestamp) (Timestamp, error) {
	pt := c.physical()
	// In milliseconds: a remote wall time near MaxWallTime would overflow
	// a Duration.
	if aheadMs := remote.WallTime - pt; aheadMs > c.maxOffset.Milliseconds() {
		c.skewed.Add(1)
		ahead := time.Duration(min(aheadMs, math.MaxInt64/int64(time.Millisecond))) * time.Millisecond
		return Timestamp{}, &SkewError{Ahead: ahead, MaxOffset: c.maxOffset}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l := max(c.last.WallTime, remote.WallTime, pt)
	switch {
	case l == c.last.WallTime && l == remote.WallTime:
		c.tickLocked(l, uint32(max(c.last.Logical, remote.Logical))+1)
	case l == c.last.WallTime:
		c.tickLocked(l, uint32(c.last.Logical)+1)
	case l == remote.WallTime:
		c.tickLocked(l, uint32(remote.Logical)+1)
	default:
		c.last = Timestamp{WallTime: l}
	}
	return c.last, nil
}

// tickLocked sets the clock to (wall, logical), carrying a logical counter
// past 65535 into the next millisecond.
func (c *HLC) tickLocked(wall int64, logical uint32) {
	if logical > 0xFFFF {
		c.last = Timestamp{WallTime: wall + 1}
		return
	}
	c.last = Timestamp{WallTime: wall, Logical: uint16(logical)}
}
