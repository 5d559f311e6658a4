package metrics_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
)

// TestRPCMetricsSeries: InitializeMetrics creates every method's series at
// zero (handled for every code), and a unary call counts started, one
// message each way (none sent on failure), handled by code and latency, as
// go-grpc-middleware's provider did.
func TestRPCMetricsSeries(t *testing.T) {
	m := metrics.New()
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	m.GRPC.InitializeMetrics(s)

	methods := len(s.GetServiceInfo()[healthpb.Health_ServiceDesc.ServiceName].Methods)
	if n := testutil.CollectAndCount(m.GRPC, "grpc_server_handled_total"); n != methods*17 {
		t.Fatalf("%d handled series after InitializeMetrics, want %d (17 codes of %d methods)", n, methods*17, methods)
	}
	if n := testutil.CollectAndCount(m.GRPC, "grpc_server_started_total"); n != methods {
		t.Fatalf("%d started series, want %d", n, methods)
	}

	icpt := m.GRPC.UnaryServerInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: "/grpc.health.v1.Health/Check"}
	ok := func(context.Context, any) (any, error) { return "ok", nil }
	bad := func(context.Context, any) (any, error) { return nil, status.Error(codes.NotFound, "x") }
	canceled := func(context.Context, any) (any, error) { return nil, context.Canceled }
	for _, h := range []grpc.UnaryHandler{ok, ok, bad, canceled} {
		_, _ = icpt(context.Background(), nil, info, h)
	}
	_, _ = icpt(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x.Y/Z"}, func(context.Context, any) (any, error) { return nil, errors.New("plain") })

	reg := m.Registry()
	check := func(name string, labels []string, v float64) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		next:
			for _, mt := range mf.GetMetric() {
				for i := 0; i < len(labels); i += 2 {
					found := false
					for _, lp := range mt.GetLabel() {
						if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
							found = true
						}
					}
					if !found {
						continue next
					}
				}
				got := mt.GetCounter().GetValue()
				if mt.GetHistogram() != nil {
					got = float64(mt.GetHistogram().GetSampleCount())
				}
				if got != v {
					t.Errorf("%s%v = %v, want %v", name, labels, got, v)
				}
				return
			}
		}
		t.Errorf("%s%v: no such series", name, labels)
	}
	check("grpc_server_started_total", []string{"grpc_method", "Check", "grpc_type", "unary"}, 4)
	check("grpc_server_msg_received_total", []string{"grpc_method", "Check"}, 4)
	check("grpc_server_msg_sent_total", []string{"grpc_method", "Check"}, 2)
	check("grpc_server_handled_total", []string{"grpc_method", "Check", "grpc_code", "OK"}, 2)
	check("grpc_server_handled_total", []string{"grpc_method", "Check", "grpc_code", "NotFound"}, 1)
	check("grpc_server_handled_total", []string{"grpc_method", "Check", "grpc_code", "Canceled"}, 1)
	check("grpc_server_handling_seconds", []string{"grpc_method", "Check"}, 4)
	check("grpc_server_handled_total", []string{"grpc_service", "x.Y", "grpc_method", "Z", "grpc_code", "Unknown"}, 1)
	check("grpc_server_started_total", []string{"grpc_method", "Watch", "grpc_type", "server_stream"}, 0)
}
