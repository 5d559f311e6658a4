package config

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
)

// TestSagaSettings: the saga settings from each source, and their bounds.
func TestSagaSettings(t *testing.T) {
	c, err := load(t, "saga_retention: 24h\nsaga_max_steps: 10\n", env{"SIDECAR_SAGA_LEASE_TTL": "2s"},
		"--saga-recovery-interval=100ms", "--saga-max-body-bytes=1024")
	if err != nil {
		t.Fatal(err)
	}
	if c.Saga.Retention != 24*time.Hour || c.Saga.Lease != 2*time.Second || c.Saga.RecoveryInterval != 100*time.Millisecond ||
		c.Saga.MaxBodyBytes != 1024 || c.Saga.MaxSteps != 10 {
		t.Fatalf("got %s", c)
	}
	for _, tc := range []struct{ key, value, want string }{
		{"saga_retention", "1m", ""},
		{"saga_retention", "59s", "must be between 1m0s and 8760h0m0s, got 59s"},
		{"saga_retention", "7d", "must be a duration"},
		{"saga_lease_ttl", "500ms", ""},
		{"saga_lease_ttl", "499ms", "must be between 500ms and 10m0s"},
		{"saga_recovery_interval", "10ms", ""},
		{"saga_recovery_interval", "11m", "must be between 10ms and 10m0s"},
		{"saga_max_body_bytes", "16777216", ""},
		{"saga_max_body_bytes", "0", `must be a whole number between 1 and 16777216, got "0"`},
		{"saga_max_body_bytes", "64KiB", `got "64KiB"`},
		{"saga_max_steps", "100000", ""},
		{"saga_max_steps", "100001", "between 1 and 100000"},
	} {
		flag := "--" + strings.ReplaceAll(tc.key, "_", "-")
		_, err := Load([]string{flag + "=" + tc.value}, nil, nil)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s=%s: %v", tc.key, tc.value, err)
			}
			continue
		}
		mustFieldError(t, err, tc.key, tc.want)
	}
}

func TestSagaCompensationRetry(t *testing.T) {
	c, err := load(t, `
upstreams:
  inventory:
    url: http://127.0.0.1:8081
    compensation_retry: {max_attempts: 2, initial_backoff: 10ms}
  plain: {url: "http://127.0.0.1:8082"}
  slow:
    url: http://127.0.0.1:8083
    compensation_retry: {initial_backoff: 5m}
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]saga.RetryPolicy{
		"inventory": {MaxAttempts: 2, InitialBackoff: 10 * time.Millisecond, MaxBackoff: time.Minute},
		"plain":     {MaxAttempts: 10, InitialBackoff: time.Second, MaxBackoff: time.Minute},
		// max_backoff defaults to at least initial_backoff.
		"slow": {MaxAttempts: 10, InitialBackoff: 5 * time.Minute, MaxBackoff: 5 * time.Minute},
	} {
		if got := c.Upstreams[name].CompensationRetry; got != want {
			t.Errorf("%s: compensation_retry %+v, want %+v", name, got, want)
		}
	}
	for i, tc := range []struct{ yamlText, field, want string }{
		{"{max_attempts: 0}", "upstreams.u.compensation_retry.max_attempts", "between 1 and 1000, got 0"},
		{"{max_attempts: 1001}", "upstreams.u.compensation_retry.max_attempts", "between 1 and 1000"},
		{"{initial_backoff: 2h}", "upstreams.u.compensation_retry.initial_backoff", "between 1ms and 1h0m0s"},
		{"{initial_backoff: 1s, max_backoff: 10ms}", "upstreams.u.compensation_retry.max_backoff", "between 1s and 1h0m0s"},
		{"{tries: 3}", "upstreams.u.compensation_retry.tries", "unknown key"},
		{"5", "upstreams.u.compensation_retry", "must be a mapping"},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			_, err := load(t, "upstreams:\n  u:\n    url: http://127.0.0.1:1\n    compensation_retry: "+tc.yamlText+"\n", nil)
			mustFieldError(t, err, tc.field, tc.want)
		})
	}
}
