// Package backoff computes exponential retry delays.
package backoff

import "time"

// Ceiling is initial doubled for each retry after the first (n-1 times),
// capped at limit: the upper bound of the n-th delay of a full-jitter
// backoff. n below 1 counts as 1.
func Ceiling(initial, limit time.Duration, n int) time.Duration {
	d := initial
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}
