package inject

import (
	"crypto/tls"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Names of the injector's own series (besides the Go and process
// collectors'), served on --metrics-listen at /metrics.
const (
	metricAdmissions      = "resilience_injector_admissions_total"
	metricAdmissionTime   = "resilience_injector_admission_duration_seconds"
	metricCertExpiry      = "resilience_injector_certificate_expiry_timestamp_seconds"
	metricCertRotations   = "resilience_injector_certificate_rotations_total"
	metricCABundleUpdates = "resilience_injector_ca_bundle_updates_total"
)

// injectorMetrics are the injector's Prometheus series, in a registry of
// their own. A nil *injectorMetrics records nothing.
type injectorMetrics struct {
	reg             *prometheus.Registry
	admissions      *prometheus.CounterVec // decision: injected|already-injected|not-requested|ignored|rejected
	admissionTime   prometheus.Histogram
	certExpiry      prometheus.Gauge
	certRotations   prometheus.Counter
	caBundleUpdates *prometheus.CounterVec // result: ok|error
}

func newInjectorMetrics() *injectorMetrics {
	m := &injectorMetrics{
		reg: prometheus.NewRegistry(),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricAdmissions,
			Help: "Admission reviews answered, by decision (injected, already-injected, not-requested, ignored, rejected).",
		}, []string{"decision"}),
		admissionTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    metricAdmissionTime,
			Help:    "Time to answer one admission review, from its request's first byte read to the response written.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
		certExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricCertExpiry,
			Help: "Expiry (Unix seconds) of the serving certificate in use; alert well before it.",
		}),
		certRotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricCertRotations,
			Help: "Serving certificates put in use after the first: reloaded from the files or renewed by the self-managed mode.",
		}),
		caBundleUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricCABundleUpdates,
			Help: "Attempts of the self-managed mode to patch the webhook's caBundle, by result (ok, error).",
		}, []string{"result"}),
	}
	for _, d := range []string{decisionInjected, decisionAlready, decisionNotRequested, decisionIgnored, decisionRejected} {
		m.admissions.WithLabelValues(d)
	}
	for _, r := range []string{"ok", "error"} {
		m.caBundleUpdates.WithLabelValues(r)
	}
	m.reg.MustRegister(m.admissions, m.admissionTime, m.certExpiry, m.certRotations, m.caBundleUpdates,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *injectorMetrics) admitted(decision string, took time.Duration) {
	if m == nil {
		return
	}
	m.admissions.WithLabelValues(decision).Inc()
	m.admissionTime.Observe(took.Seconds())
}

// certInUse records the serving certificate now in use; rotated is false
// for the first one.
func (m *injectorMetrics) certInUse(c *tls.Certificate, rotated bool) {
	if m == nil || c == nil || c.Leaf == nil {
		return
	}
	m.certExpiry.Set(float64(c.Leaf.NotAfter.Unix()))
	if rotated {
		m.certRotations.Inc()
	}
}

func (m *injectorMetrics) caBundleUpdated(err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.caBundleUpdates.WithLabelValues(result).Inc()
}

// handler serves the registry in the Prometheus text format.
func (m *injectorMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
