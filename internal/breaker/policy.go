package breaker

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Scope says where a breaker's state lives.
type Scope int

// Scopes.
const (
	// Local keeps the breaker in this sidecar's memory: no store round trip.
	Local Scope = iota + 1
	// Shared keeps the breaker in the Store (Redis), so every sidecar of a
	// namespace trips and recovers together.
	Shared
)

func (s Scope) String() string {
	switch s {
	case Local:
		return "local"
	case Shared:
		return "shared"
	}
	return fmt.Sprintf("Scope(%d)", int(s))
}

// Defaults of the Policy fields whose zero value means "default".
const (
	DefaultConsecutiveFailures = 5
	DefaultWindow              = time.Minute
	DefaultMinCalls            = 10
	DefaultOpenDuration        = 30 * time.Second
	DefaultHalfOpenMaxCalls    = 1
)

// Bounds of the Policy fields (the config file is checked against the same).
const (
	MinWindow           = time.Second
	MaxWindow           = time.Hour
	MinOpenDuration     = 100 * time.Millisecond
	MaxOpenDuration     = 24 * time.Hour
	MaxHalfOpenMaxCalls = 1000
	MaxMinReporters     = 1000
	MaxCount            = 1_000_000 // consecutive_failures, min_calls
	MinSlowCallDuration = time.Millisecond
	MaxSlowCallDuration = 10 * time.Minute
)

// MaxPermitTTL bounds how long a permit waits for its report.
const MaxPermitTTL = 10 * time.Minute

// Policy is how a breaker trips and recovers. The zero value of each field
// is documented on it; DefaultPolicy is the policy of undeclared names when
// the config declares no `default`.
//
// A breaker trips (closed -> open) when any enabled condition holds and,
// for a shared breaker, the failures in its window came from at least
// MinReporters distinct sidecars: ConsecutiveFailures failures in a row;
// or, once the window holds MinCalls calls, failures/calls >= FailureRate;
// or slow calls/calls >= SlowCallRate. It stays open for OpenDuration, then
// admits HalfOpenMaxCalls probes: when all succeed it closes, when any fails
// (or is slow, with a slow-call condition) it opens again.
type Policy struct {
	// Scope: zero means Local.
	Scope Scope
	// ConsecutiveFailures trips after this many failures in a row; zero
	// disables the condition.
	ConsecutiveFailures int
	// FailureRate in (0, 1]; zero disables the condition.
	FailureRate float64
	// Window is the sliding time window of the rates (and of the reporters
	// counted for MinReporters), kept in 10 buckets of Window/10: zero
	// means DefaultWindow.
	Window time.Duration
	// MinCalls is how many calls the window must hold before a rate can
	// trip: zero means DefaultMinCalls.
	MinCalls int
	// SlowCallDuration: a call at least this long is slow. Zero disables
	// slow-call detection; it is set exactly when SlowCallRate is.
	SlowCallDuration time.Duration
	// SlowCallRate in (0, 1]; zero disables the condition.
	SlowCallRate float64
	// OpenDuration is how long the breaker stays open before admitting
	// probes: zero means DefaultOpenDuration.
	OpenDuration time.Duration
	// HalfOpenMaxCalls is how many probes half-open admits, and how many
	// must succeed to close: zero means DefaultHalfOpenMaxCalls.
	HalfOpenMaxCalls int
	// MinReporters (Shared only) is how many distinct sidecars must have a
	// failure or slow call in the window before the breaker opens: zero
	// means 1. A local breaker (and a shared one's local fallback) ignores
	// it: it has one reporter.
	MinReporters int
}

// DefaultPolicy is the built-in policy for names the config does not
// declare: local, 5 consecutive failures, open 30s, 1 probe.
func DefaultPolicy() Policy {
	return Policy{Scope: Local, ConsecutiveFailures: DefaultConsecutiveFailures}.WithDefaults()
}

// WithDefaults returns p with every zero "default" field filled in.
func (p Policy) WithDefaults() Policy {
	if p.Scope == 0 {
		p.Scope = Local
	}
	if p.Window == 0 {
		p.Window = DefaultWindow
	}
	if p.MinCalls == 0 {
		p.MinCalls = DefaultMinCalls
	}
	if p.OpenDuration == 0 {
		p.OpenDuration = DefaultOpenDuration
	}
	if p.HalfOpenMaxCalls == 0 {
		p.HalfOpenMaxCalls = DefaultHalfOpenMaxCalls
	}
	if p.MinReporters == 0 {
		p.MinReporters = 1
	}
	return p
}

