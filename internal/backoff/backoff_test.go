package backoff

import (
	"testing"
	"time"
)

func TestCeiling(t *testing.T) {
	for _, tt := range []struct {
		initial, limit time.Duration
		n              int
		want           time.Duration
	}{
		{100 * time.Millisecond, time.Second, 0, 100 * time.Millisecond},
		{100 * time.Millisecond, time.Second, 1, 100 * time.Millisecond},
		{100 * time.Millisecond, time.Second, 2, 200 * time.Millisecond},
		{100 * time.Millisecond, time.Second, 4, 800 * time.Millisecond},
		{100 * time.Millisecond, time.Second, 5, time.Second},
		{100 * time.Millisecond, time.Second, 1 << 30, time.Second},
		{2 * time.Second, time.Second, 1, time.Second},
	} {
		if got := Ceiling(tt.initial, tt.limit, tt.n); got != tt.want {
			t.Errorf("Ceiling(%v, %v, %d) = %v, want %v", tt.initial, tt.limit, tt.n, got, tt.want)
		}
	}
}
