package metrics

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RPCMetrics are the per-RPC series of go-grpc-middleware's Prometheus
// provider (grpc_server_started_total, grpc_server_handled_total,
// grpc_server_msg_received_total, grpc_server_msg_sent_total and the
// grpc_server_handling_seconds histogram, with the same names, help and
// labels, recorded at the same points), but each method's series are
// resolved once, by InitializeMetrics, instead of by hashing their label
// values several times per call. It is a prometheus.Collector.
type RPCMetrics struct {
	started, handled, received, sent *prometheus.CounterVec
	handling                         *prometheus.HistogramVec
	// methods maps "/service/method" to its series; written once by
	// InitializeMetrics, read without locking.
	methods atomic.Pointer[map[string]*methodSeries]
	// storeErrors counts calls that failed with a store reason
	// (resilience_store_errors_total); set by New, nil when standalone.
	storeErrors map[string]prometheus.Counter
}

// StoreErrorReasons are the ErrorInfo reasons of the UNAVAILABLE errors
// the store causes (api.StoreReasons, which a test keeps equal): the values
// of resilience_store_errors_total's reason label.
var StoreErrorReasons = []string{"STORE_UNAVAILABLE", "STORE_FULL", "STORE_READ_ONLY", "REPLICATION_SHORTFALL"}

// errorDomain is the ErrorInfo domain of the sidecar's errors (api.ErrorDomain).
const errorDomain = "resilience.sidecar"

// countStoreError counts err in resilience_store_errors_total when it is
// an UNAVAILABLE status with a store reason.
func (m *RPCMetrics) countStoreError(err error) {
	if err == nil || m.storeErrors == nil {
		return
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == errorDomain {
			if c, ok := m.storeErrors[ei.GetReason()]; ok {
				c.Inc()
			}
			return
		}
	}
}

// methodSeries are one method's resolved series.
type methodSeries struct {
	started, received, sent prometheus.Counter
	handled                 [codes.Unauthenticated + 1]prometheus.Counter
	handling                prometheus.Observer
}

func newRPCMetrics(buckets []float64) *RPCMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	return &RPCMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total", Help: "Total number of RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total", Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(labels, "grpc_code")),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_received_total", Help: "Total number of RPC stream messages received on the server.",
		}, labels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_sent_total", Help: "Total number of gRPC stream messages sent by the server.",
		}, labels),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: buckets,
		}, labels),
	}
}

// Describe implements prometheus.Collector.
func (m *RPCMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *RPCMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *RPCMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.started, m.handled, m.received, m.sent, m.handling}
}

// InitializeMetrics creates every registered method's series at zero (every
// code of handled included) and resolves them for the interceptors. Call it
// once, after registering the services and before serving.
func (m *RPCMetrics) InitializeMetrics(s interface {
	GetServiceInfo() map[string]grpc.ServiceInfo
}) {
	methods := map[string]*methodSeries{}
	for service, info := range s.GetServiceInfo() {
		for _, mi := range info.Methods {
			typ := "unary"
			switch {
			case mi.IsClientStream && mi.IsServerStream:
				typ = "bidi_stream"
			case mi.IsClientStream:
				typ = "client_stream"
			case mi.IsServerStream:
				typ = "server_stream"
			}
			methods["/"+service+"/"+mi.Name] = m.series(typ, service, mi.Name)
		}
	}
	m.methods.Store(&methods)
}

func (m *RPCMetrics) series(typ, service, method string) *methodSeries {
	s := &methodSeries{
		started:  m.started.WithLabelValues(typ, service, method),
		received: m.received.WithLabelValues(typ, service, method),
		sent:     m.sent.WithLabelValues(typ, service, method),
		handling: m.handling.WithLabelValues(typ, service, method),
	}
	for c := range s.handled {
		s.handled[c] = m.handled.WithLabelValues(typ, service, method, codes.Code(c).String())
	}
	return s
}

// lookup returns fullMethod's series, resolving (and not caching) those of
// a method InitializeMetrics did not see.
func (m *RPCMetrics) lookup(fullMethod, typ string) *methodSeries {
	if p := m.methods.Load(); p != nil {
		if s, ok := (*p)[fullMethod]; ok {
			return s
		}
	}
	service, method := "unknown", "unknown"
	if i := strings.LastIndexByte(fullMethod, '/'); i > 0 {
		service, method = fullMethod[1:i], fullMethod[i+1:]
	}
	return m.series(typ, service, method)
}

func (s *methodSeries) done(err error, d time.Duration) {
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err)
	}
	c := st.Code()
	if int(c) < len(s.handled) {
		s.handled[c].Inc()
	}
	s.handling.Observe(d.Seconds())
}

// UnaryServerInterceptor records a unary call: started, one message
// received, one sent unless it failed, handled by code, and its latency.
func (m *RPCMetrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		c := m.BeginUnary(info.FullMethod, time.Now())
		resp, err := handler(ctx, req)
		m.EndUnary(c, err)
		return resp, err
	}
}

// UnaryCall is a unary call being recorded, from BeginUnary to EndUnary.
type UnaryCall struct {
	s     *methodSeries
	start time.Time
}

// BeginUnary records the start of a unary call of fullMethod at start and
// its one received message; EndUnary records the rest. It is
// UnaryServerInterceptor for servers that compose their own interceptor.
func (m *RPCMetrics) BeginUnary(fullMethod string, start time.Time) UnaryCall {
	c := UnaryCall{s: m.lookup(fullMethod, "unary"), start: start}
	c.s.started.Inc()
	c.s.received.Inc()
	return c
}

// EndUnary records the end of c with its error: one message sent unless it
// failed, handled by code, its latency and any store error.
func (m *RPCMetrics) EndUnary(c UnaryCall, err error) {
	if err == nil {
		c.s.sent.Inc()
	}
	c.s.done(err, time.Since(c.start))
	m.countStoreError(err)
}

// StreamServerInterceptor records a streaming call: started, each message
// received and sent, handled by code, and its duration.
func (m *RPCMetrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		typ := "bidi_stream"
		switch {
		case info.IsClientStream && !info.IsServerStream:
			typ = "client_stream"
		case !info.IsClientStream && info.IsServerStream:
			typ = "server_stream"
		case !info.IsClientStream && !info.IsServerStream:
			typ = "unary"
		}
		s := m.lookup(info.FullMethod, typ)
		s.started.Inc()
		err := handler(srv, &countingStream{ServerStream: ss, s: s})
		s.done(err, time.Since(start))
		m.countStoreError(err)
		return err
	}
}

type countingStream struct {
	grpc.ServerStream
	s *methodSeries
}

func (c *countingStream) SendMsg(m any) error {
	err := c.ServerStream.SendMsg(m)
	if err == nil {
		c.s.sent.Inc()
	}
	return err
}

func (c *countingStream) RecvMsg(m any) error {
	err := c.ServerStream.RecvMsg(m)
	if err == nil {
		c.s.received.Inc()
	}
	return err
}