// Validate reports the first problem of p (after WithDefaults): a bound
// violated, or a policy that can never trip or never close.
func (p Policy) Validate() error {
	p = p.WithDefaults()
	rate := func(name string, r float64) error {
		if r != 0 && !(r > 0 && r <= 1) {
			return fmt.Errorf("breaker: %s must be in (0,1], got %v", name, r)
		}
		return nil
	}
	switch {
	case p.Scope != Local && p.Scope != Shared:
		return fmt.Errorf("breaker: unknown scope %v", p.Scope)
	case p.ConsecutiveFailures < 0 || p.ConsecutiveFailures > MaxCount:
		return fmt.Errorf("breaker: consecutive_failures must be between 0 and %d, got %d", MaxCount, p.ConsecutiveFailures)
	case p.MinCalls < 1 || p.MinCalls > MaxCount:
		return fmt.Errorf("breaker: min_calls must be between 1 and %d, got %d", MaxCount, p.MinCalls)
	case p.Window < MinWindow || p.Window > MaxWindow:
		return fmt.Errorf("breaker: window must be between %v and %v, got %v", MinWindow, MaxWindow, p.Window)
	case p.OpenDuration < MinOpenDuration || p.OpenDuration > MaxOpenDuration:
		return fmt.Errorf("breaker: open_duration must be between %v and %v, got %v", MinOpenDuration, MaxOpenDuration, p.OpenDuration)
	case p.HalfOpenMaxCalls < 1 || p.HalfOpenMaxCalls > MaxHalfOpenMaxCalls:
		return fmt.Errorf("breaker: half_open_max_calls must be between 1 and %d, got %d", MaxHalfOpenMaxCalls, p.HalfOpenMaxCalls)
	case p.MinReporters < 1 || p.MinReporters > MaxMinReporters:
		return fmt.Errorf("breaker: min_reporters must be between 1 and %d, got %d", MaxMinReporters, p.MinReporters)
	case p.MinReporters > 1 && p.Scope != Shared:
		return errors.New("breaker: min_reporters above 1 needs scope shared: a local breaker has one reporter and could never trip")
	case (p.SlowCallDuration == 0) != (p.SlowCallRate == 0):
		return errors.New("breaker: slow_call_duration and slow_call_rate go together")
	case p.SlowCallDuration != 0 && (p.SlowCallDuration < MinSlowCallDuration || p.SlowCallDuration > MaxSlowCallDuration):
		return fmt.Errorf("breaker: slow_call_duration must be between %v and %v, got %v", MinSlowCallDuration, MaxSlowCallDuration, p.SlowCallDuration)
	case p.ConsecutiveFailures == 0 && p.FailureRate == 0 && p.SlowCallRate == 0:
		return errors.New("breaker: cannot trip: consecutive_failures is 0 and neither failure_rate nor slow_call_rate is set")
	}
	if err := rate("failure_rate", p.FailureRate); err != nil {
		return err
	}
	return rate("slow_call_rate", p.SlowCallRate)
}

// params is a policy in the integer form the state machine and the Lua
// scripts share: milliseconds and rates in parts per million, so both
// compare exactly the same numbers.
type params struct {
	consecutive int64
	ratePPM     int64
	slowPPM     int64
	slowMS      int64
	windowMS    int64
	openMS      int64
	minCalls    int64
	halfMax     int64
	minRep      int64
}

func (p Policy) params() params {
	p = p.WithDefaults()
	return params{
		consecutive: int64(p.ConsecutiveFailures),
		ratePPM:     ppm(p.FailureRate),
		slowPPM:     ppm(p.SlowCallRate),
		slowMS:      p.SlowCallDuration.Milliseconds(),
		windowMS:    p.Window.Milliseconds(),
		openMS:      p.OpenDuration.Milliseconds(),
		minCalls:    int64(p.MinCalls),
		halfMax:     int64(p.HalfOpenMaxCalls),
		minRep:      int64(p.MinReporters),
	}
}

func ppm(r float64) int64 { return int64(math.Round(r * 1e6)) }

// local returns p as its one-sidecar variant: what a local breaker, a
// shared breaker's fallback and a shared breaker on the embedded store run.
func (p Policy) local() Policy {
	p.MinReporters = 1
	return p
}
