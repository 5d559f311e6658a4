package config

import (
	"strings"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

func TestBreakerPolicies(t *testing.T) {
	c, err := load(t, `
breakers:
  default: {}
  rate: {failure_rate: 0.25}
  slow: {slow_call_duration: 2s, slow_call_rate: 1, min_calls: 3}
  both: {scope: shared, consecutive_failures: 0, failure_rate: 1, window: 5s, open_duration: 1m, half_open_max_calls: 3, min_reporters: 2}
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]breaker.Policy{
		"default": {Scope: breaker.Local, ConsecutiveFailures: 5, Window: time.Minute, MinCalls: 10, OpenDuration: 30 * time.Second, HalfOpenMaxCalls: 1, MinReporters: 1},
		// With a rate set, consecutive failures are off unless asked for.
		"rate": {Scope: breaker.Local, FailureRate: 0.25, Window: time.Minute, MinCalls: 10, OpenDuration: 30 * time.Second, HalfOpenMaxCalls: 1, MinReporters: 1},
		"slow": {Scope: breaker.Local, SlowCallDuration: 2 * time.Second, SlowCallRate: 1, Window: time.Minute, MinCalls: 3, OpenDuration: 30 * time.Second, HalfOpenMaxCalls: 1, MinReporters: 1},
		"both": {Scope: breaker.Shared, FailureRate: 1, Window: 5 * time.Second, MinCalls: 10, OpenDuration: time.Minute, HalfOpenMaxCalls: 3, MinReporters: 2},
	}
	for name, w := range want {
		if got := c.Breakers[name]; got != w {
			t.Errorf("breakers.%s = %+v\n want %+v", name, got, w)
		}
		if err := c.Breakers[name].Validate(); err != nil {
			t.Errorf("breakers.%s: the breaker package refuses it: %v", name, err)
		}
	}
}

func TestBreakerErrors(t *testing.T) {
	tests := []struct {
		name, yamlText, field string
		want                  []string
	}{
		{"rate above 1", "breakers:\n  payments: {failure_rate: 2}\n", "breakers.payments.failure_rate", []string{"must be in (0,1], got 2", "line 2"}},
		{"rate zero", "breakers:\n  p: {failure_rate: 0}\n", "breakers.p.failure_rate", []string{"must be in (0,1], got 0"}},
		{"rate not a number", "breakers:\n  p: {failure_rate: half}\n", "breakers.p.failure_rate", []string{`got "half"`}},
		{"rate NaN", "breakers:\n  p: {failure_rate: .nan}\n", "breakers.p.failure_rate", []string{"number in (0,1]"}},
		{"cannot trip", "breakers:\n  p: {consecutive_failures: 0}\n", "breakers.p", []string{"cannot trip"}},
		{"never closes: no probe", "breakers:\n  p: {half_open_max_calls: 0}\n", "breakers.p.half_open_max_calls", []string{"between 1 and 1000, got 0"}},
		{"open forever", "breakers:\n  p: {open_duration: 1000h}\n", "breakers.p.open_duration", []string{"between 100ms and 24h0m0s"}},
		{"open zero", "breakers:\n  p: {open_duration: 0s}\n", "breakers.p.open_duration", []string{"between 100ms"}},
		{"slow rate alone", "breakers:\n  p: {slow_call_rate: 0.5}\n", "breakers.p.slow_call_rate", []string{"needs slow_call_duration"}},
		{"slow duration alone", "breakers:\n  p: {slow_call_duration: 1s}\n", "breakers.p.slow_call_duration", []string{"needs slow_call_rate"}},
		{"min_reporters on a local breaker", "breakers:\n  p: {min_reporters: 2}\n", "breakers.p.min_reporters", []string{"needs scope shared"}},
		{"bad scope", "breakers:\n  p: {scope: global}\n", "breakers.p.scope", []string{"must be one of local, shared"}},
		{"unknown key", "breakers:\n  p: {failure_ratio: 0.5}\n", "breakers.p.failure_ratio", []string{"unknown key", "known keys: consecutive_failures"}},
		{"duplicate key", "breakers:\n  p:\n    min_calls: 1\n    min_calls: 2\n", "breakers.p.min_calls", []string{"duplicate key", "line 4"}},
		{"not a mapping", "breakers:\n  p: 5\n", "breakers.p", []string{"must be a mapping"}},
		{"nested value", "breakers:\n  p: {window: [1s]}\n", "breakers.p.window", []string{"single value"}},
		{"window too short", "breakers:\n  p: {failure_rate: 0.5, window: 10ms}\n", "breakers.p.window", []string{"between 1s and 1h0m0s"}},
		{"window no unit", "breakers:\n  p: {window: 10}\n", "breakers.p.window", []string{"must be a duration"}},
		{"negative count", "breakers:\n  p: {consecutive_failures: -1}\n", "breakers.p.consecutive_failures", []string{"between 0 and"}},
		{"fractional count", "breakers:\n  p: {min_calls: 2.5}\n", "breakers.p.min_calls", []string{"whole number"}},
		{"control character in name", "breakers:\n  \"a\\nb\": {}\n", "breakers", []string{"control characters"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.yamlText, nil)
			mustFieldError(t, err, tc.field, tc.want...)
		})
	}
}

func TestUpstreams(t *testing.T) {
	c, err := load(t, `
breakers:
  shared-pay: {scope: shared, consecutive_failures: 3}
upstreams:
  payments:
    url: https://pay.internal:8443/api/v2/
    breaker: shared-pay
    timeout: 750ms
    retry: {max_attempts: 5, initial_backoff: 50ms}
    max_body_bytes: 1024
    max_connections: 8
  plain: {url: "http://127.0.0.1:8081"}
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Upstream{Config: upstream.Config{Name: "payments", URL: "https://pay.internal:8443/api/v2/", Timeout: 750 * time.Millisecond, Breaker: "shared-pay",
		MaxAttempts: 5, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second, MaxBodyBytes: 1024, MaxConns: 8},
		CompensationRetry: saga.RetryPolicy{MaxAttempts: 10, InitialBackoff: time.Second, MaxBackoff: time.Minute}}
	if got := c.Upstreams["payments"]; got != want {
		t.Errorf("payments = %+v\n want %+v", got, want)
	}
	if got := c.Upstreams["plain"]; got.Breaker != "plain" || got.Timeout != 10*time.Second || got.MaxAttempts != 3 || got.MaxBodyBytes != 4<<20 {
		t.Errorf("plain = %+v", got)
	}

	const pw = "s3cretpw"
	tests := []struct {
		name, yamlText, field string
		want                  []string
	}{
		{"no url", "upstreams:\n  a: {timeout: 1s}\n", "upstreams.a.url", []string{"must be set"}},
		{"ftp url", "upstreams:\n  a: {url: \"ftp://h\"}\n", "upstreams.a.url", []string{"http:// or https://"}},
		{"relative url", "upstreams:\n  a: {url: \"/x\"}\n", "upstreams.a.url", []string{"http:// or https://"}},
		{"no host", "upstreams:\n  a: {url: \"http:///x\"}\n", "upstreams.a.url", []string{"must name a host"}},
		{"query", "upstreams:\n  a: {url: \"http://h/?a=1\"}\n", "upstreams.a.url", []string{"query or fragment"}},
		{"credentials", "upstreams:\n  a: {url: \"http://u:" + pw + "@h\"}\n", "upstreams.a.url", []string{"credentials"}},
		{"unparsable with password", "upstreams:\n  a: {url: \"http://u:" + pw + "@h:port\"}\n", "upstreams.a.url", []string{"not a valid URL"}},
		{"undeclared breaker", "upstreams:\n  a: {url: \"http://h\", breaker: paymnts}\n", "upstreams.a.breaker", []string{`"paymnts" is not declared`}},
		{"timeout", "upstreams:\n  a: {url: \"http://h\", timeout: 0s}\n", "upstreams.a.timeout", []string{"between 1ms and 5m0s"}},
		{"attempts", "upstreams:\n  a: {url: \"http://h\", retry: {max_attempts: 0}}\n", "upstreams.a.retry.max_attempts", []string{"between 1 and 10, got 0"}},
		{"backoff order", "upstreams:\n  a: {url: \"http://h\", retry: {initial_backoff: 1s, max_backoff: 10ms}}\n", "upstreams.a.retry.max_backoff", []string{"between 1s and 5m0s, got 10ms"}},
		{"retry unknown key", "upstreams:\n  a: {url: \"http://h\", retry: {attempts: 2}}\n", "upstreams.a.retry.attempts", []string{"unknown key"}},
		{"retry not a mapping", "upstreams:\n  a: {url: \"http://h\", retry: 3}\n", "upstreams.a.retry", []string{"must be a mapping"}},
		{"body too large", "upstreams:\n  a: {url: \"http://h\", max_body_bytes: 100000000}\n", "upstreams.a.max_body_bytes", []string{"between 1 and 67108864"}},
		{"unknown key", "upstreams:\n  a: {url: \"http://h\", retries: 2}\n", "upstreams.a.retries", []string{"unknown key"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.yamlText, nil)
			mustFieldError(t, err, tc.field, tc.want...)
			if strings.Contains(err.Error(), pw) {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
}
