package outbox

import (
	"errors"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

// relayMetrics are the relay's series beyond those of internal/metrics
// (resilience_outbox_published_total, _refused_total, _backlog,
// _lag_seconds, _healthy), registered in the same registry. A nil
// *relayMetrics records nothing.
type relayMetrics struct {
	m          *metrics.Metrics
	active     prometheus.Gauge
	takeovers  prometheus.Counter
	refused    prometheus.Gauge
	refusedAge prometheus.Gauge
	delay      *prometheus.HistogramVec
	deleted    prometheus.Counter
}

func newRelayMetrics(m *metrics.Metrics) *relayMetrics {
	if m == nil {
		return nil
	}
	rm := &relayMetrics{m: m}
	rm.active = register(m, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "resilience_outbox_active", Help: "1 while this sidecar's outbox relay holds the table (the one relay that publishes it), else 0.",
	}))
	rm.takeovers = register(m, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "resilience_outbox_takeovers_total", Help: "Times this sidecar's outbox relay became the active one.",
	}))
	rm.refused = register(m, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "resilience_outbox_refused_rows", Help: "Rows the active relay skips because the EventService refuses them for good, as it last tried them (0 on standbys).",
	}))
	rm.refusedAge = register(m, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "resilience_outbox_refused_oldest_seconds", Help: "Age of the oldest refused row (0 when none).",
	}))
	rm.delay = register(m, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "resilience_outbox_publish_delay_seconds",
		Help:    "Time from a row's created_at (its transaction's start, by Postgres's clock) to its first publish, by topic (declared topics only; empty when none are declared).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"topic"}))
	rm.deleted = register(m, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "resilience_outbox_retention_deleted_total", Help: "Published rows the relay deleted because they were older than outbox.retention.",
	}))
	return rm
}

// register registers c in m's registry, or returns the collector already
// registered under its name (a second relay on the same registry).
func register[C prometheus.Collector](m *metrics.Metrics, c C) C {
	if err := m.Registry().Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err) // a name clash between series: a programming error
	}
	return c
}

func (rm *relayMetrics) setActive(on bool) {
	if rm == nil {
		return
	}
	v := 0.0
	if on {
		v = 1
	}
	rm.active.Set(v)
}

func (rm *relayMetrics) takeover() {
	if rm != nil {
		rm.takeovers.Inc()
	}
}

// setBacklog sets resilience_outbox_backlog (NaN when unknown: on a
// standby, or while Postgres does not answer) and _lag_seconds.
func (rm *relayMetrics) setBacklog(n int64, known bool, lag time.Duration) {
	if rm == nil {
		return
	}
	rm.m.SetOutboxBacklog(n, lag)
	if !known {
		rm.m.OutboxBacklog.Set(math.NaN())
	}
}

func (rm *relayMetrics) setRefused(n int, oldest time.Duration) {
	if rm == nil {
		return
	}
	rm.refused.Set(float64(n))
	rm.refusedAge.Set(oldest.Seconds())
}

func (rm *relayMetrics) observeDelay(topic string, d time.Duration) {
	if rm != nil {
		rm.delay.WithLabelValues(topic).Observe(d.Seconds())
	}
}

func (rm *relayMetrics) retained(n int64) {
	if rm != nil && n > 0 {
		rm.deleted.Add(float64(n))
	}
}
