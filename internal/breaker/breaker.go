// Package breaker runs named circuit breakers, local to this process or
// shared by every sidecar of a namespace through a Store (Redis).
//
// A breaker moves through these states:
//
//	closed --trip condition holds--> open            (new generation)
//	open --OpenDuration passed, next Allow--> half-open (new generation)
//	half-open --HalfOpenMaxCalls successes--> closed (new generation)
//	half-open --a probe fails or is slow--> open      (new generation)
//	any --Reset--> closed                            (new generation)
//
// A call asks Allow for a permit and reports its outcome with Report. The
// permit id carries the breaker's generation (like gobreaker's generation
// counter): an outcome reported for an earlier generation is ignored. A
// permit not reported within its TTL counts as a failure, settled lazily by
// the next operation on its breaker (no goroutine per permit), so a dead
// probe cannot wedge half-open. Unknown and repeated reports are refused
// with ErrPermitUnknown: every permit counts once.
//
// Time is injected (Options.Now) for local breakers; shared breakers use the
// store's clock (Redis TIME), so sidecar clock differences do not matter.
package breaker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Errors callers switch on.
var (
	// ErrPermitUnknown: the permit is not outstanding in its generation:
	// never issued, already reported, or expired (and counted as a
	// failure).
	ErrPermitUnknown = errors.New("breaker: permit unknown, already reported or expired")
	// ErrPermitMalformed: the permit id is not one AllowCall returns.
	ErrPermitMalformed = errors.New("breaker: malformed permit id")
	// ErrLimitExceeded: too many breakers, or too many outstanding permits.
	ErrLimitExceeded = errors.New("breaker: limit exceeded")
	// ErrOpen matches *OpenError.
	ErrOpen = errors.New("breaker: open")
)

// OpenError is a call refused by its breaker, for callers that make the
// call themselves (the upstream caller). errors.Is(err, ErrOpen) holds.
type OpenError struct {
	Breaker    string
	State      State
	RetryAfter time.Duration
}

func (e *OpenError) Error() string {
	return fmt.Sprintf("breaker: %s is %s; retry after %v", e.Breaker, e.State, e.RetryAfter)
}

// Is makes errors.Is(err, ErrOpen) hold.
func (e *OpenError) Is(target error) bool { return target == ErrOpen }

// State is a breaker's state.
type State int

