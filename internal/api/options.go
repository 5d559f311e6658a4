package api

import "github.com/seed-a88e5317/resilience-sidecar/internal/metrics"

// Option configures a service server of this package.
type Option func(*options)

type options struct {
	metrics *metrics.Metrics
}

// WithMetrics records the service's domain metrics in m.
func WithMetrics(m *metrics.Metrics) Option {
	return func(o *options) { o.metrics = m }
}

func applyOptions(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}
