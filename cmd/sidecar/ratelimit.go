package main

import (
	"fmt"
	"log/slog"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/ratelimit"
)

// registerRateLimits serves the RateLimitService for the config's
// declared limiters, and Envoy's RateLimitService for its envoy_ratelimit
// files, counted in st (Redis, or memory on the embedded store), their
// decisions in m.
func registerRateLimits(s *grpc.Server, cfg *config.Config, st ratelimit.Store, m *metrics.Metrics, log *slog.Logger) error {
	domains, err := ratelimit.LoadEnvoy(cfg.EnvoyRateLimit.Files)
	if err != nil {
		return fmt.Errorf("envoy_ratelimit: %w", err)
	}
	svc, err := ratelimit.NewService(ratelimit.Options{Limiters: cfg.RateLimits, Store: st, Log: log, Envoy: domains, Metrics: m})
	if err != nil {
		return fmt.Errorf("ratelimits: %w", err)
	}
	v1.RegisterRateLimitServiceServer(s, api.NewRateLimitServer(svc, log))
	rlsv3.RegisterRateLimitServiceServer(s, api.NewEnvoyRateLimitServer(svc, cfg.EnvoyRateLimit.ResponseHeaders, log))
	log.Info("rate limiters ready", "declared", len(cfg.RateLimits), "envoy_domains", len(domains))
	return nil
}
