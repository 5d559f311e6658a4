package main

import (
	"context"
	"log/slog"
	"maps"
	"slices"

	"github.com/seed-a88e5317/resilience-sidecar/internal/api"
	"github.com/seed-a88e5317/resilience-sidecar/internal/config"
	"github.com/seed-a88e5317/resilience-sidecar/internal/metrics"
	"github.com/seed-a88e5317/resilience-sidecar/internal/outbox"
)

// startOutbox starts the outbox relay of the config's `outbox` section,
// publishing through pub (the event service). status is nil when no relay
// is configured (GetOutboxStatus then answers enabled=false). stop ends
// the relay, rolling back a batch in flight; call it before stopping the
// event service and closing the stores.
func startOutbox(ctx context.Context, cfg *config.Config, pub outbox.Publisher, m *metrics.Metrics, log *slog.Logger) (status api.OutboxStatuser, stop func(), err error) {
	opts := cfg.Outbox
	if !opts.Enabled() {
		return nil, func() {}, nil
	}
	if cfg.UsesEmbeddedStore() {
		log.Warn("outbox relay publishes to the EMBEDDED IN-MEMORY STORE: rows are marked published but their events are lost on exit, and the idempotency keys that make relaying exactly-once are not shared with other sidecars")
	}
	opts.Publisher, opts.Log, opts.Metrics = pub, log, m
	opts.Topics = slices.Sorted(maps.Keys(cfg.Events.Topics)) // the delay histogram's labels
	r, err := outbox.New(opts)
	if err != nil {
		return nil, nil, err
	}
	log.Info("outbox relay", "table", opts.Table, "on_publish", string(opts.OnPublish), "batch_size", opts.BatchSize,
		"poll_interval", opts.PollInterval.String(), "notify_channel", opts.NotifyChannel,
		"leader_timeout", opts.LeaderTimeout.String(), "refused_retry_interval", opts.RefusedRetryInterval.String(),
		"retention", opts.Retention.String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx) // returns nil when stopped
	}()
	return r, func() {
		r.Close()
		<-done
	}, nil
}
