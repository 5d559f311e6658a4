// Package clock hands out logical time: Lamport clocks shared through a
// Store (Redis or in-memory), a hybrid logical clock (HLC) per process, and
// ULIDs strictly increasing per process.
//
// Lamport values are uint64 in [1, MaxLamport]; a Store never hands one out
// twice and never goes backwards while it keeps its data. The Service adds
// a check of its own: it remembers, per clock, the highest value it handed
// out since it started, and refuses with ErrRegressed any answer of the
// store that would repeat one (a Redis restarted without its append-only
// file, a failover to a lagging replica).
//
// Time and randomness are injected (a now function, an entropy reader), so
// the HLC and the ULID generator are tested without sleeping.
package clock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
)

// MaxLamport is the highest Lamport value, 2^63-1: the range of a Redis
// integer. A clock that would pass it is exhausted.
const MaxLamport = math.MaxInt64

// Errors callers switch on.
var (
	// ErrExhausted: the clock would pass MaxLamport. Nothing was changed.
	ErrExhausted = errors.New("clock: lamport clock exhausted")
	// ErrRegressed: the store answered a value not above one this process
	// already handed out, so it lost writes (a Redis restart without AOF, a
	// failover to a lagging replica, an eviction). The value was not handed
	// out. ObserveLamport with the highest value the applications know
	// moves the clock past it again.
	ErrRegressed = errors.New("clock: lamport clock went backwards in the store")
	// ErrClockSkew: a remote HLC timestamp is further ahead of the local
	// wall clock than the maximum offset. It was not adopted. Errors with
	// this meaning are *SkewError.
	ErrClockSkew = errors.New("clock: remote timestamp too far ahead")
)

// Store keeps Lamport clocks. Every method is atomic, and values never
// decrease while the store keeps its data. A clock never written reads 0.
type Store interface {
	// Next adds count (1 or more) to the clock and returns the new value,
	// the last of the block of count values it reserved. ErrExhausted, with
	// nothing changed, when the result would pass MaxLamport.
	Next(ctx context.Context, clock string, count uint64) (last uint64, err error)
	// Observe sets the clock to max(current, ts) + 1 and returns that
	// value. ts is at most MaxLamport-1. ErrExhausted, with nothing
	// changed, when the clock is at MaxLamport already.
	Observe(ctx context.Context, clock string, ts uint64) (uint64, error)
	// Get returns the clock's value without changing it.
	Get(ctx context.Context, clock string) (uint64, error)
}

// DefaultHighWaterClocks is how many clocks a Service remembers its
// high-water mark for when NewService is given 0.
const DefaultHighWaterClocks = 10_000

// Service hands out Lamport values from a Store and checks every answer
// against the high-water mark it keeps per clock. It is safe for concurrent
// use.
type Service struct {
	store Store
	marks *highWater
	log   *slog.Logger
}

// NewService returns a Service on store that remembers the high-water marks
// of the maxClocks (DefaultHighWaterClocks when 0) most recently used
// clocks. Forgetting a clock's mark only weakens the check for that clock
// until it is used again; it never makes a call fail.
func NewService(store Store, maxClocks int, log *slog.Logger) *Service {
	if maxClocks <= 0 {
		maxClocks = DefaultHighWaterClocks
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{store: store, marks: newHighWater(maxClocks), log: log}
}

// The check is sound under concurrency because each call compares with the
// mark as it was when the call started: every value in that mark was handed
// out by a call that had completed, so a linearizable store must answer
// above it. A mark read at the end could come from a call that overlapped
// this one and was served later, and would raise false alarms.

// Next reserves count consecutive values (count >= 1) and returns the
// block first..last. ErrExhausted when the clock would pass MaxLamport;
// ErrRegressed when the store answered a block not above a value this
// Service handed out.
func (s *Service) Next(ctx context.Context, clock string, count uint64) (first, last uint64, err error) {
	if count == 0 || count > MaxLamport {
		return 0, 0, fmt.Errorf("clock: next: count %d out of range", count)
	}
	mark := s.marks.get(clock)
	last, err = s.store.Next(ctx, clock, count)
	if err != nil {
		return 0, 0, err
	}
	if last < count {
		return 0, 0, fmt.Errorf("clock: next: store answered %d for a block of %d", last, count)
	}
	first = last - count + 1
	if first <= mark {
		return 0, 0, s.regressed(clock, "next", first, mark)
	}
	s.marks.raise(clock, last)
	return first, last, nil
}

// Observe merges the received timestamp ts (at most MaxLamport-1): the
// clock becomes max(current, ts) + 1 and that value is returned.
// ErrExhausted when the clock is at MaxLamport; ErrRegressed when the store
// answered a value not above one this Service handed out.
func (s *Service) Observe(ctx context.Context, clock string, ts uint64) (uint64, error) {
	if ts >= MaxLamport {
		return 0, fmt.Errorf("clock: observe: timestamp %d out of range", ts)
	}
	mark := s.marks.get(clock)
	v, err := s.store.Observe(ctx, clock, ts)
	if err != nil {
		return 0, err
	}
	if v <= ts {
		return 0, fmt.Errorf("clock: observe: store answered %d after observing %d", v, ts)
	}
	if v <= mark {
		return 0, s.regressed(clock, "observe", v, mark)
	}
	s.marks.raise(clock, v)
	return v, nil
}

// Get reads the clock without advancing it. ErrRegressed when the store is
// below a value this Service handed out.
func (s *Service) Get(ctx context.Context, clock string) (uint64, error) {
	mark := s.marks.get(clock)
	v, err := s.store.Get(ctx, clock)
	if err != nil {
		return 0, err
	}
	if v < mark {
		return 0, s.regressed(clock, "get", v, mark)
	}
	// Every later answer must be at least v, so v is a valid mark too.
	s.marks.raise(clock, v)
	return v, nil
}

func (s *Service) regressed(clock, op string, got, mark uint64) error {
	s.log.Error("LAMPORT CLOCK WENT BACKWARDS: the store lost writes (Redis restarted without appendfsync always, failover to a lagging replica, or eviction); refusing to hand out a value again",
		"clock", clock, "op", op, "store_value", got, "high_water_mark", mark)
	return fmt.Errorf("%w: %s answered %d, this sidecar already handed out %d", ErrRegressed, op, got, mark)
}
