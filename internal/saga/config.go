package saga

import (
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// Bounds of the Options settings the config file gives (saga_retention,
// saga_lease_ttl, saga_recovery_interval, saga_max_body_bytes,
// saga_max_steps). NewService itself takes any positive value.
const (
	MinRetention        = time.Minute
	MaxRetention        = 365 * 24 * time.Hour
	MinLease            = 500 * time.Millisecond
	MaxLease            = 10 * time.Minute
	MinRecoveryInterval = 10 * time.Millisecond
	MaxRecoveryInterval = 10 * time.Minute
	MaxMaxBodyBytes     = 16 << 20
	MaxMaxSteps         = 100_000
)

// Bounds of a compensation retry policy.
const (
	MaxRetryAttempts = 1000
	MinRetryBackoff  = time.Millisecond
	MaxRetryBackoff  = time.Hour
)

// DefaultRetry is the compensation retry policy of an upstream that
// declares none: 10 tries with full-jitter backoff from 1s doubling up to
// 1m between them, so about two minutes (at most four) before a
// compensation is given up.
var DefaultRetry = RetryPolicy{MaxAttempts: 10, InitialBackoff: time.Second, MaxBackoff: time.Minute}

// RetryPolicy is how a compensation is retried. Each try is one call
// through the upstream caller (which itself retries transport failures per
// the upstream's own retry policy); between tries the executor waits a
// uniform random time in [0, min(MaxBackoff, InitialBackoff*2^(n-1))].
//
// The yaml tags are the keys of an upstream's compensation_retry in the
// config file. Zero values get DefaultRetry's (WithDefaults).
type RetryPolicy struct {
	// MaxAttempts counts the tries (1-1000).
	MaxAttempts int `yaml:"max_attempts"`
	// InitialBackoff (1ms-1h) and MaxBackoff (InitialBackoff-1h; by default
	// DefaultRetry's, or InitialBackoff if longer).
	InitialBackoff time.Duration `yaml:"initial_backoff"`
	MaxBackoff     time.Duration `yaml:"max_backoff"`
}

// WithDefaults returns r with every zero field set to DefaultRetry's.
func (r RetryPolicy) WithDefaults() RetryPolicy {
	if r.MaxAttempts == 0 {
		r.MaxAttempts = DefaultRetry.MaxAttempts
	}
	if r.InitialBackoff == 0 {
		r.InitialBackoff = DefaultRetry.InitialBackoff
	}
	if r.MaxBackoff == 0 {
		r.MaxBackoff = max(DefaultRetry.MaxBackoff, r.InitialBackoff)
	}
	return r
}

// Validate reports the first problem of r as it is (zero fields are not
// defaulted), as a *field.Error whose path is the setting's key.
func (r RetryPolicy) Validate() error {
	switch {
	case r.MaxAttempts < 1 || r.MaxAttempts > MaxRetryAttempts:
		return field.Errorf("max_attempts", "must be between 1 and %d, got %d", MaxRetryAttempts, r.MaxAttempts)
	case r.InitialBackoff < MinRetryBackoff || r.InitialBackoff > MaxRetryBackoff:
		return field.Errorf("initial_backoff", "must be between %v and %v, got %v", MinRetryBackoff, MaxRetryBackoff, r.InitialBackoff)
	case r.MaxBackoff < r.InitialBackoff || r.MaxBackoff > MaxRetryBackoff:
		return field.Errorf("max_backoff", "must be between %v and %v, got %v", r.InitialBackoff, MaxRetryBackoff, r.MaxBackoff)
	}
	return nil
}
