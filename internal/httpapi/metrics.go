package httpapi

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the per-route HTTP series:
//
//	resilience_http_requests_total{route,code}
//	resilience_http_request_duration_seconds{route}
//
// route is "METHOD pattern" of the matched route ("POST
// /v1/locks/{key=**}:acquire"), "GET /openapi.json", or "unmatched"; code
// is the HTTP status. The RPC behind a route is also counted in the gRPC
// series (grpc_server_*), as every call through HTTP is a gRPC call.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers the series in reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "resilience_http_requests_total",
			Help: "HTTP/JSON requests by route and HTTP status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "resilience_http_request_duration_seconds",
			Help:    "HTTP/JSON request duration by route, until the response is written.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// init makes every route's duration series exist from the start.
func (m *Metrics) init(routes []Route) {
	for _, r := range routes {
		m.duration.WithLabelValues(r.String())
	}
}

func (m *Metrics) observe(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(route).Observe(d.Seconds())
}
