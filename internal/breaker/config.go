package breaker

import (
	"fmt"
	"slices"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// Config is the `breakers` section of the config file: breaker policies by
// breaker name, the one named DefaultName being the policy of the names the
// section does not declare. It is Options.Policies as the file gives it.
type Config map[string]Policy

// WithDefaults returns a copy of c in which every policy has its zero-value
// defaults (Policy.WithDefaults) and, when it sets neither failure_rate nor
// slow_call_rate, ConsecutiveFailures DefaultConsecutiveFailures: a
// declared policy trips on five failures in a row unless it says how else.
// (A Policy given to NewService has no such default: its zero
// ConsecutiveFailures is off.)
func (c Config) WithDefaults() Config {
	if c == nil {
		return nil
	}
	out := make(Config, len(c))
	for name, p := range c {
		p = p.WithDefaults()
		if p.ConsecutiveFailures == 0 && p.FailureRate == 0 && p.SlowCallRate == 0 {
			p.ConsecutiveFailures = DefaultConsecutiveFailures
		}
		out[name] = p
	}
	return out
}

// Validate reports the first problem of c, in the order of the names: a
// name that is not 1-512 bytes of UTF-8 without control characters, or a
// policy's problem as Policy.Validate finds it, except that the policy is
// checked as it is, its zero fields not defaulted (validate
// c.WithDefaults() for that). Problems are *field.Error with paths
// "<name>.<key>", the name spelled by field.Key.
func (c Config) Validate() error {
	return c.ValidateFile(func(string) bool { return false })
}

// ValidateFile is Validate for a section read from a config file; written
// reports whether the file wrote out the setting at a path
// ("payments.failure_rate"). A rate or a slow_call_duration written as 0
// is refused: in a Policy zero means off, but the file turns a condition
// off by leaving its key out, and its documented ranges exclude 0.
func (c Config) ValidateFile(written func(path string) bool) error {
	names := make([]string, 0, len(c))
	for name := range c {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := field.CheckName(name); err != nil {
			return err
		}
		p, key := c[name], field.Key(name)
		for _, z := range []struct {
			setting string
			zero    bool
			want    string
		}{
			{"failure_rate", p.FailureRate == 0, "must be in (0,1], got 0"},
			{"slow_call_rate", p.SlowCallRate == 0, "must be in (0,1], got 0"},
			{"slow_call_duration", p.SlowCallDuration == 0,
				fmt.Sprintf("must be between %v and %v, got 0s", MinSlowCallDuration, MaxSlowCallDuration)},
		} {
			if z.zero && written(field.Join(key, z.setting)) {
				return field.Errorf(field.Join(key, z.setting), "%s", z.want)
			}
		}
		if err := p.check(); err != nil {
			return field.Within(key, err)
		}
	}
	return nil
}

// UnmarshalText reads a scope as the config file writes it: local or
// shared.
func (s *Scope) UnmarshalText(b []byte) error {
	switch string(b) {
	case "local":
		*s = Local
	case "shared":
		*s = Shared
	default:
		return fmt.Errorf("must be one of local, shared, got %s", field.Quote(string(b)))
	}
	return nil
}
