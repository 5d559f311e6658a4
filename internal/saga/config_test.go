package saga_test

import (
	"errors"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
	"github.com/seed-a88e5317/resilience-sidecar/internal/saga"
)

func TestRetryPolicyConfig(t *testing.T) {
	if got := (saga.RetryPolicy{}).WithDefaults(); got != saga.DefaultRetry {
		t.Errorf("zero WithDefaults = %+v, want DefaultRetry", got)
	}
	if got := (saga.RetryPolicy{InitialBackoff: 5 * time.Minute}).WithDefaults(); got.MaxBackoff != 5*time.Minute {
		t.Errorf("MaxBackoff = %v, want at least InitialBackoff", got.MaxBackoff)
	}
	for path, r := range map[string]saga.RetryPolicy{
		"max_attempts":    {MaxAttempts: 0, InitialBackoff: time.Second, MaxBackoff: time.Second},
		"initial_backoff": {MaxAttempts: 1, InitialBackoff: 2 * time.Hour, MaxBackoff: 2 * time.Hour},
		"max_backoff":     {MaxAttempts: 1, InitialBackoff: time.Second, MaxBackoff: time.Millisecond},
	} {
		var fe *field.Error
		if err := r.Validate(); !errors.As(err, &fe) || fe.Path != path {
			t.Errorf("%s: Validate = %v", path, err)
		}
	}
}
