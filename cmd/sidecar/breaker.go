package main

import (
	"fmt"
	"log/slog"

	"github.com/seed-a88e5317/resilience-sidecar/internal/admission"
	"github.com/seed-a88e5317/resilience-sidecar/internal/breaker"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/upstream"
)

// responseOverhead is room left in a gRPC message for an ExecuteCall
// response's status, headers and framing: a body may use the rest.
const responseOverhead = 64 << 10

// newBreakers builds the breaker service from the config's policies (shared
// breakers in shared; nil on the embedded store, where they run locally)
// and the caller of the config's upstreams, whose responses share budget.
// Close both when done.
func newBreakers(cfg *config.Config, shared breaker.Store, budget *admission.Budget, m *metrics.Metrics, log *slog.Logger) (*breaker.Service, *upstream.Caller, error) {
	for name, p := range cfg.Breakers {
		if shared == nil && p.Scope == breaker.Shared {
			log.Warn("breaker has scope shared, but on the embedded store it is local to this sidecar (min_reporters ignored)", "breaker", name)
		}
	}
	svc, err := breaker.NewService(breaker.Options{Policies: cfg.Breakers, Shared: shared, MaxBreakers: cfg.MaxBreakers, Log: log, Metrics: m})
	if err != nil {
		return nil, nil, fmt.Errorf("breakers: %w", err)
	}
	ups := make([]upstream.Config, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		ups = append(ups, u.Config)
	}
	bodyLimit := max(int64(cfg.MaxMessageBytes)-responseOverhead, int64(cfg.MaxMessageBytes)/2)
	caller, err := upstream.New(ups, upstream.Options{Breakers: svc, Log: log, Metrics: m, BodyLimit: bodyLimit, Budget: budget})
	if err != nil {
		svc.Close()
		return nil, nil, err
	}
	log.Info("breakers ready", "declared_policies", len(cfg.Breakers), "upstreams", caller.Names(), "shared_store", shared != nil)
	return svc, caller, nil
}