// States.
const (
	Closed State = iota + 1
	Open
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Outcome is the result of an allowed call.
type Outcome int

// Outcomes.
const (
	// Success: the call worked.
	Success Outcome = iota + 1
	// Failure: the call failed in a way that says the dependency is
	// unhealthy.
	Failure
	// Ignored: not the dependency's fault; the permit is released and
	// nothing is counted.
	Ignored
)

func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Ignored:
		return "ignored"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Reporter identifies a sidecar process (random per process): the
// distinct reporters of failures are what MinReporters counts.
type Reporter [8]byte

// Nonce makes a permit unique within its reporter.
type Nonce [8]byte

// Counts are a breaker's counters in its current generation.
type Counts struct {
	// Calls, Failures and SlowCalls in the sliding window (closed).
	Calls, Failures, SlowCalls int
	ConsecutiveFailures        int
	// Half-open: probes admitted and not yet reported, and successes.
	HalfOpenInFlight, HalfOpenSuccesses int
	// OutstandingPermits issued and not yet reported or expired.
	OutstandingPermits int
	// FailureReporters: distinct reporters with a failure or slow call in
	// the window.
	FailureReporters int
}

// Snapshot is a breaker's state as a Store sees it.
type Snapshot struct {
	State State
	// Generation changes on every transition.
	Generation uint64
	Counts     Counts
	// OpenUntil is when an open breaker admits probes (zero otherwise).
	OpenUntil time.Time
	// Now is the store's clock at the time of the snapshot.
	Now time.Time
}

// AllowArgs are the parameters of one Store.Allow.
type AllowArgs struct {
	Reporter Reporter
	Nonce    Nonce
	// TTL is how long the permit waits for its report; > 0.
	TTL time.Duration
}

// Allowance is a Store's answer to Allow.
type Allowance struct {
	Allowed bool
	// State the call was decided in (half-open when a probe was admitted).
	State State
	// Generation of the permit (when allowed).
	Generation uint64
	// Issued is the store's clock at the decision.
	Issued time.Time
	// RetryAfter, when refused: open, the time until half-open; half-open,
	// the time until the earliest probe permit expires.
	RetryAfter time.Duration
}

// PermitRef is what a Store needs of a permit to record its report.
type PermitRef struct {
	Generation uint64
	Issued     time.Time
	Reporter   Reporter
	Nonce      Nonce
}

// Recorded is a Store's answer to Report.
type Recorded struct {
	// Counted is false for a permit of an earlier generation (ignored).
	Counted bool
	// State after the report.
	State State
}

// Store keeps shared breakers. Each method is atomic (one Redis script,
// one round trip) and first settles the breaker's expired permits. The
// policy is passed on every call; sidecars sharing a breaker should share
// its policy. Errors are the context's, an error wrapping
// store.ErrUnavailable, ErrLimitExceeded (Allow) or ErrPermitUnknown
// (Report).
type Store interface {
	// Allow decides a call and, when allowed, records the permit
	// (a.Reporter, a.Nonce) until it is reported or expires.
	Allow(ctx context.Context, name string, p Policy, a AllowArgs) (Allowance, error)
	// Report records the outcome of a permit. dur < 0 means unknown: the
	// time since the permit was issued is used for slow-call detection.
	Report(ctx context.Context, name string, p Policy, ref PermitRef, o Outcome, dur time.Duration) (Recorded, error)
	// Release hands back the permit (a.Reporter, a.Nonce) whatever its
	// generation, counting nothing (as an Ignored report: a half-open
	// probe's slot is free again at once), and reports whether it was
	// outstanding. It is for a grant that cannot reach its caller: an
	// Allow whose outcome is unknown (timeout, cancellation, a reply lost
	// after the request was sent) or whose caller is gone. A permit not
	// outstanding (never granted, reported, expired) is left alone; with
	// a.TTL > 0 an Allow of that same permit arriving later (overtaken by
	// its release) then grants nothing, for a.TTL. Idempotent.
	Release(ctx context.Context, name string, p Policy, a AllowArgs) (bool, error)
	// Get settles expired permits and describes the breaker, without
	// creating it.
	Get(ctx context.Context, name string, p Policy) (Snapshot, error)
	// Reset forces the breaker closed with empty counts.
	Reset(ctx context.Context, name string, p Policy) (Snapshot, error)
	// Ping returns nil when the store answers.
	Ping(ctx context.Context) error
}

// Limits on outstanding permits.
const (
	// MaxPermitsPerBreaker bounds one breaker's outstanding permits (in
	// memory and in Redis).
	MaxPermitsPerBreaker = 10_000
	// DefaultMaxPermits bounds the outstanding permits of all the local
	// breakers of one process.
	DefaultMaxPermits = 100_000
)

func ms(t time.Time) int64        { return t.UnixMilli() }
func fromMS(v int64) time.Time    { return time.UnixMilli(v) }
func durMS(d time.Duration) int64 { return d.Milliseconds() }
func msDur(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
func (s snapshotMS) counts() Counts {
	return Counts{Calls: int(s.calls), Failures: int(s.fails), SlowCalls: int(s.slow),
		ConsecutiveFailures: int(s.consecutive), HalfOpenInFlight: int(s.hin), HalfOpenSuccesses: int(s.hok),
		OutstandingPermits: int(s.outstanding), FailureReporters: int(s.reporters)}
}

func (s snapshotMS) public(now int64) Snapshot {
	out := Snapshot{State: s.state, Generation: s.gen, Counts: s.counts(), Now: fromMS(now)}
	if s.openUntil > 0 {
		out.OpenUntil = fromMS(s.openUntil)
	}
	return out
}
