package main

import (
	"context"
	"log/slog"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/semaphore"
	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
)

// serveSemaphores registers the SemaphoreService (bulkheads) on srv, on
// shared, or on an embedded store when shared is nil, with its metrics in
// m. The returned stop
// ends the sessions' renewals and gives back what is left; call it after
// the server stopped.
func serveSemaphores(srv *server.Server, stopping context.Context, shared semaphore.Store, m *metrics.Metrics, log *slog.Logger) (stop func()) {
	st := shared
	if st == nil {
		st = semaphore.NewMemoryStore(nil)
	}
	svc := semaphore.NewService(st, nil, log)
	v1.RegisterSemaphoreServiceServer(srv.GRPC(), api.NewSemaphoreServer(stopping, svc, log, api.WithMetrics(m)))
	return svc.Close
}
