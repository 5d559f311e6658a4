package breaker

import (
	"fmt"
	"math"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
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
//
// The yaml tags are the keys of one entry of the config file's `breakers`
// section (Config), which also says what the file's left-out keys mean.
type Policy struct {
	// Scope: zero means Local.
	Scope Scope `yaml:"scope"`
	// ConsecutiveFailures trips after this many failures in a row; zero
	// disables the condition.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// FailureRate in (0, 1]; zero disables the condition.
	FailureRate float64 `yaml:"failure_rate"`
	// Window is the sliding time window of the rates (and of the reporters
	// counted for MinReporters), kept in 10 buckets of Window/10: zero
	// means DefaultWindow.
	Window time.Duration `yaml:"window"`
	// MinCalls is how many calls the window must hold before a rate can
	// trip: zero means DefaultMinCalls.
	MinCalls int `yaml:"min_calls"`
	// SlowCallDuration: a call at least this long is slow. Zero disables
	// slow-call detection; it is set exactly when SlowCallRate is.
	SlowCallDuration time.Duration `yaml:"slow_call_duration"`
	// SlowCallRate in (0, 1]; zero disables the condition.
	SlowCallRate float64 `yaml:"slow_call_rate"`
	// OpenDuration is how long the breaker stays open before admitting
	// probes: zero means DefaultOpenDuration.
	OpenDuration time.Duration `yaml:"open_duration"`
	// HalfOpenMaxCalls is how many probes half-open admits, and how many
	// must succeed to close: zero means DefaultHalfOpenMaxCalls.
	HalfOpenMaxCalls int `yaml:"half_open_max_calls"`
	// MinReporters (Shared only) is how many distinct sidecars must have a
	// failure or slow call in the window before the breaker opens: zero
	// means 1. A local breaker (and a shared one's local fallback) ignores
	// it: it has one reporter.
	MinReporters int `yaml:"min_reporters"`
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

// Validate reports the first problem of p after WithDefaults: a bound
// violated, or a policy that can never trip or never close. The message
// names the setting by its config file key ("breaker: failure_rate must be
// in (0,1], got 2"); errors.As finds the *field.Error.
func (p Policy) Validate() error {
	if err := p.WithDefaults().check(); err != nil {
		return fmt.Errorf("breaker: %w", err)
	}
	return nil
}

// check is Validate without the defaults: a zero field is checked as it
// is. Its problems are *field.Error with the setting's key as path.
func (p Policy) check() error {
	if p.Scope != Local && p.Scope != Shared {
		return field.Errorf("scope", "must be one of local, shared, got %v", p.Scope)
	}
	if err := checkRate("failure_rate", p.FailureRate); err != nil {
		return err
	}
	if err := checkRate("slow_call_rate", p.SlowCallRate); err != nil {
		return err
	}
	var slow error // slow_call_duration is checked only when set: zero is off
	if p.SlowCallDuration != 0 {
		slow = field.Range("slow_call_duration", p.SlowCallDuration, MinSlowCallDuration, MaxSlowCallDuration)
	}
	for _, err := range []error{
		field.Range("consecutive_failures", p.ConsecutiveFailures, 0, MaxCount),
		field.Range("window", p.Window, MinWindow, MaxWindow),
		field.Range("min_calls", p.MinCalls, 1, MaxCount),
		slow,
		field.Range("open_duration", p.OpenDuration, MinOpenDuration, MaxOpenDuration),
		field.Range("half_open_max_calls", p.HalfOpenMaxCalls, 1, MaxHalfOpenMaxCalls),
		field.Range("min_reporters", p.MinReporters, 1, MaxMinReporters),
	} {
		if err != nil {
			return err
		}
	}
	switch {
	case p.SlowCallRate != 0 && p.SlowCallDuration == 0:
		return field.Errorf("slow_call_rate", "needs slow_call_duration (the two go together): without it no call is slow and this condition cannot trip")
	case p.SlowCallDuration != 0 && p.SlowCallRate == 0:
		return field.Errorf("slow_call_duration", "needs slow_call_rate (the two go together): without it slow calls cannot trip the breaker")
	case p.MinReporters > 1 && p.Scope != Shared:
		return field.Errorf("min_reporters", "above 1 needs scope shared: a local breaker has one reporter and could never trip")
	case p.ConsecutiveFailures == 0 && p.FailureRate == 0 && p.SlowCallRate == 0:
		return field.Errorf("", "cannot trip: consecutive_failures is 0 and neither failure_rate nor slow_call_rate is set")
	}
	return nil
}

// checkRate checks a rate: 0 (off) or a number in (0,1].
func checkRate(key string, r float64) error {
	switch {
	case math.IsNaN(r) || math.IsInf(r, 0):
		return field.Errorf(key, "must be a number in (0,1], got %v", r)
	case r != 0 && !(r > 0 && r <= 1):
		return field.Errorf(key, "must be in (0,1], got %v", r)
	}
	return nil
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
