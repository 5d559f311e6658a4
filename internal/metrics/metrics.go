// Package metrics defines the sidecar's Prometheus metrics in one registry:
// per-RPC metrics (the series of go-grpc-middleware's provider), Go runtime and process
// collectors, and the domain series (resilience_*).
//
// Label cardinality is bounded by construction: lock keys, idempotency keys
// and saga ids are never labels; breaker and upstream names are, since they
// are bounded by configuration and the breaker limit.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds every series the sidecar exports. A nil *Metrics is valid
// and records nothing, so packages and tests need no registry.
type Metrics struct {
	reg *prometheus.Registry

	// GRPC are the per-RPC counters and latency histograms.
	GRPC *RPCMetrics

	LockAcquire *prometheus.CounterVec // result: acquired|busy|timeout
	LockWait    prometheus.Histogram
	LockHeld    prometheus.Gauge

	IdempotencyOutcome *prometheus.CounterVec // outcome

	BreakerState       *prometheus.GaugeVec   // breaker; 0 closed, 1 half-open, 2 open
	BreakerTransitions *prometheus.CounterVec // breaker, to

	UpstreamRequests *prometheus.CounterVec   // upstream, code
	UpstreamLatency  *prometheus.HistogramVec // upstream

	SagaTotal *prometheus.CounterVec // state
	SagaStuck prometheus.Gauge

	StoreUp      prometheus.Gauge
	StoreLatency *prometheus.HistogramVec // op
	StoreErrors  *prometheus.CounterVec   // reason: StoreErrorReasons

	EventsPublished    *prometheus.CounterVec // result: appended|duplicate (no topic label: topics are unbounded)
	EventsDelivered    prometheus.Counter
	EventsRedelivered  prometheus.Counter
	EventsDeadLettered prometheus.Counter

	OutboxPublished prometheus.Counter
	OutboxRefused   prometheus.Counter
	OutboxBacklog   prometheus.Gauge
	OutboxLag       prometheus.Gauge
	OutboxHealthy   prometheus.Gauge

	LimitRejections *prometheus.CounterVec // limit: the admission limit's setting name

	RateLimitDecisions *prometheus.CounterVec // limiter (declared names only), result, source
	RateLimitWaiting   prometheus.Gauge

	SemaphoreAcquire *prometheus.CounterVec // result: acquired|busy|timeout (no name label: names are unbounded)
	SemaphoreWait    prometheus.Histogram
	SemaphoreWaiting prometheus.Gauge
	SemaphoreHeld    prometheus.Gauge
}

