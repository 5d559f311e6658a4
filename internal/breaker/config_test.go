package breaker_test

import (
	"errors"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// TestConfigDefaults: a declared policy trips on five failures in a row
// unless it sets a rate; everything else is Policy.WithDefaults.
func TestConfigDefaults(t *testing.T) {
	c := breaker.Config{"plain": {}, "rate": {FailureRate: 0.5}, "off": {ConsecutiveFailures: 3, SlowCallRate: 1, SlowCallDuration: time.Second}}.WithDefaults()
	if p := c["plain"]; p != breaker.DefaultPolicy() {
		t.Errorf("plain = %+v, want DefaultPolicy %+v", p, breaker.DefaultPolicy())
	}
	if p := c["rate"]; p.ConsecutiveFailures != 0 || p.Window != breaker.DefaultWindow || p.Scope != breaker.Local {
		t.Errorf("rate = %+v", p)
	}
	if p := c["off"]; p.ConsecutiveFailures != 3 {
		t.Errorf("off = %+v", p)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(WithDefaults) = %v", err)
	}
}

// TestConfigValidate: problems name the breaker and the key; a zero is
// checked as written; a rate written as 0 is refused only by ValidateFile.
func TestConfigValidate(t *testing.T) {
	def := breaker.Config{"p": {}}.WithDefaults()["p"]
	with := func(f func(*breaker.Policy)) breaker.Config {
		p := def
		f(&p)
		return breaker.Config{"p": p}
	}
	for _, tc := range []struct {
		name    string
		c       breaker.Config
		written string
		path    string // "" valid
	}{
		{"valid", with(func(*breaker.Policy) {}), "", ""},
		{"zero probes", with(func(p *breaker.Policy) { p.HalfOpenMaxCalls = 0 }), "", "p.half_open_max_calls"},
		{"rate above 1", with(func(p *breaker.Policy) { p.FailureRate = 2 }), "", "p.failure_rate"},
		{"rate 0 left out", with(func(*breaker.Policy) {}), "", ""},
		{"rate 0 written", with(func(*breaker.Policy) {}), "p.failure_rate", "p.failure_rate"},
		{"slow duration 0 written", with(func(*breaker.Policy) {}), "p.slow_call_duration", "p.slow_call_duration"},
		{"cannot trip", with(func(p *breaker.Policy) { p.ConsecutiveFailures = 0 }), "", "p"},
		{"bad name", breaker.Config{"a\nb": def}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.ValidateFile(func(p string) bool { return p == tc.written })
			var fe *field.Error
			switch {
			case tc.name == "bad name":
				if !errors.As(err, &fe) || fe.Path != "" {
					t.Errorf("err = %v, want the name refused", err)
				}
			case tc.path == "" && err != nil:
				t.Errorf("err = %v, want valid", err)
			case tc.path != "" && (!errors.As(err, &fe) || fe.Path != tc.path):
				t.Errorf("err = %#v, want a *field.Error at %q", err, tc.path)
			}
		})
	}
}

func TestScopeText(t *testing.T) {
	var s breaker.Scope
	if err := s.UnmarshalText([]byte("shared")); err != nil || s != breaker.Shared {
		t.Errorf("shared: %v, %v", s, err)
	}
	if err := s.UnmarshalText([]byte("global")); err == nil || err.Error() != `must be one of local, shared, got "global"` {
		t.Errorf("global: %v", err)
	}
}
