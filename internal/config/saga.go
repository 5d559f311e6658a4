package config

import (
	"fmt"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
)

// Bounds of the saga settings.
const (
	minSagaRetention        = time.Minute
	maxSagaRetention        = 365 * 24 * time.Hour
	minSagaLeaseTTL         = 500 * time.Millisecond
	maxSagaLeaseTTL         = 10 * time.Minute
	minSagaRecoveryInterval = 10 * time.Millisecond
	maxSagaRecoveryInterval = 10 * time.Minute
	minSagaBodyBytes        = 1
	maxSagaBodyBytes        = 16 << 20
	minSagaSteps            = 1
	maxSagaSteps            = 100_000
)

// sagaFields are the saga settings, in usage order.
func sagaFields() []field {
	return []field{
		durationField("saga_retention", "168h", minSagaRetention, maxSagaRetention,
			"how long COMPLETED and COMPENSATED sagas stay in the saga log (COMPENSATION_FAILED ones stay until resolved)",
			func(c *Config) *time.Duration { return &c.SagaRetention }),
		durationField("saga_lease_ttl", saga.DefaultLease.String(), minSagaLeaseTTL, maxSagaLeaseTTL,
			"lease of a sidecar compensating a saga, renewed every third of it; when a sidecar dies another takes its sagas over after it",
			func(c *Config) *time.Duration { return &c.SagaLeaseTTL }),
		durationField("saga_recovery_interval", saga.DefaultRecoveryInterval.String(), minSagaRecoveryInterval, maxSagaRecoveryInterval,
			"how often the recovery worker looks for timed-out sagas and sagas whose compensating sidecar died",
			func(c *Config) *time.Duration { return &c.SagaRecoveryInterval }),
		intField("saga_max_body_bytes", "bytes", saga.DefaultMaxBodyBytes, minSagaBodyBytes, maxSagaBodyBytes,
			"largest compensation body RecordStep accepts (it is kept in the saga log)",
			func(c *Config) *int { return &c.SagaMaxBodyBytes }),
		intField("saga_max_steps", "count", saga.DefaultMaxSteps, minSagaSteps, maxSagaSteps,
			"most steps one saga may record",
			func(c *Config) *int { return &c.SagaMaxSteps }),
	}
}

// intField is a whole-number setting within [lo, hi].
func intField(key, typ string, def, lo, hi int, usage string, ptr func(*Config) *int) field {
	return field{
		key: key, typ: typ, def: strconv.Itoa(def), inFile: true,
		usage: fmt.Sprintf("%s (%d-%d)", usage, lo, hi),
		set: func(c *Config, s string) error {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < int64(lo) || n > int64(hi) {
				return fmt.Errorf("must be a whole number between %d and %d, got %s", lo, hi, quoteValue(s))
			}
			*ptr(c) = int(n)
			return nil
		},
	}
}

// compensationRetryKeys are the keys of an upstream's compensation_retry.
var compensationRetryKeys = retryKeys

// parseCompensationRetry reads an upstream's compensation_retry: how a saga
// compensation on it is retried (saga.DefaultRetry where unset).
func parseCompensationRetry(s section, n *yaml.Node) (Retry, error) {
	rs := section{path: s.path, prefix: s.prefix + ".compensation_retry"}
	rm, err := rs.entries(n, compensationRetryKeys)
	if err != nil {
		return Retry{}, err
	}
	var r Retry
	if r.MaxAttempts, err = rs.int(rm, "max_attempts", saga.DefaultRetry.MaxAttempts, 1, saga.MaxRetryAttempts); err != nil {
		return Retry{}, err
	}
	if r.InitialBackoff, err = rs.duration(rm, "initial_backoff", saga.DefaultRetry.InitialBackoff, saga.MinRetryBackoff, saga.MaxRetryBackoff); err != nil {
		return Retry{}, err
	}
	if r.MaxBackoff, err = rs.duration(rm, "max_backoff", max(saga.DefaultRetry.MaxBackoff, r.InitialBackoff), r.InitialBackoff, saga.MaxRetryBackoff); err != nil {
		return Retry{}, err
	}
	return r, nil
}