// New registers every series in a fresh registry.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{
		reg:  reg,
		GRPC: newRPCMetrics([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}),
		LockAcquire: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_lock_acquire_total", Help: "Lock acquisitions by result: acquired, busy (try found it held), timeout (a wait ended without it).",
		}, []string{"result"}),
		LockWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "resilience_lock_wait_seconds", Help: "Time AcquireLock and HoldLock calls with a wait spent until granted or given up.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300},
		}),
		LockHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "resilience_lock_held", Help: "HoldLock sessions currently holding a lock on this sidecar.",
		}),
		IdempotencyOutcome: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_idempotency_outcome_total", Help: "CheckOrRecordIdempotency outcomes: started, in_progress, completed, mismatch.",
		}, []string{"outcome"}),
		BreakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "resilience_breaker_state", Help: "Breaker state: 0 closed, 1 half-open, 2 open.",
		}, []string{"breaker"}),
		BreakerTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_breaker_transitions_total", Help: "Breaker state changes by target state.",
		}, []string{"breaker", "to"}),
		UpstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_upstream_requests_total", Help: "HTTP attempts to upstreams by status code (or error kind).",
		}, []string{"upstream", "code"}),
		UpstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "resilience_upstream_request_duration_seconds", Help: "Latency of HTTP attempts to upstreams.",
			Buckets: prometheus.DefBuckets,
		}, []string{"upstream"}),
		SagaTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_saga_total", Help: "Sagas reaching each state.",
		}, []string{"state"}),
		SagaStuck: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "resilience_saga_stuck", Help: "Sagas needing a person: COMPENSATION_FAILED, as last seen by the recovery worker.",
		}),
		StoreUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "resilience_store_up", Help: "1 when the store answered the last health probe and accepted writes, else 0 (unreachable, full, read-only).",
		}),
		StoreLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "resilience_store_latency_seconds", Help: "Latency of store operations by operation (script or command).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"op"}),
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_store_errors_total", Help: "Calls that failed with UNAVAILABLE because of the store, by ErrorInfo reason: STORE_UNAVAILABLE (unreachable, or busy, loading, ...), STORE_FULL (out of memory), STORE_READ_ONLY (writes refused), REPLICATION_SHORTFALL (too few replicas acknowledged).",
		}, []string{"reason"}),
		EventsPublished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_events_published_total", Help: "Publishes by result: appended, or duplicate (an idempotency key seen before; nothing appended).",
		}, []string{"result"}),
		EventsDelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "resilience_events_delivered_total", Help: "Event deliveries to subscribers and push subscriptions, redeliveries included.",
		}),
		EventsRedelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "resilience_events_redelivered_total", Help: "Event deliveries after the first (visibility timeout passed, or nacked).",
		}),
		EventsDeadLettered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "resilience_events_dead_lettered_total", Help: "Events moved to their dead-letter topic after max_deliveries.",
		}),
		OutboxRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "resilience_outbox_refused_total", Help: "Outbox rows this sidecar's relay skipped because the EventService refuses them for good; they stay unpublished.",
		}),
		OutboxPublished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "resilience_outbox_published_total", Help: "Outbox rows this sidecar's relay published and marked (or deleted).",
		}),
		OutboxBacklog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "resilience_outbox_backlog", Help: "Unpublished outbox rows not refused, as last read by the active relay; NaN when unknown (a standby, Postgres unreachable).",
		}),
		OutboxLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "resilience_outbox_lag_seconds", Help: "Age of the oldest unpublished outbox row not refused (0 when none, and on a standby); grows while Postgres does not answer.",
		}),
		OutboxHealthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "resilience_outbox_healthy", Help: "1 when the outbox relay's last cycle succeeded, 0 while Postgres or publishing fails (and when no relay is configured).",
		}),
		LimitRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_limit_rejections_total", Help: "Calls refused with RESOURCE_EXHAUSTED/LIMIT_EXCEEDED by an admission limit, by the limit's setting name (max_concurrent_calls, max_waiters, max_sessions, max_subscriptions, max_response_bytes_in_flight).",
		}, []string{"limit"}),
		RateLimitDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_ratelimit_decisions_total", Help: "Take decisions by declared limiter, result (allowed, refused) and source: store (a script round trip), cached (an exhausted key answered from memory until its retry_after), lease (answered from this sidecar's leased tokens), degraded (the store was unreachable; the limiter's store_down mode answered).",
		}, []string{"limiter", "result", "source"}),
		RateLimitWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "resilience_ratelimit_waiting", Help: "Takes with a wait_timeout currently waiting for their cost to fit on this sidecar (each counts under max_waiters).",
		}),
		SemaphoreAcquire: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_semaphore_acquire_total", Help: "AcquirePermit and HoldPermit outcomes: acquired, busy (no permit free, no wait), timeout (a wait ended without a permit).",
		}, []string{"result"}),
		SemaphoreWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "resilience_semaphore_wait_seconds", Help: "Time AcquirePermit and HoldPermit calls with a wait spent until granted or given up.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300},
		}),
		SemaphoreWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "resilience_semaphore_waiting", Help: "AcquirePermit and HoldPermit calls with a wait_timeout currently waiting for a permit on this sidecar.",
		}),
		SemaphoreHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "resilience_semaphore_held", Help: "HoldPermit sessions currently holding a permit on this sidecar.",
		}),
	}
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f(m.GRPC)
	for _, c := range []prometheus.Collector{m.LockAcquire, m.LockWait, m.LockHeld, m.IdempotencyOutcome,
		m.BreakerState, m.BreakerTransitions, m.UpstreamRequests, m.UpstreamLatency, m.SagaTotal, m.SagaStuck,
		m.StoreUp, m.StoreLatency, m.StoreErrors, m.EventsPublished, m.EventsDelivered, m.EventsRedelivered, m.EventsDeadLettered,
		m.OutboxPublished, m.OutboxRefused, m.OutboxBacklog, m.OutboxLag, m.OutboxHealthy, m.LimitRejections,
		m.RateLimitDecisions, m.RateLimitWaiting, m.SemaphoreAcquire, m.SemaphoreWait, m.SemaphoreWaiting, m.SemaphoreHeld} {
		f(c)
	}
	// Every store error reason exists from the start, at 0, and the RPC
	// interceptors count each call that failed with one.
	m.GRPC.storeErrors = map[string]prometheus.Counter{}
	for _, r := range StoreErrorReasons {
		m.GRPC.storeErrors[r] = m.StoreErrors.WithLabelValues(r)
	}
	// Both results exist from the start, at 0, like the unlabelled counters.
	m.EventsPublished.WithLabelValues("appended")
	m.EventsPublished.WithLabelValues("duplicate")
	for _, r := range []string{LockAcquired, LockBusy, LockTimeout} {
		m.SemaphoreAcquire.WithLabelValues(r)
	}
	return m
}

// Registry is the registry holding every series (for tests and handlers).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Lock outcomes, the values of the result label.
const (
	LockAcquired = "acquired"
	LockBusy     = "busy"
	LockTimeout  = "timeout"
)

// ObserveLockAcquire records one acquisition's result and, when it waited,
// how long.
func (m *Metrics) ObserveLockAcquire(result string, waited bool, d time.Duration) {
	if m == nil {
		return
	}
	m.LockAcquire.WithLabelValues(result).Inc()
	if waited {
		m.LockWait.Observe(d.Seconds())
	}
}

// LockSessionHeld adds delta (+1 or -1) to the held-sessions gauge.
func (m *Metrics) LockSessionHeld(delta float64) {
	if m == nil {
		return
	}
	m.LockHeld.Add(delta)
}

// ObserveIdempotency counts one CheckOrRecord outcome.
func (m *Metrics) ObserveIdempotency(outcome string) {
	if m == nil {
		return
	}
	m.IdempotencyOutcome.WithLabelValues(outcome).Inc()
}

// ForgetBreaker deletes every series of breaker name (its state and its
// transitions by target state): the breaker limit bounds these series only
// if a breaker forgotten to make room takes its series with it.
func (m *Metrics) ForgetBreaker(name string) {
	if m == nil {
		return
	}
	m.BreakerState.DeleteLabelValues(name)
	m.BreakerTransitions.DeletePartialMatch(prometheus.Labels{"breaker": name})
}

// ObserveStore records one store operation's latency.
func (m *Metrics) ObserveStore(op string, d time.Duration) {
	if m == nil {
		return
	}
	m.StoreLatency.WithLabelValues(op).Observe(d.Seconds())
}

// SetStoreUp records the last health probe's verdict.
func (m *Metrics) SetStoreUp(up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.StoreUp.Set(v)
}

// ObserveEventPublished counts one publish.
func (m *Metrics) ObserveEventPublished(duplicate bool) {
	if m == nil {
		return
	}
	r := "appended"
	if duplicate {
		r = "duplicate"
	}
	m.EventsPublished.WithLabelValues(r).Inc()
}

// ObserveEventDelivered counts one delivery.
func (m *Metrics) ObserveEventDelivered(redelivery bool) {
	if m == nil {
		return
	}
	m.EventsDelivered.Inc()
	if redelivery {
		m.EventsRedelivered.Inc()
	}
}

// ObserveEventDeadLettered counts one event moved to its dead-letter topic.
func (m *Metrics) ObserveEventDeadLettered() {
	if m == nil {
		return
	}
	m.EventsDeadLettered.Inc()
}

// AddOutboxPublished counts n outbox rows published.
func (m *Metrics) AddOutboxPublished(n int) {
	if m == nil {
		return
	}
	m.OutboxPublished.Add(float64(n))
}

// AddOutboxRefused counts n outbox rows refused for good.
func (m *Metrics) AddOutboxRefused(n int) {
	if m == nil {
		return
	}
	m.OutboxRefused.Add(float64(n))
}

// SetOutboxBacklog records the outbox backlog and its oldest row's age.
func (m *Metrics) SetOutboxBacklog(rows int64, lag time.Duration) {
	if m == nil {
		return
	}
	m.OutboxBacklog.Set(float64(rows))
	m.OutboxLag.Set(lag.Seconds())
}

// SetOutboxHealthy records whether the outbox relay's last cycle succeeded.
func (m *Metrics) SetOutboxHealthy(ok bool) {
	if m == nil {
		return
	}
	v := 0.0
	if ok {
		v = 1
	}
	m.OutboxHealthy.Set(v)
}

// InitLimits makes the rejection series of each named limit exist from
// the start, at 0.
func (m *Metrics) InitLimits(names ...string) {
	if m == nil {
		return
	}
	for _, n := range names {
		m.LimitRejections.WithLabelValues(n)
	}
}

// ObserveLimitRejection counts one call refused by the named limit.
func (m *Metrics) ObserveLimitRejection(limit string) {
	if m == nil {
		return
	}
	m.LimitRejections.WithLabelValues(limit).Inc()
}

// Rate limit decision results and sources, the values of the result and
// source labels of resilience_ratelimit_decisions_total.
const (
	RateLimitAllowed = "allowed"
	RateLimitRefused = "refused"

	RateLimitStore    = "store"
	RateLimitCached   = "cached"
	RateLimitLease    = "lease"
	RateLimitDegraded = "degraded"
)

// InitRateLimiters makes the decision series of each declared limiter
// exist from the start, at 0, for every result and source.
func (m *Metrics) InitRateLimiters(names ...string) {
	if m == nil {
		return
	}
	for _, n := range names {
		for _, r := range []string{RateLimitAllowed, RateLimitRefused} {
			for _, src := range []string{RateLimitStore, RateLimitCached, RateLimitLease, RateLimitDegraded} {
				m.RateLimitDecisions.WithLabelValues(n, r, src)
			}
		}
	}
}

// ObserveRateLimit counts one Take decision of a declared limiter.
func (m *Metrics) ObserveRateLimit(limiter string, allowed bool, source string) {
	if m == nil {
		return
	}
	r := RateLimitRefused
	if allowed {
		r = RateLimitAllowed
	}
	m.RateLimitDecisions.WithLabelValues(limiter, r, source).Inc()
}

// RateLimitWaiter adds delta (+1 or -1) to the waiting Takes gauge.
func (m *Metrics) RateLimitWaiter(delta float64) {
	if m == nil {
		return
	}
	m.RateLimitWaiting.Add(delta)
}

// ObserveSemaphoreAcquire records one permit acquisition's result (one of
// the lock results: acquired, busy, timeout) and, when it waited, how
// long.
func (m *Metrics) ObserveSemaphoreAcquire(result string, waited bool, d time.Duration) {
	if m == nil {
		return
	}
	m.SemaphoreAcquire.WithLabelValues(result).Inc()
	if waited {
		m.SemaphoreWait.Observe(d.Seconds())
	}
}

// SemaphoreWaiter adds delta (+1 or -1) to the waiting permit calls gauge.
func (m *Metrics) SemaphoreWaiter(delta float64) {
	if m == nil {
		return
	}
	m.SemaphoreWaiting.Add(delta)
}

// SemaphoreSessionHeld adds delta (+1 or -1) to the gauge of HoldPermit
// sessions holding a permit.
func (m *Metrics) SemaphoreSessionHeld(delta float64) {
	if m == nil {
		return
	}
	m.SemaphoreHeld.Add(delta)
}
